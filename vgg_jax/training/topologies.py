"""TPU slices and GPUs described without them: compile-only devices, which jax.jit and jax.pmap
compile for but cannot run on. libtpu (the `tpu` extra) makes them for any TPU topology, JAX's
CUDA plugin (the `gpu-plan` extra) for the GPUs of vgg_jax.training.gpu_targets.

A slice is named as Cloud TPU names it (v5e-16, v5litepod-16, v4-8, v5p-8, v6e-8, v3-8: the
number counts chips for v5e and v6e, TensorCores for the others) or in libtpu's own form,
GENERATION:SHAPE (v5e:4x4, v4:2x2x2). The devices are those JAX sees on the slice: one per
chip, except TPU v2 and v3, which show one per TensorCore (two a chip); v4 and v5p run their
two TensorCores as one device (megacore), as JAX does on them. GPUs are named as in
gpu_targets ("h100"), with a count for several on one host ("h100x8").
"""

from __future__ import annotations

import dataclasses
import math
import re

from vgg_jax.environment import importable
from vgg_jax.training.accelerators import GIB, Accelerator, accelerator
from vgg_jax.training.gpu_targets import GPU_TARGETS

TPU_EXTRA = 'pip install "vgg_jax[tpu]" (in a checkout: pip install -e ".[tpu]")'
GPU_EXTRA = 'pip install "vgg_jax[gpu-plan]" (in a checkout: pip install -e ".[gpu-plan]")'
GPU_NAME = re.compile(rf"^({'|'.join(map(re.escape, GPU_TARGETS))})(?:x(\d+))?$")
# What JAX's allocator takes of a GPU's memory unless XLA_PYTHON_CLIENT_MEM_FRACTION says
# otherwise (a TPU program may use all of HBM: its compiler refuses one that does not fit).
JAX_GPU_MEMORY_FRACTION = 0.75
EXAMPLES = "v5e-16, v5litepod-16, v4-8, v5p-8, v6e-8, v3-8, or libtpu's v5e:4x4, v4:2x2x2"
CLOUD_NAME = re.compile(r"^(v2|v3|v4|v5p|v5e|v5litepod|v6e)-(\d+)$")
LIBTPU_NAME = re.compile(r"^(v2|v3|v4|v5p|v5e|v6e):(\d+(?:x\d+){1,2})$")
# Generations whose Cloud names count TensorCores (two a chip) and whose slices are 3-D.
TENSORCORE_COUNTED = ("v2", "v3", "v4", "v5p")
THREE_D = ("v4", "v5p")
MEGACORE = ("v4",)  # libtpu's default for v4 is one device per TensorCore; JAX on v4 runs one
# Hosts hold a 2x2 block of chips, except single-host v5e and v6e slices of 1 and 8 chips.
SINGLE_HOST_BOUNDS = {1: (1, 1, 1), 8: (2, 4, 1)}


class TopologyError(ValueError):
    """A topology that cannot be described here; the message says why and what works."""


@dataclasses.dataclass(frozen=True)
class Topology:
    name: str  # as asked
    compiler_name: str  # libtpu's topology, or the GPU and its count
    devices: tuple  # compile-only
    chip: Accelerator
    memory_per_device: int  # what a step may hold on one device
    memory_source: str

    @property
    def platform(self) -> str:
        return self.devices[0].platform

    @property
    def chips(self) -> int:
        return len(self.devices) // self.chip.devices_per_chip

    @property
    def hosts(self) -> int:
        return len({device.process_index for device in self.devices})


def describe(name: str) -> Topology:
    """The compile-only devices of the TPU slice or GPUs `name`; TopologyError for a name that
    names neither, or without the library that compiles for it."""
    gpus = GPU_NAME.match(name)
    return (
        gpu_topology(name, gpus.group(1), int(gpus.group(2) or 1)) if gpus else tpu_topology(name)
    )


def gpu_topology(name: str, gpu: str, count: int) -> Topology:
    target = GPU_TARGETS[gpu]
    if not importable("jax_plugins.xla_cuda12"):
        raise TopologyError(f"Planning for GPUs needs JAX's CUDA plugin: {GPU_EXTRA}.")
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(
        platform="cuda", topology_name="", topology=f"1x1x{count}",
        target_config=target.target_config(),
    ).devices  # fmt: skip
    return Topology(
        name, f"{target.device_kind} x{count}", tuple(devices), accelerator(target.device_kind),
        int(target.memory_bytes * JAX_GPU_MEMORY_FRACTION),
        f"{JAX_GPU_MEMORY_FRACTION:.0%} of the {target.memory_bytes / GIB:.1f} GiB the card "
        f"reports, JAX's default XLA_PYTHON_CLIENT_MEM_FRACTION",
    )  # fmt: skip


def tpu_topology(name: str) -> Topology:
    """The compile-only devices of the TPU slice `name`; TopologyError for a name libtpu does
    not know, or without libtpu."""
    libtpu_name, options = libtpu_form(name)
    if not importable("libtpu"):
        raise TopologyError(f"Planning for TPUs needs libtpu: {TPU_EXTRA}.")
    from jax.experimental import topologies

    try:
        devices = topologies.get_topology_desc(
            platform="tpu", topology_name=libtpu_name, **options
        ).devices
    except Exception as error:  # libtpu's refusal, a JaxRuntimeError
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise TopologyError(
            f"libtpu does not know the topology {name!r} ({libtpu_name}): {text}. Examples "
            f"that work: {EXAMPLES}."
        ) from None
    chip = accelerator(devices[0].device_kind)
    if chip is None:
        raise TopologyError(f"No datasheet row for {devices[0].device_kind!r} (topology {name!r}).")
    return Topology(
        name, libtpu_name, tuple(devices), chip, chip.memory_bytes // chip.devices_per_chip,
        f"{chip.memory_bytes / GIB:.0f} GiB of HBM a chip: {chip.source}",
    )  # fmt: skip


def libtpu_form(name: str) -> tuple[str, dict]:
    """(libtpu's topology name, its options) for a Cloud or libtpu name."""
    libtpu = LIBTPU_NAME.match(name)
    cloud = CLOUD_NAME.match(name)
    if libtpu:
        generation, shape = libtpu.groups()
        chips = math.prod(int(size) for size in shape.split("x"))
    elif cloud:
        generation, count = cloud.group(1).replace("v5litepod", "v5e"), int(cloud.group(2))
        chips = count // 2 if generation in TENSORCORE_COUNTED else count
        if chips < 1 or chips & (chips - 1) or (generation in TENSORCORE_COUNTED and count % 2):
            raise TopologyError(
                f"No TPU slice is called {name!r}: the number after the dash is a power of two "
                f"(of chips for v5e and v6e, of TensorCores, two a chip, for the others), e.g. "
                f"{EXAMPLES}."
            )
        shape = "x".join(map(str, slice_shape(chips, 3 if generation in THREE_D else 2)))
    else:
        raise TopologyError(
            f"Unknown topology {name!r}: give a Cloud TPU name, GENERATION-COUNT, or "
            f"libtpu's GENERATION:SHAPE, e.g. {EXAMPLES}; or a GPU, {', '.join(GPU_TARGETS)}, "
            f"with xN for N of them (h100x8)."
        )
    options = {"chip_config_name": "megacore"} if generation in MEGACORE else {}
    if generation in ("v5e", "v6e") and chips in SINGLE_HOST_BOUNDS:
        options["chips_per_host_bounds"] = SINGLE_HOST_BOUNDS[chips]
    return f"{generation}:{shape}", options


def slice_shape(chips: int, dimensions: int) -> tuple[int, ...]:
    """Cloud TPU's shape for a slice of `chips` (a power of two): 2-D slices are square or
    twice as long as wide (v5e-8: 2x4); 3-D ones grow from 2x2x1 one axis at a time, the last
    first (v4-16: 2x2x2, v4-32: 2x2x4, v4-64: 2x4x4)."""
    if dimensions == 2:
        width = 2 ** (int(math.log2(chips)) // 2)
        return (width, chips // width)
    shape = [min(chips, 2), min(max(chips // 2, 1), 2), 1]
    while math.prod(shape) < chips:
        smallest = min(shape)
        last = max(i for i, size in enumerate(shape) if size == smallest)
        shape[last] *= 2
    return tuple(shape)

