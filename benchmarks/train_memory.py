"""The largest batch per device that a training config fits in a given memory, from XLA's
memory analysis of the compiled train step (compiled for shapes only, never run).

    python -m benchmarks.train_memory                                  # VGG16, this device
    python -m benchmarks.train_memory --dtype float16 --memory-gib 15  # a T4's share, say
    python -m benchmarks.train_memory --remat --grad-accum-steps 4 --memory-gib 22
    python -m benchmarks.train_memory --batch-sizes 64,256      # just these peaks, no search

On a GPU or TPU the limit defaults to what the device gives JAX. On a CPU give --memory-gib:
the analysis is then XLA:CPU's, whose buffers and fusions differ from a GPU's (no cuDNN
workspaces, other layouts), so treat it as an estimate for the GPU and let train.py's own check
at start-up, on the GPU, have the last word.
"""

from __future__ import annotations

import argparse
import importlib
import time

import jax

from vgg_jax.model.dtypes import COMPUTE_DTYPES
from vgg_jax.training.memory import (
    GIB,
    abstract_training,
    batch_spec,
    compiled_step,
    device_memory,
    largest_batch_per_device,
    peak_bytes,
)
from vgg_jax.training.sections import read_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="imagenet_vgg16", help="a module of vgg_jax.configs")
    parser.add_argument("--model", help="the config's model unless given (vgg16, vgg19_bn, ...)")
    parser.add_argument("--width", type=float, help="multiplier on conv widths")
    parser.add_argument("--dtype", default="auto", choices=("auto", *COMPUTE_DTYPES))
    parser.add_argument("--remat", action="store_true", help="recompute each conv block")
    parser.add_argument("--grad-accum-steps", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--image-size", type=int, help="training crop (the config's by default)")
    parser.add_argument("--num-classes", type=int, default=1000, help="size of the last layer")
    parser.add_argument("--memory-gib", type=float, help="per device; the device's by default")
    parser.add_argument("--batch-sizes", help="comma-separated batches per device to measure")
    args = parser.parse_args()

    config = importlib.import_module(f"vgg_jax.configs.{args.config}").get_config()
    config.dtype, config.remat, config.grad_accum_steps = (
        args.dtype,
        args.remat,
        args.grad_accum_steps,
    )
    if args.model:
        config.model = args.model
    if args.width:
        config.width = args.width
    image_size = args.image_size or config.crop_size or 224
    limit = args.memory_gib * GIB if args.memory_gib else device_memory()
    if limit is None and not args.batch_sizes:
        parser.error(f"the {jax.devices()[0].platform} device reports no memory: give --memory-gib")
    setup, state = abstract_training(read_config(config), args.num_classes, image_size)
    limit_text = "" if limit is None else f"; limit {limit / GIB:.2f} GiB per device"
    print(
        f"{config.model} (width {config.width}), {setup.model.dtype.__name__}, remat "
        f"{'on' if config.remat else 'off'}, {config.grad_accum_steps} micro-batch(es) per step, "
        f"{image_size}x{image_size}{limit_text}; XLA:{jax.devices()[0].platform}'s analysis"
    )
    if args.batch_sizes:
        sizes = [int(size) for size in args.batch_sizes.split(",")]
        if any(size % args.grad_accum_steps for size in sizes):
            parser.error(f"--batch-sizes must be multiples of --grad-accum-steps, got {sizes}")
        print(f"{'batch per device':>17} {'peak GiB':>9} {'GFLOP':>9}")
        for size in sizes:
            compiled = compiled_step(setup, state, batch_spec(size, image_size))
            flops = (compiled.cost_analysis() or {}).get("flops", float("nan"))
            print(f"{size:17d} {peak_bytes(compiled) / GIB:9.2f} {flops / 1e9:9.0f}", flush=True)
        return
    print(f"{'batch per device':>17} {'peak GiB':>9} {'compile s':>9}")
    started = [time.perf_counter()]

    def report(size: int, peak: int) -> None:
        print(f"{size:17d} {peak / GIB:9.2f} {time.perf_counter() - started[0]:9.1f}", flush=True)
        started[0] = time.perf_counter()

    largest = largest_batch_per_device(setup, state, image_size, limit, report)
    if largest is None:
        print(f"largest batch per device: none fits in {limit / GIB:.2f} GiB")
    else:
        print(f"largest batch per device: {largest} (in {limit / GIB:.2f} GiB)")


if __name__ == "__main__":
    main()
