"""Training and inference throughput of vgg_jax against torchvision, on one accelerator.

    python benchmarks/throughput.py                    # VGG16 at 224x224, bfloat16
    python benchmarks/throughput.py --variants reshape_pool --out results/
    python benchmarks/throughput.py --small            # minutes on a CPU (what CI runs)

One run measures, on the same card: the bf16 matrix-product peak; vgg_jax's train step (the
pmapped step train.py runs, with its optimiser) and its inference, images/s with the spread
over timed repetitions after warm-up; the time to the first training step (compilation
included); the peak device memory and the largest batch that fits; torchvision's model eager
and under torch.compile (autocast bfloat16, channels_last, SGD with momentum and weight decay).
Each section runs in its own process, so JAX and PyTorch never share the card's memory and
each variant gets its own XLA flags. Figures: images/s, model TFLOP/s and the fraction of the
measured matrix peak. With --out, results.json and results.md are written after every section.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

BENCHMARKS_DIR = pathlib.Path(__file__).resolve().parent
FULL = dict(
    image_size=224, width=1.0, num_classes=1000, train_batch_sizes="128,256",
    inference_batch_sizes="256,512", steps=20, repeats=5, matmul_size=8192, torch="eager,compile",
)  # fmt: skip
SMALL = dict(
    image_size=32, width=0.125, num_classes=10, train_batch_sizes="4,8",
    inference_batch_sizes="8", steps=3, repeats=2, matmul_size=256, torch="eager",
)  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized defaults (CI)")
    parser.add_argument("--model", default="vgg16")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--width", type=float, help="channel multiplier (1 = the paper's)")
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
        sys.path.insert(0, str(BENCHMARKS_DIR))
        from variants import VARIANTS

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


# ---- timing -------------------------------------------------------------------------------


def timed_rate(run, steps: int, repeats: int, images_per_step: int) -> dict:
    """Images/s over `repeats` timed calls of run(steps) after one untimed warm-up call.

    run(n) must return only once the device has finished its n steps.
    """
    run(max(1, steps // 2))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(steps)
        seconds.append(time.perf_counter() - start)
    rates = [images_per_step * steps / s for s in seconds]
    return {
        "median": statistics.median(rates),
        "min": min(rates),
        "max": max(rates),
        "repeats": repeats,
        "steps": steps,
    }


# ---- the JAX sections ---------------------------------------------------------------------


def jax_environment() -> dict:
    import flax
    import jax
    import optax

    device = jax.local_devices()[0]
    return {
        "device": device.device_kind,
        "platform": device.platform,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }


def matmul_peak(args) -> dict:
    import jax
    import jax.numpy as jnp

    n = args.matmul_size
    keys = jax.random.split(jax.random.key(0), 2)
    a, b = (jax.random.normal(k, (n, n), jnp.bfloat16) for k in keys)  # never zeros: see METHOD
    product = jax.jit(lambda a, b: a @ b)

    def run(count):
        for _ in range(count):
            out = product(a, b)
        out.block_until_ready()

    rate = timed_rate(run, 10, args.repeats, 1)  # "images" here are products
    flops = 2 * n**3
    return {"n": n, "tflops": {k: rate[k] * flops / 1e12 for k in ("median", "min", "max")}}


def model_flops_per_image(args, model) -> int:
    """Forward FLOPs of one image (2 per multiply-accumulate of every conv and FC layer)."""
    from vgg_jax.summary import layer_table

    return 2 * sum(row.macs for row in layer_table(model, args.image_size))


def _build_model(args):
    import jax.numpy as jnp

    from vgg_jax import create_model

    return create_model(
        args.model, num_classes=args.num_classes, width=args.width, dtype=jnp.dtype(args.dtype)
    )


def _train_setup(args, model, batch_size: int):
    """The library's pmapped train step on one device, its state and one on-device batch."""
    import flax
    import jax
    import numpy as np

    from vgg_jax import optim
    from vgg_jax.configs import get_config
    from vgg_jax.training import create_train_state, model_for_training, pmapped_steps, replicate

    config = get_config("imagenet_vgg16")
    config.batch_size = batch_size
    model = model_for_training(model)
    tx = optim.make_optimizer(config, steps_per_epoch=1000)
    shape = (args.image_size, args.image_size, 3)
    state = create_train_state(model, tx, optim.init_plateau(config), shape, seed=0)
    devices = jax.local_devices()[:1]
    replicated = replicate(state, devices)
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.standard_normal((1, batch_size, *shape), np.float32),
        "label": rng.integers(0, args.num_classes, (1, batch_size), np.int32),
    }
    batch = next(flax.jax_utils.prefetch_to_device(iter([host_batch]), 1, devices))
    p_train_step, _ = pmapped_steps(model, tx)
    return p_train_step, replicated, batch


def vgg_jax_train(args, model, batch_size: int, flops_per_image: int) -> dict:
    import jax

    started = time.perf_counter()
    p_train_step, replicated, batch = _train_setup(args, model, batch_size)
    replicated, metrics = p_train_step(replicated, batch)
    jax.block_until_ready((replicated, metrics))
    first_step_seconds = time.perf_counter() - started
    holder = {"state": replicated}

    def run(count):
        state = holder["state"]
        for _ in range(count):
            state, _ = p_train_step(state, batch)
        holder["state"] = jax.block_until_ready(state)

    rate = timed_rate(run, args.steps, args.repeats, batch_size)
    if args.profile and batch_size == args.train_batch_sizes[-1] and not args.section_variant:
        with jax.profiler.trace(args.profile):
            run(3)
    return _row("vgg_jax", "train", batch_size, rate, 3 * flops_per_image) | {
        "seconds_to_first_step": first_step_seconds,
        "peak_bytes": _peak_bytes(),
    }


def vgg_jax_inference(args, model, batch_size: int, flops_per_image: int) -> dict:
    import jax
    import jax.numpy as jnp

    shape = (batch_size, args.image_size, args.image_size, 3)
    images = jax.random.normal(jax.random.key(1), shape, jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), images[:1])
    apply = jax.jit(model.apply)

    def run(count):
        for _ in range(count):
            logits = apply(variables, images)
        logits.block_until_ready()

    rate = timed_rate(run, args.steps, args.repeats, batch_size)
    return _row("vgg_jax", "inference", batch_size, rate, flops_per_image)


def _peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


def _bytes_limit() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return stats.get("bytes_limit") if stats else None


def estimate_max_batch(train_rows: list[dict], limit: int | None) -> dict | None:
    """The largest batch that fits, from the peak memory at the two largest batch sizes.

    Peak memory is a fixed part (parameters, optimiser state, workspace) plus a part that
    grows linearly with the batch (activations); the fit is extrapolated to the device's limit.
    """
    points = [(r["batch"], r["peak_bytes"]) for r in train_rows if r.get("peak_bytes")]
    if limit is None or len(points) < 2:
        return None
    (b1, m1), (b2, m2) = points[-2:]
    per_image = (m2 - m1) / (b2 - b1)
    if per_image <= 0:
        return None
    fixed = m2 - per_image * b2
    batch = int((limit - fixed) / per_image) // 8 * 8
    return {"estimated": batch, "bytes_per_image": per_image, "fixed_bytes": fixed, "limit": limit}


def _row(framework: str, mode: str, batch: int, rate: dict, flops_per_image: int) -> dict:
    return {
        "framework": framework,
        "mode": mode,
        "batch": batch,
        "images_per_second": rate,
        "flops_per_image": flops_per_image,
    }


def jax_section(args) -> dict:
    model = _build_model(args)
    flops = model_flops_per_image(args, model)
    result = {"environment": jax_environment(), "forward_flops_per_image": flops, "rows": []}
    if args.section_variant:
        return result | {"rows": variant_rows(args, model, flops)}
    result["matmul"] = matmul_peak(args)
    for batch_size in args.train_batch_sizes:
        result["rows"].append(vgg_jax_train(args, model, batch_size, flops))
        _progress(result["rows"][-1])
    result["max_batch"] = estimate_max_batch(result["rows"], _bytes_limit())
    if args.verify_max_batch and result["max_batch"]:
        batch_size = result["max_batch"]["estimated"]
        try:
            result["rows"].append(vgg_jax_train(args, model, batch_size, flops))
            result["max_batch"]["verified"] = True
        except Exception as error:  # an out-of-memory is the answer, not a failure
            result["max_batch"]["verified"] = False
            result["max_batch"]["error"] = str(error).splitlines()[0][:300]
    for batch_size in args.inference_batch_sizes:
        result["rows"].append(vgg_jax_inference(args, model, batch_size, flops))
        _progress(result["rows"][-1])
    return result


def variant_rows(args, model, flops: int) -> list[dict]:
    """The library's train step and inference with a variant's replacements patched in."""
    from unittest import mock

    from variants import VARIANTS

    variant = VARIANTS[args.section_variant]
    rows = []
    with mock.patch.multiple("vgg_jax.models", **_short_names(variant.patches)):
        for row in (
            vgg_jax_train(args, model, args.train_batch_sizes[-1], flops),
            vgg_jax_inference(args, model, args.inference_batch_sizes[-1], flops),
        ):
            rows.append(row | {"variant": args.section_variant})
            _progress(rows[-1])
    return rows


def _short_names(patches: dict) -> dict:
    prefix = "vgg_jax.models."
    assert all(target.startswith(prefix) for target in patches), patches
    return {target[len(prefix) :]: value for target, value in patches.items()}


# ---- the PyTorch section ------------------------------------------------------------------


def torch_section(args) -> dict:
    try:
        import torch
        import torchvision
    except ImportError as error:
        return {"skipped": f"PyTorch or torchvision is not installed ({error.name})", "rows": []}
    if args.width != 1.0 or not hasattr(torchvision.models, args.model):
        return {
            "skipped": f"torchvision builds only the paper's widths of vgg11/13/16/19[_bn]; "
            f"asked for {args.model} at width {args.width}",
            "rows": [],
        }
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    environment = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    rows = []
    for mode in args.torch:
        # The largest training batch only: torch.compile costs a minute per shape on a GPU.
        for batch_size in args.train_batch_sizes[-1:]:
            rows.append(_torch_run(args, device, autocast_dtype, mode, "train", batch_size))
            _progress(rows[-1])
        for batch_size in args.inference_batch_sizes:
            rows.append(_torch_run(args, device, autocast_dtype, mode, "inference", batch_size))
            _progress(rows[-1])
    return {"environment": environment, "rows": rows}


def _torch_run(args, device, autocast_dtype, mode: str, kind: str, batch_size: int) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, args.model)(num_classes=args.num_classes)
    model = model.to(device, memory_format=torch.channels_last)
    images = torch.randn(batch_size, 3, args.image_size, args.image_size, device=device)
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_classes, (batch_size,), device=device)
    forward = torch.compile(model) if mode == "compile" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)

    def train_step():
        with torch.autocast(device.type, dtype=autocast_dtype):
            loss = torch.nn.functional.cross_entropy(forward(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    @torch.no_grad()
    def inference_step():
        with torch.autocast(device.type, dtype=autocast_dtype):
            forward(images)

    model.train(kind == "train")
    step = train_step if kind == "train" else inference_step

    def run(count):
        for _ in range(count):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    run(1)
    first_step_seconds = time.perf_counter() - started
    rate = timed_rate(run, args.steps, args.repeats, batch_size)
    row = _row(f"torchvision {mode}", kind, batch_size, rate, None)
    return row | {"seconds_to_first_step": first_step_seconds}


# ---- orchestration and report -------------------------------------------------------------


def _progress(row: dict) -> None:
    rate = row["images_per_second"]
    print(
        f"  {row['framework']} {row.get('variant', '')} {row['mode']} batch {row['batch']}: "
        f"{rate['median']:,.1f} images/s ({rate['min']:,.1f}-{rate['max']:,.1f})",
        file=sys.stderr,
        flush=True,
    )


def run_section(args, argv: list[str], section: str, variant: str = "") -> dict:
    """Runs one section in a fresh Python process and returns its result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(BENCHMARKS_DIR.parent), str(BENCHMARKS_DIR), env.get("PYTHONPATH", "")]
    )
    if variant:
        from variants import VARIANTS

        extra = VARIANTS[variant].xla_flags
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {extra}".strip()
    with tempfile.TemporaryDirectory() as tmp:
        result_file = pathlib.Path(tmp) / "result.json"
        command = [sys.executable, str(pathlib.Path(__file__).resolve()), *argv]
        command += ["--section", section, "--result-file", str(result_file)]
        if variant:
            command += ["--section-variant", variant]
        label = f"{section} {variant}".strip()
        print(f"[{label}]", file=sys.stderr, flush=True)
        started = time.perf_counter()
        completed = subprocess.run(command, env=env)
        if completed.returncode != 0 or not result_file.exists():
            return {"failed": f"exit code {completed.returncode}", "rows": []}
        result = json.loads(result_file.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


def collect(args, argv: list[str]) -> dict:
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python benchmarks/throughput.py", *argv]),
        "settings": {
            k: getattr(args, k)
            for k in ("model", "image_size", "width", "num_classes", "dtype", "steps", "repeats")
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


def report_rows(results: dict) -> list[dict]:
    """Every measured row with TFLOP/s and the fraction of the measured matrix peak."""
    jax_result = results["sections"].get("jax", {})
    forward_flops = jax_result.get("forward_flops_per_image")
    peak = jax_result.get("matmul", {}).get("tflops", {}).get("median")
    rows = []
    for section in results["sections"].values():
        for row in section.get("rows", []):
            flops = row["flops_per_image"] or (
                forward_flops * (3 if row["mode"] == "train" else 1) if forward_flops else None
            )
            rate = row["images_per_second"]["median"]
            tflops = rate * flops / 1e12 if flops else None
            rows.append(
                row
                | {
                    "tflops": tflops,
                    "fraction_of_peak": tflops / peak if tflops and peak else None,
                }
            )
    return rows


def markdown(results: dict) -> str:
    jax_result = results["sections"].get("jax", {})
    env = jax_result.get("environment", {})
    torch_env = results["sections"].get("torch", {}).get("environment", {})
    lines = [
        f"Measured {results['date']} on {env.get('device', '?')} "
        f"(jax {env.get('jax', '?')}, flax {env.get('flax', '?')}"
        + "".join(f", {name} {version}" for name, version in torch_env.items() if name != "device")
        + f"); `{results['command']}`.",
        "",
        "| framework | variant | mode | batch | images/s (median) | min-max | TFLOP/s | of peak "
        "| first step (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in report_rows(results):
        rate = row["images_per_second"]
        first = row.get("seconds_to_first_step")
        lines.append(
            f"| {row['framework']} | {row.get('variant', '')} | {row['mode']} | {row['batch']} "
            f"| {rate['median']:,.0f} | {rate['min']:,.0f}-{rate['max']:,.0f} "
            f"| {_fmt(row['tflops'], '.3g')} | {_fmt(row['fraction_of_peak'], '.0%')} "
            f"| {_fmt(first, '.1f')} |"
        )
    matmul = jax_result.get("matmul")
    if matmul:
        t = matmul["tflops"]
        lines += ["", f"bf16 matrix product {matmul['n']}^3: {t['median']:,.1f} TFLOP/s "
                  f"({t['min']:,.1f}-{t['max']:,.1f})."]  # fmt: skip
    max_batch = jax_result.get("max_batch")
    if max_batch:
        verified = {True: ", ran", False: ", failed to run"}.get(max_batch.get("verified"), "")
        lines.append(
            f"Largest training batch: about {max_batch['estimated']} "
            f"({max_batch['bytes_per_image'] / 2**20:,.1f} MiB per image over "
            f"{max_batch['fixed_bytes'] / 2**30:,.2f} GiB fixed, limit "
            f"{max_batch['limit'] / 2**30:,.1f} GiB{verified})."
        )
    for name, section in results["sections"].items():
        for key in ("skipped", "failed"):
            if key in section:
                lines.append(f"{name}: {key}: {section[key]}")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str) -> str:
    return "" if value is None else format(value, spec)


def write_results(results: dict, out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = results | {"report": report_rows(results)}
    (out / "results.json").write_text(json.dumps(report, indent=1))
    (out / "results.md").write_text(markdown(results))


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
