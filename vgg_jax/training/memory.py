"""The train step's memory, known before it runs.

XLA's memory analysis of the compiled step gives its per-device peak: the arguments (the
train state and the batch), the outputs, the temporaries (activations kept for the backward
pass, gradients, workspaces), less the outputs written over donated arguments. A run logs it
with the parameters and optimiser state, and where the device reports its memory (GPUs,
TPUs) and the peak is larger, stops before training, naming the settings that would fit:
each is compiled and measured the same way, nothing is extrapolated.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import jax
import jax.numpy as jnp

from vgg_jax.training.sections import TrainingConfig
from vgg_jax.training.steps import TrainingSetup, init_training, pmapped_steps

GIB = 2**30
logger = logging.getLogger("vgg_jax")


class DoesNotFit(ValueError):
    """The train step needs more memory than the device has; the message says what fits."""


def human_size(size: int) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / 2**20:.1f} MiB"


def tree_bytes(tree: Any) -> int:
    """Bytes of every array (or ShapeDtypeStruct) in `tree`."""
    return sum(leaf.size * jnp.dtype(leaf.dtype).itemsize for leaf in jax.tree.leaves(tree))


def peak_bytes(compiled) -> int | None:
    """Per-device peak of a compiled executable; None where the backend gives no analysis."""
    stats = compiled.memory_analysis()
    if stats is None:
        return None
    return (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )


def device_memory(device=None) -> int | None:
    """The memory JAX may use on `device` (its first local one by default), where the device
    reports it: GPUs and TPUs do, CPUs do not. On a GPU it is what JAX's allocator was given
    (75% of the card unless XLA_PYTHON_CLIENT_MEM_FRACTION says otherwise)."""
    device = device if device is not None else jax.local_devices()[0]
    try:
        stats = device.memory_stats()
    except Exception:  # not implemented by this backend
        return None
    return (stats or {}).get("bytes_limit")


def compiled_step(setup: TrainingSetup, state: Any, batch: Any):
    """`setup`'s pmapped train step compiled, not run, for arguments shaped like `state` and
    `batch` (arrays or ShapeDtypeStructs, with the device axis first)."""
    return pmapped_steps(setup)[0].lower(state, batch).compile()


def step_peak(setup: TrainingSetup, state: Any, batch: Any) -> int | None:
    """The per-device peak of that compiled step."""
    return peak_bytes(compiled_step(setup, state, batch))


def abstract_training(
    config: TrainingConfig,
    num_classes: int,
    image_size: int | tuple[int, int, int],
    devices: int = 1,
    dtype=None,
) -> tuple[TrainingSetup, Any]:
    """(setup, state) for `config` on `devices` devices, the state as ShapeDtypeStructs with
    the device axis first: shapes only, so a VGG16 is measured without allocating it. `dtype`
    is the computation dtype config.dtype resolves to there (its "auto" asks JAX's backend)."""
    model = config.model.build(num_classes, dtype)
    made = []

    def initial_state():
        setup, state = init_training(config, model, image_shape(image_size), 1)
        made.append(setup)
        return state

    state = jax.eval_shape(initial_state)
    replicated = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct((devices, *leaf.shape), leaf.dtype), state
    )
    return made[0], replicated


def image_shape(image_size: int | tuple[int, int, int]) -> tuple[int, int, int]:
    """(H, W, 3) of a square size, or the shape itself."""
    return (image_size, image_size, 3) if isinstance(image_size, int) else tuple(image_size)


def batch_spec(
    per_device: int,
    image_size: int | tuple[int, int, int],
    devices: int = 1,
    lighting: bool = False,
    mask: bool = False,
) -> dict:
    """The shapes of a batch as the input pipeline gives it: uint8 images and labels; each
    image's PCA lighting shift in training where config.pca_lighting asks for it, and the
    padding mask of evaluation."""
    leading = (devices, per_device)
    batch = {
        "image": jax.ShapeDtypeStruct((*leading, *image_shape(image_size)), jnp.uint8),
        "label": jax.ShapeDtypeStruct(leading, jnp.int32),
    }
    if lighting:
        batch["lighting"] = jax.ShapeDtypeStruct((*leading, 3), jnp.float32)
    if mask:
        batch["mask"] = jax.ShapeDtypeStruct(leading, jnp.float32)
    return batch


def largest_batch_per_device(
    setup: TrainingSetup, state: Any, image_size: int, limit: int, report=lambda size, peak: None
) -> int | None:
    """The largest batch per device whose train step (setup's micro-batching: the batch is a
    multiple of grad_accum_steps) fits in `limit` bytes: doubled until it does not fit, then
    bisected; `report(batch, peak)` sees each one measured. None if not even the smallest
    fits."""
    unit = setup.grad_accum_steps

    def fits(multiple: int) -> bool:
        peak = step_peak(setup, state, batch_spec(multiple * unit, image_size))
        if peak is None:
            raise ValueError(f"XLA gives no memory analysis on {jax.devices()[0].platform}.")
        report(multiple * unit, peak)
        return peak <= limit

    if not fits(1):
        return None
    low = 1
    while fits(2 * low):
        low *= 2
    return (largest_fitting(list(range(low + 1, 2 * low)), fits) or low) * unit


def with_settings(setup: TrainingSetup, grad_accum_steps: int, remat: bool) -> TrainingSetup:
    return dataclasses.replace(
        setup, grad_accum_steps=grad_accum_steps, model=setup.model.clone(remat=remat)
    )


def largest_fitting(sizes: list[int], fits: Callable[[int], bool]) -> int | None:
    """The largest of the ascending `sizes` for which `fits` holds, by bisection (memory grows
    with the batch); None if none does."""
    low, high, best = 0, len(sizes) - 1, None
    while low <= high:
        middle = (low + high) // 2
        if fits(sizes[middle]):
            best, low = sizes[middle], middle + 1
        else:
            high = middle - 1
    return best


def fitting_settings(setup: TrainingSetup, state: Any, batch: Any, limit: int) -> list[str]:
    """Settings under which the step fits in `limit` bytes per device, each one compiled and
    measured: more micro-batches (with remat too, if it is off), or a smaller batch."""
    per_device = batch["label"].shape[1]
    divisors = [size for size in range(1, per_device + 1) if per_device % size == 0]

    def largest_micro_batch(remat: bool) -> int | None:
        def fits(micro_batch: int) -> bool:
            peak = step_peak(with_settings(setup, per_device // micro_batch, remat), state, batch)
            return peak is not None and peak <= limit

        return largest_fitting(divisors, fits)

    settings = []
    micro = largest_micro_batch(setup.model.remat)
    if micro is not None:
        settings.append(
            f"--config.grad_accum_steps={per_device // micro} (micro-batches of {micro}), or "
            f"--config.batch_size={micro * jax.device_count()} without accumulation (the "
            f"learning rate scales with it)"
        )
    if not setup.model.remat:
        micro = largest_micro_batch(True)
        if micro is not None:
            settings.append(
                f"--config.remat=True --config.grad_accum_steps={per_device // micro} "
                f"(micro-batches of {micro})"
            )
    return settings


def check_step_memory(setup: TrainingSetup, state: Any, batch: Any, compiled) -> int | None:
    """Logs what the train step holds per device and returns its peak; raises DoesNotFit,
    before anything has run, where the device reports less memory than the peak."""
    peak, limit = peak_bytes(compiled), device_memory()
    one_device = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), state)
    per_device, micro_batches = batch["label"].shape[1], setup.grad_accum_steps
    logger.info(
        "Memory per device, for a batch of %d in %d micro-batch(es) of %d: parameters %s, "
        "optimiser state %s; peak of the compiled train step %s (XLA's memory analysis)%s.",
        per_device, micro_batches, per_device // micro_batches,
        human_size(tree_bytes(one_device.params)), human_size(tree_bytes(one_device.opt_state)),
        "unknown" if peak is None else human_size(peak),
        "; the device does not report its memory" if limit is None
        else f"; the device has {human_size(limit)} for JAX",
    )  # fmt: skip
    if peak is None or limit is None or peak <= limit:
        return peak
    logger.info("The train step does not fit: compiling other settings to find what does.")
    settings = fitting_settings(setup, state, batch, limit)
    raise DoesNotFit(
        f"The train step needs {peak / GIB:.2f} GiB per device and the "
        f"{jax.local_devices()[0].device_kind} has {limit / GIB:.2f} GiB for JAX (batch "
        f"{per_device} per device, grad_accum_steps={setup.grad_accum_steps}, "
        f"remat={setup.model.remat}). "
        + (
            "These fit: " + "; or ".join(settings) + "."
            if settings
            else "Not even one example per device fits with remat: use a narrower model "
            "(config.width) or smaller crops (config.crop_size)."
        )
    )
