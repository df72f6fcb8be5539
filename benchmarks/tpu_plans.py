"""The "Plan a TPU run" table of docs/hardware.md: `vgg-jax-plan --largest_batch --json` for a
config on several TPU slices, one command per row (printed with it), gathered into Markdown.

    python -m benchmarks.tpu_plans                       # VGG16, the paper's recipe
    python -m benchmarks.tpu_plans --model vgg19 --topologies v5e-16,v6e-8

Each row compiles for libtpu's compile-only devices: minutes per row on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

TOPOLOGIES = "v4-8,v5e-4,v5e-8,v5e-16,v5p-8,v6e-4,v6e-8"
CONFIG = "vgg_jax/configs/imagenet_vgg16.py"


def plan_command(topology: str, model: str, extra: list[str]) -> list[str]:
    return [
        "python", "-m", "vgg_jax.cli.plan", f"--config={CONFIG}", f"--topology={topology}",
        f"--config.model={model}", "--config.dtype=bfloat16", "--largest_batch", "--json", *extra,
    ]  # fmt: skip


def row(report: dict) -> str:
    train = report["train_step"]
    return (
        f"| {report['topology']} | {report['chips']} | {report['hosts']} "
        f"| {report['batch_per_chip']} | {train['total_bytes'] / 2**30:.2f} "
        f"| {report['memory_per_chip_bytes'] / 2**30:.0f} "
        f"| {report['largest_batch_per_chip']} "
        f"| {report['flops_per_step_per_chip'] / 1e12:.2f} "
        f"| {report['compute_bound_images_per_second_per_chip']:,.0f} "
        f"| {report['compute_bound_images_per_second']:,.0f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tpu_plans", description=__doc__)
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--topologies", default=TOPOLOGIES)
    args, extra = parser.parse_known_args()
    print("| slice | chips | hosts | batch per chip | GiB per chip | HBM GiB | largest batch "
          "per chip | TFLOP per step per chip | images/s per chip (bound) | images/s (bound) |")
    print("|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for topology in args.topologies.split(","):
        command = plan_command(topology, args.model, extra)
        print(f"<!-- {' '.join(command)} -->", file=sys.stderr, flush=True)
        result = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True)
        if result.returncode:
            sys.exit(result.stderr)
        print(row(json.loads(result.stdout)), flush=True)


if __name__ == "__main__":
    main()
