"""Regenerates the measured figures of docs/reproducibility.md and the input speed of
docs/performance.md, on this machine, and prints each beside the machine it ran on:

- the default run (`python train.py`): test top-1/top-5 and the time of the whole command, and
  the time to the end of its first step, over several seeds (their spread);
- the paper's test protocols on each of those runs (`python -m vgg_jax.cli.evaluate`, Q = 32);
- the input pipelines' images/s on 1 and all cores, against torchvision's, on one JPEG size
  and on ImageNet-like sizes (python -m benchmarks.input_pipeline --compare-torch [--size-mix]).

    python -m benchmarks.reproduce                 # 3 seeds: about 10 minutes on 2 CPU cores
    python -m benchmarks.reproduce --seeds 0 --skip-input

Runs go one after another, each in a fresh process and work directory, so that their times
mean something: run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
from importlib import metadata

from benchmarks.recipe_sweep import prepared_digits, run_once

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROTOCOLS = ("center", "dense", "multi_crop")


def machine() -> str:
    model = platform.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(
        f"{name} {metadata.version(name)}" for name in ("jax", "flax", "optax", "tensorflow-cpu")
        if _installed(name)
    )  # fmt: skip
    return f"{model}, {cores} cores, Python {platform.python_version()}, {versions}"


def _installed(name: str) -> bool:
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def spread(values) -> str:
    values = list(values)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{min(values):.2f}-{max(values):.2f} (mean {sum(values) / len(values):.2f})"


def protocol_errors(workdir: str) -> dict[str, float]:
    """{protocol: top-1 error %} of a run's latest checkpoint at Q = 32."""
    output = pathlib.Path(workdir) / "evaluation.json"
    command = [sys.executable, "-m", "vgg_jax.cli.evaluate", f"--workdir={workdir}", "--scales=32",
               f"--protocols={','.join(PROTOCOLS)}", f"--output={output}"]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if completed.returncode != 0:
        raise RuntimeError(f"evaluate failed: {completed.stderr[-2000:]}")
    rows = json.loads(output.read_text())["results"]
    return {row["protocol"]: row["top1_error"] for row in rows}


def default_runs(seeds: list[int]) -> None:
    data_dir = tempfile.mkdtemp(prefix="vgg_jax_reproduce_data_")
    prepared_digits(data_dir)
    print("\n## The default run: python train.py (digits built beforehand)\n")
    print("| seed | top-1 % | top-5 % | whole command (s) | first step (s) | 97% at epoch |")
    print("|---|---|---|---|---|---|", flush=True)
    rows = []
    for seed in seeds:
        row = run_once([], seed, "auto", "default", data_dir)
        if row["returncode"] != 0:
            raise RuntimeError(f"train.py failed for seed {seed}: {row['error']}")
        rows.append(row)
        print(f"| {seed} | {row['final_top1']:.2f} | {row['best_top5']:.2f} | "
              f"{row['seconds']:.0f} | {row['seconds_to_first_step']:.1f} | "
              f"{row['first_epoch_at_97']} |", flush=True)  # fmt: skip
    print(f"\ntop-1 {spread(r['final_top1'] for r in rows)} %; whole command "
          f"{spread(r['seconds'] for r in rows)} s; first step "
          f"{spread(r['seconds_to_first_step'] for r in rows)} s")  # fmt: skip

    print("\n## Test protocols on those runs: python -m vgg_jax.cli.evaluate --scales=32\n")
    print("| seed | " + " | ".join(f"{p} top-1 error %" for p in PROTOCOLS) + " |")
    print("|---" * (len(PROTOCOLS) + 1) + "|", flush=True)
    errors = []
    for row in rows:
        errors.append(protocol_errors(row["workdir"]))
        print(f"| {row['seed']} | " + " | ".join(f"{errors[-1][p]:.2f}" for p in PROTOCOLS) + " |",
              flush=True)  # fmt: skip
    print("\n" + "; ".join(f"{p} {spread(e[p] for e in errors)}" for p in PROTOCOLS))


def input_speed() -> None:
    for sizes in ([], ["--size-mix"]):
        flags = " ".join(["--compare-torch", *sizes])
        print(f"\n## Input pipeline: python -m benchmarks.input_pipeline {flags}\n", flush=True)
        output = pathlib.Path(tempfile.mkdtemp()) / "input.json"
        command = [sys.executable, str(ROOT / "benchmarks" / "input_pipeline.py"),
                   "--compare-torch", *sizes, f"--json={output}"]  # fmt: skip
        subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2", help="seeds of the default run")
    parser.add_argument("--skip-input", action="store_true", help="leave out the input benchmark")
    args = parser.parse_args()
    print(f"Machine: {machine()}", flush=True)
    default_runs([int(seed) for seed in args.seeds.split(",")])
    if not args.skip_input:
        input_speed()


if __name__ == "__main__":
    main()
