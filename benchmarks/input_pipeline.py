"""Images/s of the training input pipeline alone, per CPU core, on full-size JPEGs, against
torchvision's on the same files.

    python -m benchmarks.input_pipeline                  # 1,536 JPEGs of 500x375, 1 and all cores
    python -m benchmarks.input_pipeline --compare-torch --size-mix --dir /tmp/jpegs_mix
    python -m benchmarks.input_pipeline --cores 1,4,16 --images 2000 --dir /data/fake_jpegs

Generates a folder data set of ImageNet-sized JPEGs (smooth random content with texture, so
they compress like photos): all of one size, or with --size-mix ImageNet's spread (most near
500x375, one in ten large, up to 2,500 px, one in ten small). Then it times, each in its own
process pinned to that many cores (sched_setaffinity, which tf.data and DataLoader workers
inherit):

- `vgg_jax`: vgg_jax.data.pipeline.train_batches, as train.py runs it: read, decode (only the
  crop window), the augmentation, batching;
- `vgg_jax_eval` (with --compare-torch): eval_batches with the test preprocessing (smaller side
  to Q = 256, the centre 224 crop);
- `torch_decode_jpeg` and `torch_pil` (with --compare-torch): what a PyTorch user runs, a
  DataLoader with one worker per core, torchvision.io.decode_jpeg or PIL decoding the whole
  image, and torchvision's v2 transforms for the same augmentation (RandomShortestSize over
  S_min..S_max with antialiasing, RandomCrop, RandomHorizontalFlip; the PCA lighting shift drawn
  per image as vgg_jax does, added later on the accelerator by both).

It prints images/s and, with --compare-torch, vgg_jax's ratio to the faster torchvision
pipeline at each core count. A GPU at N images/s needs about N / (images/s per core) cores.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import vgg_jax.data  # noqa: F401  (TensorFlow's quiet defaults, before anything imports it)

AUGMENTATIONS = {
    # The paper's: S jittered in [256, 512], a 224 crop, flip, PCA lighting.
    "paper": dict(scale=(256, 512), crop=224, flip=True, pca_sigma=0.1),
    "paper_fixed_s256": dict(scale=(256, 256), crop=224, flip=True, pca_sigma=0.1),
    "inception": dict(crop=224, flip=True, inception_crop=True),
}
TORCH_PIPELINES = ("torch_decode_jpeg", "torch_pil")
EVAL_SCALE, EVAL_CROP = 256, 224


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1536, help="JPEGs to generate")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument(
        "--size-mix", action="store_true", help="ImageNet-like sizes instead of one --size"
    )
    parser.add_argument("--dir", help="where to keep the JPEGs (default: a temporary folder)")
    parser.add_argument("--cores", help="comma-separated core counts (default: 1 and all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument(
        "--augmentations", default="paper,inception", help=f"from {', '.join(AUGMENTATIONS)}"
    )
    parser.add_argument(
        "--compare-torch",
        action="store_true",
        help="also time torchvision's pipelines and vgg_jax's evaluation pipeline",
    )
    parser.add_argument("--json", help="write the results here too")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one timed run
    args = parser.parse_args(argv)
    available = len(os.sched_getaffinity(0))
    try:
        args.cores = sorted({int(c) for c in (args.cores or f"1,{available}").split(",")})
        args.width, args.height = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error("--cores takes whole numbers like 1,4,16 and --size one like 500x375")
    if args.cores[0] < 1 or args.cores[-1] > available:
        parser.error(f"--cores must lie in 1..{available}, the cores this process may use")
    args.augmentations = [a for a in args.augmentations.split(",") if a]
    unknown = set(args.augmentations) - set(AUGMENTATIONS)
    if unknown:
        parser.error(f"unknown augmentations {sorted(unknown)}; choose from {list(AUGMENTATIONS)}")
    if args.compare_torch and "inception" in args.augmentations:
        args.augmentations.remove("inception")  # the comparison is the paper's augmentation
        if not args.augmentations:
            parser.error("--compare-torch compares the paper's augmentations, not inception")
    return args


def image_sizes(count: int, width: int, height: int, mix: bool, rng) -> list[tuple[int, int]]:
    """(width, height) of each JPEG: all `width` x `height`, or ImageNet-like: 80% near
    500x375 (landscape or portrait), 10% large (longer side 1,000-2,500), 10% small (longer
    side 120-300)."""
    if not mix:
        return [(width, height)] * count
    sizes = []
    for kind in rng.choice(["typical", "large", "small"], size=count, p=[0.8, 0.1, 0.1]):
        longer = {"typical": rng.integers(400, 640), "large": rng.integers(1000, 2501),
                  "small": rng.integers(120, 301)}[kind]  # fmt: skip
        shorter = int(longer * rng.uniform(0.6, 0.85))
        sizes.append((longer, shorter) if rng.random() < 0.75 else (shorter, longer))
    return sizes


def generate_jpegs(
    root: pathlib.Path, count: int, classes: int, width: int, height: int, mix: bool = False
) -> None:
    """root/train/class_k/i.jpg, about ImageNet's sizes and JPEG quality; kept if present."""
    import numpy as np
    import tensorflow as tf

    marker = root / f".generated_{count}_{classes}_{'mix' if mix else f'{width}x{height}'}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(image_sizes(count, width, height, mix, rng)):
        folder = root / "train" / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, (max(h // 16, 2), max(w // 16, 2), 3)).astype(np.float32)
        image = tf.image.resize(coarse, (h, w), method="bicubic")
        image += rng.normal(0, 8, image.shape)  # texture, so it does not compress to nothing
        pixels = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        (folder / f"{i:06d}.jpg").write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())
    marker.touch()


def timed(batch_images, batches: int) -> float:
    """Images/s over `batches` batches of one epoch (`batch_images`: the images in each) after
    its first two (threads or workers started, buffers full): the steady state of a real epoch,
    which is thousands of batches long, without the start-up that a short benchmark epoch would
    repeat."""
    images, started = 0, None
    for seen, count in enumerate(batch_images, 1):
        if seen == 2:
            started = time.perf_counter()
        elif seen > 2:
            images += count
        if seen == batches + 2:
            return images / (time.perf_counter() - started)
    raise SystemExit(f"An epoch has fewer than {batches + 2} batches: generate more --images.")


def time_vgg_jax(root: str, augmentation: str, batch_size: int, batches: int) -> float:
    import jax  # noqa: F401  (the pipeline splits batches by the local device count)

    from vgg_jax.data import pipeline, sources
    from vgg_jax.data.preprocessing import TrainAugmentation

    builder = sources.get_builder(root)
    augment = TrainAugmentation(**AUGMENTATIONS[augmentation])

    epoch = pipeline.train_batches(builder, "train", batch_size, epoch=0, seed=0,
                                   augmentation=augment, shuffle_buffer_size=1024)  # fmt: skip
    return timed((batch["image"].shape[0] * batch["image"].shape[1] for batch in epoch), batches)


def time_vgg_jax_eval(root: str, batch_size: int, batches: int) -> float:
    import jax  # noqa: F401

    from vgg_jax.data import pipeline, sources
    from vgg_jax.data.preprocessing import EvalPreprocessing

    builder = sources.get_builder(root)
    preprocessing = EvalPreprocessing(scale=EVAL_SCALE, crop=EVAL_CROP)

    epoch = pipeline.eval_batches(builder, "train", batch_size, preprocessing)
    return timed((int(batch["mask"].sum()) for batch in epoch), batches)


def time_torch(root: str, decoder: str, augmentation: str, batch_size: int, batches: int,
               workers: int) -> float:  # fmt: skip
    import numpy as np
    import PIL.Image
    import torch
    import torchvision
    from torchvision.transforms import v2

    from vgg_jax.data.normalization import IMAGENET_PCA_EIGENVALUES, IMAGENET_PCA_EIGENVECTORS

    settings = AUGMENTATIONS[augmentation]
    s_min, s_max = settings["scale"]
    transform = v2.Compose([
        v2.RandomShortestSize(list(range(s_min, s_max + 1)), antialias=True),
        v2.RandomCrop(settings["crop"]),
        v2.RandomHorizontalFlip(),
    ])  # fmt: skip
    eigenvectors = torch.tensor(IMAGENET_PCA_EIGENVECTORS, dtype=torch.float32)
    eigenvalues = torch.tensor(IMAGENET_PCA_EIGENVALUES, dtype=torch.float32)
    files = sorted(pathlib.Path(root, "train").glob("*/*.jpg"))
    labels = {name: i for i, name in enumerate(sorted({f.parent.name for f in files}))}

    class Jpegs(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, index):
            path = files[index]
            if decoder == "torch_decode_jpeg":
                image = torchvision.io.decode_jpeg(torchvision.io.read_file(str(path)))
            else:
                with PIL.Image.open(path) as opened:
                    image = torch.from_numpy(np.asarray(opened.convert("RGB"))).permute(2, 0, 1)
            alpha = torch.randn(3) * settings["pca_sigma"]
            lighting = 255.0 * eigenvectors @ (alpha * eigenvalues)
            return transform(image), lighting, labels[path.parent.name]

    loader = torch.utils.data.DataLoader(
        Jpegs(), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        prefetch_factor=4,
    )  # fmt: skip
    return timed((images.shape[0] for images, _, _ in loader), batches)


def run_worker(args) -> int:
    cores, kind, augmentation = args.worker.split(":")
    cores = int(cores)
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
    if kind == "vgg_jax":
        rate = time_vgg_jax(args.dir, augmentation, args.batch_size, args.batches)
    elif kind == "vgg_jax_eval":
        rate = time_vgg_jax_eval(args.dir, args.batch_size, args.batches)
    else:
        rate = time_torch(args.dir, kind, augmentation, args.batch_size, args.batches, cores)
    print(json.dumps({"images_per_second": rate}))
    return 0


def measure(root, kind, augmentation, cores, args) -> float:
    command = [
        sys.executable, __file__, "--worker", f"{cores}:{kind}:{augmentation}", "--dir",
        str(root), "--batch-size", str(args.batch_size), "--batches", str(args.batches),
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise SystemExit(f"{kind} on {cores} cores failed:\n{completed.stderr[-2000:]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])["images_per_second"]


def print_ratios(results: list[dict], augmentations, core_counts) -> None:
    for augmentation in augmentations:
        for cores in core_counts:
            rate = {r["pipeline"]: r["images_per_second"] for r in results
                    if r["cores"] == cores and r["augmentation"] == augmentation}  # fmt: skip
            faster = max(TORCH_PIPELINES, key=rate.get)
            ratio = rate["vgg_jax"] / rate[faster]
            print(f"{augmentation}, {cores} cores: vgg_jax is {ratio:.2f}x the faster "
                  f"torchvision pipeline ({faster})")  # fmt: skip


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    kinds = ["vgg_jax", *TORCH_PIPELINES] if args.compare_torch else ["vgg_jax"]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.dir or tmp)
        sizes = "ImageNet-like sizes" if args.size_mix else f"{args.width}x{args.height}"
        print(f"Generating {args.images} JPEGs of {sizes} in {root} ...", flush=True)
        generate_jpegs(root, args.images, args.classes, args.width, args.height, args.size_mix)
        runs = [(kind, a) for a in args.augmentations for kind in kinds]
        if args.compare_torch:
            runs.append(("vgg_jax_eval", f"Q={EVAL_SCALE}, centre {EVAL_CROP}"))
        for kind, augmentation in runs:
            for cores in args.cores:
                rate = measure(root, kind, augmentation, cores, args)
                results.append({"pipeline": kind, "augmentation": augmentation, "cores": cores,
                                "images_per_second": rate})  # fmt: skip
                print(f"{kind:<18} {augmentation:<18} {cores:>3} cores: {rate:8.1f} images/s "
                      f"({rate / cores:6.1f} per core)", flush=True)  # fmt: skip
    if args.compare_torch:
        print_ratios(results, args.augmentations, args.cores)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
