"""The JAX section of the throughput benchmark: vgg_jax's own train step and inference.

Runs in its own process (see throughput.run_section), so each variant gets its own XLA flags
and JAX never shares the card with PyTorch.
"""

from __future__ import annotations

import os
import time

from benchmarks.timing import print_progress, result_row, timed_rate


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
    from vgg_jax.model.costs import layer_table

    return 2 * sum(row.macs for row in layer_table(model, args.image_size))


def benchmark_config(args, batch_size: int = 256):
    """The paper's VGG16 recipe (imagenet_vgg16.py) with the benchmark's model and sizes."""
    from vgg_jax.configs import get_config

    config = get_config("imagenet_vgg16")
    config.update(model=args.model, width=args.width, fc_features=args.fc_features,
                  dtype=args.dtype, batch_size=batch_size)  # fmt: skip
    return config


def build_model(args):
    from vgg_jax.training.sections import read_config

    return read_config(benchmark_config(args)).model.build(args.num_classes)


def _train_setup(args, model, batch_size: int):
    """The library's pmapped train step on one device, its state and one on-device batch of
    uint8 images, as the input pipeline sends them."""
    import flax
    import jax
    import numpy as np

    from vgg_jax.training.sections import read_config
    from vgg_jax.parallel import replicate
    from vgg_jax.training.steps import init_training, pmapped_steps

    shape = (args.image_size, args.image_size, 3)
    setup, state = init_training(
        read_config(benchmark_config(args, batch_size)), model, shape, steps_per_epoch=1000
    )
    devices = jax.local_devices()[:1]
    replicated = replicate(state, devices)
    rng = np.random.default_rng(0)
    host_batch = {
        "image": rng.integers(0, 256, (1, batch_size, *shape), np.uint8),
        "label": rng.integers(0, args.num_classes, (1, batch_size), np.int32),
    }
    batch = next(flax.jax_utils.prefetch_to_device(iter([host_batch]), 1, devices))
    p_train_step, _ = pmapped_steps(setup)
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
    return result_row("vgg_jax", "train", batch_size, rate, 3 * flops_per_image) | {
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
    return result_row("vgg_jax", "inference", batch_size, rate, flops_per_image)


def _peak_bytes() -> int | None:
    import jax

    stats = jax.local_devices()[0].memory_stats()
    return stats.get("peak_bytes_in_use") if stats else None


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


def jax_section(args) -> dict:
    from vgg_jax.training.memory import device_memory

    model = build_model(args)
    flops = model_flops_per_image(args, model)
    result = {"environment": jax_environment(), "forward_flops_per_image": flops, "rows": []}
    if args.section_variant:
        return result | {"rows": variant_rows(args, model, flops)}
    result["matmul"] = matmul_peak(args)
    for batch_size in args.train_batch_sizes:
        result["rows"].append(vgg_jax_train(args, model, batch_size, flops))
        print_progress(result["rows"][-1])
    result["max_batch"] = estimate_max_batch(result["rows"], device_memory())
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
        print_progress(result["rows"][-1])
    return result


def variant_rows(args, model, flops: int) -> list[dict]:
    """The library's train step and inference with a variant's replacements patched in."""
    from unittest import mock

    from benchmarks.variants import VARIANTS

    variant = VARIANTS[args.section_variant]
    rows = []
    with mock.patch.multiple("vgg_jax.model.vgg", **_short_names(variant.patches)):
        for row in (
            vgg_jax_train(args, model, args.train_batch_sizes[-1], flops),
            vgg_jax_inference(args, model, args.inference_batch_sizes[-1], flops),
        ):
            rows.append(row | {"variant": args.section_variant})
            print_progress(rows[-1])
    return rows


def _short_names(patches: dict) -> dict:
    prefix = "vgg_jax.model.vgg."
    assert all(target.startswith(prefix) for target in patches), patches
    return {target[len(prefix) :]: value for target, value in patches.items()}
