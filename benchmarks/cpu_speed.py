"""VGG16 and VGG16-BN on a CPU: vgg_jax against torchvision in one run on the same cores, for
inference (the logits), features to conv5_3 and to fc7, and one fine-tuning train step
(forward + backward + SGD with momentum); then vgg_jax with XLA's own YNNPACK fusions (what
`import vgg_jax` turns off: vgg_jax.environment.turn_off_ynn_fusions), and the LPIPS and DISTS
rows of benchmarks.lpips_speed.

    python -m benchmarks.cpu_speed                  # 224x224, batch 8, float32
    python -m benchmarks.cpu_speed --size 64 --repeats 1 --skip-lpips --json out.json

torchvision runs both in its default layout (NCHW) and channels_last. Weights are random (speed
does not depend on them). Each rate is the median of --repeats timed runs of --steps calls after
an untimed warm-up (compilation), with the range.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

from benchmarks.timing import timed_rate

MODELS = ("vgg16", "vgg16_bn")
MODES = ("logits", "features to conv5_3", "features to fc7", "train step")
ROOT = pathlib.Path(__file__).resolve().parent.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=224, help="image side, pixels")
    parser.add_argument("--batch", type=int, default=8, help="images per call")
    parser.add_argument("--steps", type=int, default=2, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per row")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--skip-lpips", action="store_true", help="leave LPIPS and DISTS out")
    parser.add_argument("--jax-only", action="store_true", help="vgg_jax's rows alone")
    parser.add_argument("--json", help="write the results here too")
    return parser.parse_args(argv)


def jax_functions(name: str, args) -> dict:
    """Each mode of vgg_jax's `name` as a call that returns once its batch is computed."""
    import jax
    import jax.numpy as jnp
    import optax

    import vgg_jax

    model = vgg_jax.create_model(name)
    images = jax.random.uniform(jax.random.key(0), (args.batch, args.size, args.size, 3))
    labels = jnp.zeros(args.batch, jnp.int32)
    variables = jax.jit(model.init)(jax.random.key(1), images)
    tx = optax.sgd(0.01, momentum=0.9)
    opt_state = tx.init(variables["params"])

    def loss(params, batch_stats):
        logits, updates = model.apply(
            {"params": params, **batch_stats}, images, train=True,
            rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"],
        )  # fmt: skip
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    @jax.jit
    def train_step(variables, opt_state):
        params, batch_stats = (
            variables["params"],
            {k: v for k, v in variables.items() if k != "params"},
        )
        grads, updates = jax.grad(loss, has_aux=True)(params, batch_stats)
        changes, opt_state = tx.update(grads, opt_state, params)
        return {"params": optax.apply_updates(params, changes), **updates}, opt_state

    def features(layer):
        run = jax.jit(lambda v, x: model.apply(v, x, layers=(layer,), method="extract_features"))
        return lambda: run(variables, images)

    logits = jax.jit(model.apply)
    return {
        "logits": lambda: logits(variables, images),
        "features to conv5_3": features("conv5_3"),
        "features to fc7": features("fc7"),
        "train step": lambda: train_step(variables, opt_state),
    }


def torch_functions(name: str, args, channels_last: bool) -> dict:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None)
    images = torch.rand(args.batch, 3, args.size, args.size)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.zeros(args.batch, dtype=torch.long)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    to_fc7 = torch.nn.Sequential(
        model.features, model.avgpool, torch.nn.Flatten(), *model.classifier[:5]
    )

    def inference(function):
        def run():
            model.eval()
            with torch.no_grad():
                return function(images)

        return run

    def train_step():
        model.train()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return {
        "logits": inference(model),
        "features to conv5_3": inference(model.features[:-1]),  # conv5_3 and its ReLU
        "features to fc7": inference(to_fc7),
        "train step": train_step,
    }


def rates(functions: dict, args, finish=lambda out: out) -> dict:
    def timed(function):
        def run(count):
            for _ in range(count):
                out = function()
            finish(out)

        return timed_rate(run, args.steps, args.repeats, args.batch)

    return {mode: timed(function) for mode, function in functions.items()}


def jax_rows(args) -> dict:
    import jax

    return {
        name: rates(jax_functions(name, args), args, jax.block_until_ready)
        for name in args.models.split(",")
    }


def xla_default_rows(args) -> dict:
    """vgg_jax's rows in a process that keeps XLA's YNNPACK fusions (read when JAX starts)."""
    with tempfile.TemporaryDirectory() as folder:
        out = pathlib.Path(folder) / "rows.json"
        command = [sys.executable, "-m", "benchmarks.cpu_speed", "--jax-only", "--json", str(out),
                   f"--size={args.size}", f"--batch={args.batch}", f"--steps={args.steps}",
                   f"--repeats={args.repeats}", f"--models={args.models}"]  # fmt: skip
        from vgg_jax.environment import KEEP_YNN_FUSIONS, NO_YNN_FUSIONS

        flags = os.environ.get("XLA_FLAGS", "").replace(NO_YNN_FUSIONS, "").strip()
        env = {**os.environ, KEEP_YNN_FUSIONS: "1", "XLA_FLAGS": flags}
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the run with XLA's own fusions failed:\n{done.stderr[-3000:]}")
        return json.loads(out.read_text())["images_per_second"]["vgg_jax"]


def print_table(results: dict) -> None:
    print(f"Images/s at {results['size']}x{results['size']}, batch {results['batch']}, float32, "
          f"on {results['device']} (median of {results['repeats']}, range):")  # fmt: skip
    table = results["images_per_second"]
    for name in table["vgg_jax"]:
        for mode in MODES:
            cells = []
            for column, rows in table.items():
                rate = rows[name][mode]
                cells.append(
                    f"{column} {rate['median']:6.2f} ({rate['min']:.2f}-{rate['max']:.2f})"
                )
            print(f"  {name:9} {mode:20} " + "  ".join(cells))
    for name, ratio in results["ratios"].items():
        print(f"  {name:60} {ratio:5.2f}x")


def ratios(table: dict) -> dict:
    found = {}
    for name in table["vgg_jax"]:
        for mode in MODES:
            ours = table["vgg_jax"][name][mode]["median"]
            for column in (
                "torchvision channels_last",
                "torchvision NCHW",
                "vgg_jax, XLA's fusions",
            ):
                if column in table:
                    found[f"{name} {mode}: vgg_jax / {column}"] = (
                        ours / table[column][name][mode]["median"]
                    )
    return found


def main(argv=None) -> dict:
    args = parse_args(argv)
    import jax

    import vgg_jax  # noqa: F401  (before JAX starts: vgg_jax's XLA flags)

    cores = len(os.sched_getaffinity(0))
    table = {"vgg_jax": jax_rows(args)}
    if not args.jax_only:
        import torch

        torch.set_num_threads(cores)
        for column, channels_last in (
            ("torchvision channels_last", True),
            ("torchvision NCHW", False),
        ):
            table[column] = {name: rates(torch_functions(name, args, channels_last), args)
                             for name in args.models.split(",")}  # fmt: skip
        table["vgg_jax, XLA's fusions"] = xla_default_rows(args)
    results = {
        "size": args.size, "batch": args.batch, "repeats": args.repeats, "cores": cores,
        "device": f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {cores} cores",
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "images_per_second": table,
        "ratios": {} if args.jax_only else ratios(table),
    }  # fmt: skip
    if not args.jax_only:
        print_table(results)
        if not args.skip_lpips:
            from benchmarks import lpips_speed

            results["lpips"] = lpips_speed.main([f"--repeats={args.repeats}"])
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
