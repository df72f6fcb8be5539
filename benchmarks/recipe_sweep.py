"""Runs `python train.py` over seeds, compute dtypes and XLA optimisation levels, and prints each
run's final and best test top-1, its largest drop between two evaluations, and its wall time.

    python -m benchmarks.recipe_sweep                       # the default recipe, 12 runs
    python -m benchmarks.recipe_sweep --set model=vgg11_bn --set learning_rate=0.1

This is how the default recipe (vgg_jax/configs/default.py) was chosen: it must hold on every
run, not on one lucky seed or one CPU's rounding. Each run is a fresh process with a fresh work
directory (nothing compiled in advance), one after another so that their times mean something.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
XLA_FLAGS = {"default": "", "no-llvm-opt": "--xla_backend_optimization_level=0"}
EVAL_LINE = re.compile(r"epoch (\d+), step \d+: eval loss [\d.]+, top-1 ([\d.]+)%")


def run_once(
    overrides: list[str], seed: int, dtype: str, xla: str, data_dir: str, workdir: str | None = None
) -> dict:
    """One `python train.py` in a fresh process and work directory: its evaluations, summary
    and wall time."""
    workdir = workdir or tempfile.mkdtemp(prefix="vgg_jax_sweep_")
    command = [
        sys.executable, str(ROOT / "train.py"), f"--workdir={workdir}",
        f"--config.seed={seed}", f"--config.dtype={dtype}", f"--config.data_dir={data_dir}",
        *[f"--config.{override}" for override in overrides],
    ]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": XLA_FLAGS[xla]}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    started = time.time()
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.time() - started
    row = {"seed": seed, "dtype": dtype, "xla": xla, "seconds": seconds,
           "returncode": completed.returncode, "workdir": workdir}  # fmt: skip
    if completed.returncode != 0:
        return row | {"error": completed.stderr.strip().splitlines()[-1:]}
    log = (pathlib.Path(workdir) / "train.log").read_text()
    summary = json.loads((pathlib.Path(workdir) / "summary.json").read_text())
    top1 = [float(match[2]) for match in EVAL_LINE.finditer(log)]
    drops = [before - after for before, after in itertools.pairwise(top1)]
    return row | {
        "eval_top1": top1,
        "final_top1": top1[-1],
        "best_top1": max(top1),
        "largest_drop": max(drops, default=0.0),
        "first_epoch_at_97": next((i + 1 for i, t in enumerate(top1) if t >= 97.0), None),
        "best_top5": 100 * summary["best_top5_accuracy"],
        "seconds_to_first_step": summary["seconds_to_first_step"],
    }


def prepared_digits(data_dir: str) -> None:
    """Builds the digits once, so that no run's time includes it."""
    code = (
        "import sys; from vgg_jax.data.sources import get_builder; "
        "get_builder('digits', sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, data_dir], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override applied to every run (repeatable)")  # fmt: skip
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--xla", default="default,no-llvm-opt", help=", ".join(XLA_FLAGS))
    parser.add_argument("--output", help="JSON file for the rows")
    args = parser.parse_args()
    data_dir = tempfile.mkdtemp(prefix="vgg_jax_sweep_data_")
    prepared_digits(data_dir)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"overrides: {' '.join(args.set) or 'none'}", flush=True)  # fmt: skip
    print("| seed | dtype | XLA | final top-1 % | best % | largest drop | 97% at epoch | s |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    rows = []
    for seed, dtype, xla in itertools.product(
        map(int, args.seeds.split(",")), args.dtypes.split(","), args.xla.split(",")
    ):
        row = run_once(args.set, seed, dtype, xla, data_dir)
        rows.append(row)
        if row["returncode"] != 0:
            print(f"| {seed} | {dtype} | {xla} | failed: {row['error']} | | | | |", flush=True)
            continue
        print(f"| {seed} | {dtype} | {xla} | {row['final_top1']:.2f} | {row['best_top1']:.2f} | "
              f"{row['largest_drop']:.2f} | {row['first_epoch_at_97']} | {row['seconds']:.0f} |",
              flush=True)  # fmt: skip
    finals = [row["final_top1"] for row in rows if "final_top1" in row]
    if finals:
        drop = max(row["largest_drop"] for row in rows if "largest_drop" in row)
        print(f"final top-1: min {min(finals):.2f}, max {max(finals):.2f} over {len(finals)} "
              f"runs; largest drop {drop:.2f}")  # fmt: skip
    if args.output:
        pathlib.Path(args.output).write_text(
            json.dumps({"overrides": args.set, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
