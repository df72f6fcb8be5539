"""LPIPS and DISTS pairs/s: vgg_jax's LPIPS against the `lpips` package and its DISTS against
the `DISTS-pytorch` package (PyTorch, eager), in one run on the same cores, forward and
forward + backward with respect to the first image; and what the VGG16 forward to conv5_3
alone allows, LPIPS's floor.

    python -m benchmarks.lpips_speed                   # 256x256, batch 4 pairs, CPU
    taskset -c 0 python -m benchmarks.lpips_speed      # on one core
    python -m benchmarks.lpips_speed --size 64 --batch 2 --repeats 2 --json out.json

Both sides use a random VGG16 and uniform linear weights (DISTS: the reference's random
alpha and beta; speed does not depend on the values) and float32. Without DISTS-pytorch
installed, its rows are left out. On a GPU machine both run on the GPU (JAX's default device; PyTorch's
"cuda"); on CPU, on whatever cores the process may use (pin it with taskset).
Each rate is the median of --repeats timed runs after an untimed warm-up (compilation), with
the spread.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib

from benchmarks.timing import timed_rate


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=256, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=4, help="pairs per call")
    parser.add_argument("--steps", type=int, default=2, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row")
    parser.add_argument("--skip-torch", action="store_true", help="vgg_jax rows only")
    parser.add_argument("--json", help="write the results here too")
    return parser.parse_args(argv)


def jax_rows(args) -> dict:
    import jax
    import jax.numpy as jnp

    import vgg_jax
    from vgg_jax.dists import DISTS
    from vgg_jax.perceptual import LPIPS, LPIPS_LAYERS

    module = LPIPS(vgg_jax.vgg16())
    keys = jax.random.split(jax.random.key(0), 3)
    shape = (args.batch, args.size, args.size, 3)
    images0, images1 = (jax.random.uniform(k, shape, minval=-1, maxval=1) for k in keys[:2])
    variables = jax.jit(module.init)(keys[2], images0, images1)
    forward = jax.jit(module.apply)
    backward = jax.jit(jax.grad(lambda v, x, y: module.apply(v, x, y).sum(), argnums=1))
    backbone = vgg_jax.vgg16()
    both = jnp.concatenate([images0, images1])
    features = jax.jit(
        lambda v, x: backbone.apply(v, x, layers=LPIPS_LAYERS, method="extract_features")
    )
    backbone_variables = {"params": variables["params"]["backbone"]}

    def timed(function, *inputs) -> dict:
        def run(count):
            for _ in range(count):
                out = function(*inputs)
            jax.block_until_ready(out)

        return timed_rate(run, args.steps, args.repeats, args.batch)  # pairs per call

    dists = DISTS(vgg_jax.vgg16())
    unit0, unit1 = (images0 + 1) / 2, (images1 + 1) / 2  # DISTS takes [0, 1]
    dists_variables = jax.jit(dists.init)(keys[2], unit0, unit1)
    dists_forward = jax.jit(dists.apply)
    dists_backward = jax.jit(jax.grad(lambda v, x, y: dists.apply(v, x, y).sum(), argnums=1))
    return {
        "vgg_jax forward": timed(forward, variables, images0, images1),
        "vgg_jax forward+backward": timed(backward, variables, images0, images1),
        "VGG16 to conv5_3 alone (2 images a pair)": timed(features, backbone_variables, both),
        "vgg_jax DISTS forward": timed(dists_forward, dists_variables, unit0, unit1),
        "vgg_jax DISTS forward+backward": timed(dists_backward, dists_variables, unit0, unit1),
    }


def torch_rows(args) -> dict:
    import lpips
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    finish = torch.cuda.synchronize if device == "cuda" else lambda: None
    torch.manual_seed(0)
    model = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
    # The metric's weights fixed, as in the loss use and in vgg_jax's rows: the backward
    # computes the image's gradient only (lpips leaves its linear layers trainable).
    model = model.eval().requires_grad_(False).to(device)
    shape = (args.batch, 3, args.size, args.size)
    images0, images1 = (torch.rand(shape, device=device) * 2 - 1 for _ in range(2))

    def forward(count):
        with torch.no_grad():
            for _ in range(count):
                model(images0, images1)
        finish()

    def backward(count):
        for _ in range(count):
            image = images0.clone().requires_grad_(True)
            model(image, images1).sum().backward()
        finish()

    rows = {
        "lpips forward": timed_rate(forward, args.steps, args.repeats, args.batch),
        "lpips forward+backward": timed_rate(backward, args.steps, args.repeats, args.batch),
    }
    if importlib.util.find_spec("DISTS_pytorch") is not None:
        rows.update(dists_torch_rows(args, device, finish))
    return rows


def dists_torch_rows(args, device: str, finish) -> dict:
    import DISTS_pytorch.DISTS_pt as reference
    import torch
    import torchvision

    # DISTS_pt builds models.vgg16(pretrained=True), a download: the same network, random.
    random_vgg = staticmethod(lambda **kwargs: torchvision.models.vgg16(weights=None))
    reference.models = type("Models", (), {"vgg16": random_vgg})
    model = reference.DISTS(load_weights=False).eval().requires_grad_(False).to(device)
    shape = (args.batch, 3, args.size, args.size)
    images0, images1 = (torch.rand(shape, device=device) for _ in range(2))

    def forward(count):
        for _ in range(count):
            model(images0, images1)  # under no_grad: DISTS_pt's default
        finish()

    def backward(count):
        for _ in range(count):
            image = images0.clone().requires_grad_(True)
            model(image, images1, require_grad=True).sum().backward()
        finish()

    return {
        "DISTS_pytorch forward": timed_rate(forward, args.steps, args.repeats, args.batch),
        "DISTS_pytorch forward+backward": timed_rate(
            backward, args.steps, args.repeats, args.batch
        ),
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    cores = len(os.sched_getaffinity(0))
    where = f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {cores} host cores"
    rows = jax_rows(args)
    if not args.skip_torch:
        import torch

        torch.set_num_threads(cores)
        rows.update(torch_rows(args))
    print(f"LPIPS and DISTS pairs/s at {args.size}x{args.size}, batch {args.batch}, on {where}:")
    for name, rate in rows.items():
        print(f"  {name:42} {rate['median']:8.2f}  ({rate['min']:.2f}-{rate['max']:.2f})")
    ratios = {}
    floor = rows["VGG16 to conv5_3 alone (2 images a pair)"]["median"]
    ratios["vgg_jax forward / backbone floor"] = rows["vgg_jax forward"]["median"] / floor
    if not args.skip_torch:
        for mode in ("forward", "forward+backward"):
            ratio = rows[f"vgg_jax {mode}"]["median"] / rows[f"lpips {mode}"]["median"]
            ratios[f"vgg_jax / lpips, {mode}"] = ratio
            if f"DISTS_pytorch {mode}" in rows:
                ratio = rows[f"vgg_jax DISTS {mode}"]["median"]
                ratios[f"vgg_jax / DISTS_pytorch, {mode}"] = (
                    ratio / rows[f"DISTS_pytorch {mode}"]["median"]
                )
    for name, ratio in ratios.items():
        print(f"  {name:42} {ratio:8.2f}x")
    results = {"size": args.size, "batch": args.batch, "cores": cores, "device": where,
               "pairs_per_second": rows, "ratios": ratios}  # fmt: skip
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
