"""Training and inference throughput of vgg_jax against torchvision, on one accelerator.

    python -m benchmarks.throughput                    # VGG16 at 224x224, bfloat16
    python -m benchmarks.throughput --variants reshape_pool --out results/
    python -m benchmarks.throughput --small            # minutes on a CPU (what CI runs)

One run measures, on the same card: the bf16 matrix-product peak; vgg_jax's train step (the
pmapped step train.py runs, with its optimiser) and its inference, images/s with the spread
over timed repetitions after warm-up; the time to the first training step (compilation
included); the peak device memory and the largest batch that fits; torchvision's model eager
and under torch.compile (autocast bfloat16, channels_last, SGD with momentum and weight decay).
Each section (jax_speed.py, torch_speed.py) runs in its own process, so JAX and PyTorch never
share the card's memory and each variant gets its own XLA flags; report.py writes the tables.
Figures: images/s, model TFLOP/s and the fraction of the measured matrix peak. With --out,
results.json and results.md are written after every section.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks.jax_speed import jax_section
from benchmarks.report import markdown, write_results
from benchmarks.torch_speed import torch_section

# The repository root: each section runs as `python -m benchmarks.throughput` from there.
ROOT = pathlib.Path(__file__).resolve().parent.parent
FULL = dict(
    image_size=224, width=1.0, fc_features=4096, num_classes=1000, train_batch_sizes="128,256",
    inference_batch_sizes="256,512", steps=20, repeats=5, matmul_size=8192, torch="eager,compile",
)  # fmt: skip
SMALL = dict(
    image_size=32, width=0.125, fc_features=64, num_classes=10, train_batch_sizes="4,8",
    inference_batch_sizes="8", steps=3, repeats=2, matmul_size=256, torch="eager",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized defaults (CI)")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--width", type=float, help="channel multiplier (1 = the paper's)")
    parser.add_argument("--fc-features", type=int, help="width of FC6 and FC7 (4096 = the paper's)")
    parser.add_argument("--num-classes", type=int)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--train-batch-sizes", help="comma-separated, per card")
    parser.add_argument("--inference-batch-sizes", help="comma-separated, per card")
    parser.add_argument("--steps", type=int, help="steps per timed repetition")
    parser.add_argument("--repeats", type=int, help="timed repetitions (after a warm-up one)")
    parser.add_argument("--matmul-size", type=int, help="n of the n x n x n bf16 product")
    parser.add_argument("--torch", help="'eager', 'compile', both comma-separated, or 'none'")
    parser.add_argument("--variants", default="", help="names from benchmarks/variants.py")
    parser.add_argument(
        "--verify-max-batch", action="store_true", help="run the estimated largest batch"
    )
    parser.add_argument("--out", help="directory for results.json and results.md")
    parser.add_argument(
        "--profile", help="directory for a profiler trace of 3 train steps at the largest batch"
    )
    parser.add_argument("--section", help=argparse.SUPPRESS)  # internal: one section's process
    parser.add_argument("--section-variant", default="", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in (SMALL if args.small else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.train_batch_sizes = _int_list(args.train_batch_sizes, "--train-batch-sizes")
    args.inference_batch_sizes = _int_list(args.inference_batch_sizes, "--inference-batch-sizes")
    args.torch = [] if args.torch == "none" else [m for m in args.torch.split(",") if m]
    bad_modes = set(args.torch) - {"eager", "compile"}
    if bad_modes:
        parser.error(f"--torch takes eager, compile or none; got {sorted(bad_modes)}")
    args.variants = [v for v in args.variants.split(",") if v]
    if args.variants:
        from benchmarks.variants import VARIANTS

        unknown = [v for v in args.variants if v not in VARIANTS]
        if unknown:
            parser.error(f"unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    return args


def _int_list(text: str, flag: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part]
    except ValueError:
        raise SystemExit(f"{flag} takes comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{flag} needs at least one batch size of 1 or more, got {text!r}")
    return sorted(values)


# ---- orchestration ----------------------------------------------------------------------


def run_section(args, argv: list[str], section: str, variant: str = "") -> dict:
    """Runs one section in a fresh Python process and returns its result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if variant:
        from benchmarks.variants import VARIANTS

        extra = VARIANTS[variant].xla_flags
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {extra}".strip()
    with tempfile.TemporaryDirectory() as tmp:
        result_file = pathlib.Path(tmp) / "result.json"
        command = [sys.executable, "-m", "benchmarks.throughput", *argv]
        command += ["--section", section, "--result-file", str(result_file)]
        if variant:
            command += ["--section-variant", variant]
        label = f"{section} {variant}".strip()
        print(f"[{label}]", file=sys.stderr, flush=True)
        started = time.perf_counter()
        completed = subprocess.run(command, env=env, cwd=ROOT)
        if completed.returncode != 0 or not result_file.exists():
            return {"failed": f"exit code {completed.returncode}", "rows": []}
        result = json.loads(result_file.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


def collect(args, argv: list[str]) -> dict:
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks.throughput", *argv]),
        "settings": {
            k: getattr(args, k)
            for k in (
                "model",
                "image_size",
                "width",
                "fc_features",
                "num_classes",
                "dtype",
                "steps",
                "repeats",
            )
        },
        "sections": {},
    }
    plan = [("jax", "")] + [("jax", v) for v in args.variants]
    if args.torch:
        plan.append(("torch", ""))
    for section, variant in plan:
        name = f"{section}:{variant}" if variant else section
        results["sections"][name] = run_section(args, argv, section, variant)
        if args.out:
            write_results(results, pathlib.Path(args.out))
    return results


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.section:
        result = jax_section(args) if args.section == "jax" else torch_section(args)
        pathlib.Path(args.result_file).write_text(json.dumps(result))
        return 0
    results = collect(args, argv)
    if args.out:
        write_results(results, pathlib.Path(args.out))
    print(markdown(results), end="")
    failed = [name for name, s in results["sections"].items() if "failed" in s]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
