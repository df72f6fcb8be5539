"""One fine-tuning train step of VGG16 at 224x224 on this machine: the classifier alone
(config.trainable="classifier", a linear probe on fc7's features) against every layer, and the
step's memory from XLA's analysis of the compiled program.

    python -m benchmarks.fine_tune_speed                      # VGG16, batch 8, 5 steps x 3
    python -m benchmarks.fine_tune_speed --model vgg11 --image-size 64 --batch 4   # quick

Each part is train.py's own pmapped step on one device (vgg_jax.training.steps), compiled
once, then timed over `--steps` steps, `--repeats` times; the median and the range are
printed, with the ratio of the medians.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from benchmarks.timing import timed_rate
from vgg_jax.configs import imagenet_vgg16
from vgg_jax.training.memory import human_size, peak_bytes
from vgg_jax.training.sections import read_config
from vgg_jax.training.steps import init_training, pmapped_steps

PARTS = ("classifier", "head", "all")


def measure(args, trainable: str) -> tuple[dict, int]:
    """(images/s over the repeats, the compiled step's peak bytes) for one trainable part."""
    config = imagenet_vgg16.get_config()
    config.update(model=args.model, trainable=trainable, dtype="float32", crop_size=args.image_size,
                  batch_size=args.batch)  # fmt: skip
    config = read_config(config)
    shape = (args.image_size, args.image_size, 3)
    setup, state = init_training(config, config.model.build(1000), shape, steps_per_epoch=100)
    train_step, _ = pmapped_steps(setup, jax.devices()[:1])
    state = jax.tree.map(lambda leaf: np.stack([leaf]), jax.device_get(state))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (1, args.batch, *shape), dtype=np.uint8),
        "label": rng.integers(0, 1000, (1, args.batch)).astype(np.int32),
    }
    compiled = train_step.lower(state, batch).compile()
    held = {"state": state}

    def run(steps: int) -> None:
        for _ in range(steps):
            held["state"], metrics = compiled(held["state"], batch)
        jax.block_until_ready(metrics)

    return timed_rate(run, args.steps, args.repeats, args.batch), peak_bytes(compiled)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fine_tune_speed",
                                     description=__doc__.split("\n\n")[0])  # fmt: skip
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="classifier,all", help=f"of {', '.join(PARTS)}")
    args = parser.parse_args()
    print(f"{args.model}, {args.image_size}x{args.image_size}, batch {args.batch}, float32, "
          f"{jax.devices()[0].device_kind}")  # fmt: skip
    results = {}
    for part in args.parts.split(","):
        rate, peak = measure(args, part)
        results[part] = rate
        print(f"trainable={part:<10}  {rate['median']:6.2f} images/s (range {rate['min']:.2f}-"
              f"{rate['max']:.2f}, {rate['repeats']} x {rate['steps']} steps)  peak "
              f"{human_size(peak)}", flush=True)  # fmt: skip
    if {"classifier", "all"} <= set(results):
        ratio = results["classifier"]["median"] / results["all"]["median"]
        print(f"classifier alone: {ratio:.2f}x the images/s of every layer")


if __name__ == "__main__":
    main()
