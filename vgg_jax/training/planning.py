"""A training run planned before it is paid for: train.py's own pmapped train and eval steps,
set up from the config as train.py sets them up, compiled for a TPU slice's compile-only
devices (vgg_jax.training.topologies) with the train state from jax.eval_shape, nothing
materialised. The compiled program's memory and cost analyses say whether it fits, how large
a batch would, and how fast the chips' arithmetic could run it.

JAX runs pmap as jax.jit of jax.shard_map over a Mesh of the devices, so the program compiled
here is the one each device of the slice runs, on every host.
"""

from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable

import jax.numpy as jnp

from vgg_jax.model.costs import training_flops_per_image
from vgg_jax.model.dtypes import auto_dtype, compute_dtype
from vgg_jax.training.memory import abstract_training, batch_spec, peak_bytes
from vgg_jax.training.sections import ConfigError, TrainingConfig, check_for_devices
from vgg_jax.training.steps import TrainingSetup, pmapped_steps
from vgg_jax.training.topologies import Topology

# The TPU compiler's refusal of a program larger than HBM, with its own figures.
OUT_OF_MEMORY = re.compile(r"RESOURCE_EXHAUSTED: Ran out of memory[^\n]*")
# At most this many compiles in a search for the largest batch (each takes a minute for VGG16
# on two CPU cores): the first, the estimate, its double, and three corrections.
SEARCH_COMPILES = 6


class PlanError(ValueError):
    """A plan that cannot be made as asked; the message says why and what works."""


@dataclasses.dataclass(frozen=True)
class StepCompile:
    """One compile of a step for a batch per device: XLA's memory analysis (bytes per device)
    and FLOPs, or the compiler's refusal."""

    batch_per_device: int
    seconds: float
    total: int | None = None  # the step's peak, as train.py's memory check reads it
    arguments: int | None = None
    outputs: int | None = None
    aliased: int | None = None  # outputs written over donated arguments
    temporaries: int | None = None
    flops: float | None = None
    refusal: str | None = None

    def fits(self, memory: int) -> bool:
        return self.refusal is None and self.total <= memory


def compile_step(step: Callable, state: Any, batch: dict) -> StepCompile:
    """`step` (pmapped) compiled for these argument shapes, as train.py compiles it before its
    first step (loop.compile_train_step: there the arguments are arrays, here their shapes);
    the compiler's out-of-memory refusal is a result, any other failure an error."""
    per_device = batch["label"].shape[1]
    started = time.perf_counter()
    try:
        compiled = step.lower(state, batch).compile()
    except Exception as error:
        refusal = OUT_OF_MEMORY.search(str(error))
        if refusal is None:
            raise
        return StepCompile(per_device, time.perf_counter() - started, refusal=refusal.group(0))
    seconds = time.perf_counter() - started
    stats = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    return StepCompile(
        per_device, seconds, peak_bytes(compiled), stats.argument_size_in_bytes,
        stats.output_size_in_bytes, stats.alias_size_in_bytes, stats.temp_size_in_bytes,
        cost.get("flops") or None,
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Planner:
    """What compiles a step for a batch per device: the setup and abstract state train.py
    would build for this config on this topology."""

    config: TrainingConfig
    topology: Topology
    setup: TrainingSetup
    state: Any
    image_shape: tuple[int, int, int]

    def train(self, per_device: int) -> StepCompile:
        batch = self._batch(per_device, lighting=bool(self.config.data.pca_lighting))
        return compile_step(self._steps()[0], self.state, batch)

    def eval(self, per_device: int) -> StepCompile:
        return compile_step(self._steps()[1], self.state, self._batch(per_device, mask=True))

    def _steps(self):
        return pmapped_steps(self.setup, self.topology.devices)

    def _batch(self, per_device: int, **extra) -> dict:
        return batch_spec(per_device, self.image_shape, len(self.topology.devices), **extra)


def planner(config: TrainingConfig, topology: Topology, num_classes: int, image_shape) -> Planner:
    """The setup and state as train.py builds them on `topology`: its dtype ("auto": what
    auto_dtype picks on the slice's devices), remat and micro-batches; PlanError where the
    global batch does not split over the devices."""
    devices = len(topology.devices)
    batch_size = config.optimizer.batch_size
    if batch_size % devices:
        raise PlanError(
            f"config.batch_size={batch_size} does not split over the {devices} devices of "
            f"{topology.name}: use a multiple of {devices}."
        )
    try:
        check_for_devices(config, devices, topology.platform)
    except ConfigError as error:
        raise PlanError(str(error)) from None
    dtype = plan_dtype(config.model.dtype, topology)
    setup, state = abstract_training(config, num_classes, image_shape, devices, dtype)
    return Planner(config, topology, setup, state, tuple(image_shape))


def data_shape(config: TrainingConfig, num_classes: int = 0) -> tuple[int, tuple]:
    """(classes, (H, W, 3) of the images the model sees) as train.py finds them
    (pipeline.model_input_shape), from the data set's metadata (nothing is downloaded or
    read); `num_classes` where given instead."""
    from vgg_jax.data import pipeline, sources

    data = config.data
    if num_classes and data.crop_size:
        return num_classes, (data.crop_size, data.crop_size, 3)
    try:
        features = sources.unprepared_builder(data.dataset, data.data_dir or None).info.features
        shape = tuple(features["image"].shape)
        classes = num_classes or features["label"].num_classes
    except Exception as error:  # a folder or a data set this machine cannot describe
        raise PlanError(
            f"Cannot read the metadata of data set {data.dataset!r} here ({error}); give "
            f"--num_classes (and config.crop_size for the image size)."
        ) from None
    # The split sizes are not needed for the shapes, and not known without the data.
    info = sources.DatasetInfo(data.dataset, classes, shape, 0, 0)
    try:
        return classes, pipeline.model_input_shape(data, info)
    except ValueError as error:
        raise PlanError(str(error)) from None


def plan_dtype(name: str, topology: Topology):
    return auto_dtype(topology.devices[0])[0] if name == "auto" else compute_dtype(name)


def largest_batch(
    plan: Planner, first: StepCompile, report: Callable[[StepCompile], None] = lambda c: None
) -> tuple[int | None, list[StepCompile]]:
    """The largest power-of-two batch per device whose train step fits the device's memory,
    found by compiling: from `first`, the memory's growth with the batch estimates it; that
    estimate and its double are compiled, then doubled or halved until one fits and its double
    does not. (None, compiles) where even the smallest multiple of the micro-batches fails."""
    memory = plan.topology.memory_per_device
    unit = plan.setup.grad_accum_steps
    compiles = {first.batch_per_device: first}

    def fits(size: int) -> bool:
        if size not in compiles:
            compiles[size] = plan.train(size)
            report(compiles[size])
        return compiles[size].fits(memory)

    size = _estimate(first, memory, unit)
    while len(compiles) < SEARCH_COMPILES + 1:
        if fits(size):
            if not fits(2 * size):
                return size, list(compiles.values())
            size *= 2
        elif size // 2 >= unit and size // 2 % unit == 0:
            size //= 2
        else:
            return None, list(compiles.values())
    return None, list(compiles.values())


def _estimate(first: StepCompile, memory: int, unit: int) -> int:
    """The largest power of two (a multiple of `unit`) whose step the first compile's
    temporaries, grown in proportion to the batch, predict to fit."""
    size = max(unit, 1 << (first.batch_per_device.bit_length() - 1))
    if first.refusal is not None:
        return max(unit, size // 2)
    fixed = first.arguments + first.outputs - first.aliased
    per_example = first.temporaries / first.batch_per_device
    while per_example and fixed + per_example * 2 * size <= memory:
        size *= 2
    while size > unit and fixed + per_example * size > memory:
        size //= 2
    return size


def compute_bound(plan: Planner, step: StepCompile) -> tuple[float, str, float]:
    """(FLOPs per step per device, where the count comes from, images per second per chip at
    the chip's peak bfloat16 rate): XLA's cost analysis, or the model's own count where the
    compiler gives none (a refused program)."""
    if step.flops:
        flops, source = step.flops, "xla"
    else:
        flops = training_flops_per_image(plan.setup.model, plan.image_shape) * step.batch_per_device
        source = "model"
    chip = plan.topology.chip
    per_device = chip.peak_flops_per_device * step.batch_per_device / flops
    return flops, source, per_device * chip.devices_per_chip


def make_plan(
    plan: Planner, search: bool = False, progress: Callable[[str], None] = lambda line: None
) -> dict:
    """The plan as one JSON-ready dict (its fields: docs/hardware.md, "Plan a TPU run"): the
    train and eval steps compiled for the config's batch, and with `search` the largest
    power-of-two batch that fits. `progress` hears of each compile as it starts and ends."""
    topology, chip, optimizer = plan.topology, plan.topology.chip, plan.config.optimizer
    memory = topology.memory_per_device
    devices, per_device = len(topology.devices), optimizer.batch_size // len(topology.devices)
    progress(f"Compiling the train step for {per_device} images per device on {topology.name}.")
    train = plan.train(per_device)
    progress(f"Compiled in {train.seconds:.0f} s; now the eval step.")
    evaluation = plan.eval(per_device)
    flops, source, images_per_chip = compute_bound(plan, train)
    report = {
        "topology": topology.name, "compiler_topology": topology.compiler_name,
        "platform": topology.platform,
        "chip": chip.name, "device_kind": topology.devices[0].device_kind,
        "chips": topology.chips, "devices": devices, "devices_per_chip": chip.devices_per_chip,
        "hosts": topology.hosts, "batch_split_over": "devices",
        "model": plan.config.model.model, "image_shape": list(plan.image_shape),
        "dtype": jnp.dtype(plan.setup.model.dtype).name, "remat": plan.setup.model.remat,
        "global_batch": optimizer.batch_size,
        "batch_per_host": optimizer.batch_size // topology.hosts,
        "batch_per_chip": per_device * chip.devices_per_chip, "batch_per_device": per_device,
        "micro_batches": plan.setup.grad_accum_steps,
        "micro_batch_per_device": per_device // plan.setup.grad_accum_steps,
        "memory_per_chip_bytes": memory * chip.devices_per_chip,
        "memory_source": topology.memory_source, "peak_source": chip.source,
        "train_step": step_fields(train, chip.devices_per_chip),
        "eval_step": step_fields(evaluation, chip.devices_per_chip),
        "fits": train.fits(memory) and evaluation.fits(memory),
        "headroom_bytes": None if train.total is None
        else (memory - max(train.total, evaluation.total or 0)) * chip.devices_per_chip,
        "flops_per_step_per_chip": flops * chip.devices_per_chip, "flops_source": source,
        "peak_bf16_flops_per_chip": chip.peak_bf16_flops,
        "compute_bound_images_per_second_per_chip": images_per_chip,
        "compute_bound_images_per_second": images_per_chip * topology.chips,
        "compile_seconds": train.seconds + evaluation.seconds,
        "largest_batch_per_chip": None, "largest_batch_search": None,
    }  # fmt: skip
    if search:
        started = time.perf_counter()

        def heard(compiled: StepCompile) -> None:
            verdict = "fits" if compiled.fits(memory) else "does not fit"
            progress(f"  {compiled.batch_per_device} per device: {verdict} "
                     f"({compiled.seconds:.0f} s).")  # fmt: skip

        progress("Searching for the largest power-of-two batch per device that fits.")
        largest, compiles = largest_batch(plan, train, heard)
        report["largest_batch_per_chip"] = (
            None if largest is None else largest * chip.devices_per_chip
        )
        report["largest_batch_search"] = {
            "seconds": time.perf_counter() - started,
            "compiles": [step_fields(c, chip.devices_per_chip) for c in compiles],
        }
    return report


def step_fields(step: StepCompile, devices_per_chip: int) -> dict:
    """One compile's figures, per chip (a chip of TPU v2 or v3 holds two devices' steps)."""

    def per_chip(value: int | None) -> int | None:
        return None if value is None else value * devices_per_chip

    return {
        "batch_per_chip": step.batch_per_device * devices_per_chip,
        "arguments_bytes": per_chip(step.arguments), "outputs_bytes": per_chip(step.outputs),
        "aliased_bytes": per_chip(step.aliased), "temporaries_bytes": per_chip(step.temporaries),
        "total_bytes": per_chip(step.total), "compiler_refusal": step.refusal,
        "compile_seconds": step.seconds,
    }  # fmt: skip
