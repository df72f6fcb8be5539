"""Images/s of the training input pipeline alone, per CPU core, on full-size JPEGs.

    python benchmarks/input_pipeline.py                  # 512 JPEGs of 500x375, 1 and all cores
    python benchmarks/input_pipeline.py --cores 1,4,16 --images 2000 --dir /data/fake_jpegs

Generates a folder data set of ImageNet-sized JPEGs (about 500x375, smooth random content
so they compress like photos), then times vgg_jax.data.pipeline.train_batches over it:
read, decode (only the crop window), the paper's augmentation and batching, as train.py runs
it. Each core count runs in its own process pinned to that many cores (sched_setaffinity), so
tf.data sees only those. A GPU at N images/s needs about N / (images/s per core) cores.
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

AUGMENTATIONS = {
    # The paper's: S jittered in [256, 512], a 224 crop, flip, PCA lighting.
    "paper": dict(scale=(256, 512), crop=224, flip=True, pca_sigma=0.1),
    "paper_fixed_s256": dict(scale=(256, 256), crop=224, flip=True, pca_sigma=0.1),
    "inception": dict(crop=224, flip=True, inception_crop=True),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=512, help="JPEGs to generate")
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--size", default="500x375", help="WIDTHxHEIGHT of the JPEGs")
    parser.add_argument("--dir", help="where to keep the JPEGs (default: a temporary folder)")
    parser.add_argument("--cores", help="comma-separated core counts (default: 1 and all)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per run")
    parser.add_argument(
        "--augmentations", default="paper,inception", help=f"from {', '.join(AUGMENTATIONS)}"
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
    return args


def generate_jpegs(root: pathlib.Path, count: int, classes: int, width: int, height: int) -> None:
    """root/train/class_k/i.jpg, about ImageNet's size and JPEG quality; kept if present."""
    import numpy as np
    import tensorflow as tf

    marker = root / f".generated_{count}_{classes}_{width}x{height}"
    if marker.exists():
        return
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.uniform(0, 255, (height // 16, width // 16, 3)).astype(np.float32)
        image = tf.image.resize(coarse, (height, width), method="bicubic")
        image += rng.normal(0, 8, image.shape)  # texture, so it does not compress to nothing
        pixels = tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8)
        (folder / f"{i:06d}.jpg").write_bytes(tf.io.encode_jpeg(pixels, quality=90).numpy())
    marker.touch()


def time_pipeline(root: str, augmentation: str, batch_size: int, batches: int) -> dict:
    """Images/s of train_batches over the folder, after a warm-up of two batches."""
    import jax  # noqa: F401  (the pipeline splits batches by the local device count)

    from vgg_jax.data import pipeline, sources
    from vgg_jax.data.preprocessing import TrainAugmentation

    builder = sources.get_builder(root)
    epoch_batches = builder.info.splits["train"].num_examples // batch_size
    if epoch_batches < 3:
        raise SystemExit(f"--images must give at least 3 batches of {batch_size}")
    augment = TrainAugmentation(**AUGMENTATIONS[augmentation])
    seen, started, epoch = 0, None, 0
    while seen < batches + 2:
        for _ in pipeline.train_batches(
            builder, "train", batch_size, epoch=epoch, seed=0, augmentation=augment,
            shuffle_buffer_size=1024,
        ):  # fmt: skip
            seen += 1
            if seen == 2:
                started = time.perf_counter()  # after warm-up: threads started, buffers full
            if seen == batches + 2:
                break
        epoch += 1
    elapsed = time.perf_counter() - started
    return {"images_per_second": batches * batch_size / elapsed}


def run_worker(args) -> int:
    cores, augmentation = args.worker.split(":")
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: int(cores)])
    result = time_pipeline(args.dir, augmentation, args.batch_size, args.batches)
    print(json.dumps({"images_per_second": result["images_per_second"]}))
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return run_worker(args)
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(args.dir or tmp)
        print(f"Generating {args.images} JPEGs of {args.width}x{args.height} in {root} ...")
        generate_jpegs(root, args.images, args.classes, args.width, args.height)
        env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
        results = []
        for augmentation in args.augmentations:
            for cores in args.cores:
                command = [
                    sys.executable, __file__, "--worker", f"{cores}:{augmentation}",
                    "--dir", str(root), "--batch-size", str(args.batch_size),
                    "--batches", str(args.batches),
                ]  # fmt: skip
                completed = subprocess.run(command, capture_output=True, text=True, env=env)
                if completed.returncode != 0:
                    print(completed.stderr[-2000:], file=sys.stderr)
                    return 1
                rate = json.loads(completed.stdout.strip().splitlines()[-1])["images_per_second"]
                results.append(
                    {"augmentation": augmentation, "cores": cores, "images_per_second": rate}
                )
                print(
                    f"{augmentation:<18} {cores:>3} cores: {rate:8.1f} images/s "
                    f"({rate / cores:6.1f} per core)",
                    flush=True,
                )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
