"""The accelerators vgg_jax trains on, from their vendors' datasheets: dense bfloat16 peak per
chip (float16 on the T4), a TPU's memory, and how many JAX devices a chip shows. The one table
that the train log's model FLOP utilisation and the plan (vgg_jax.training.planning) read.
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Accelerator:
    name: str  # as its vendor calls it
    device_kinds: tuple[str, ...]  # lower-case parts of jax's device_kind that name it
    memory_bytes: int | None  # HBM per chip (TPUs; a GPU's is what it reports: gpu_targets)
    peak_bf16_flops: float  # dense, per chip
    devices_per_chip: int  # JAX devices a chip shows (TPU v2 and v3: one per TensorCore)
    source: str

    @property
    def peak_flops_per_device(self) -> float:
        return self.peak_bf16_flops / self.devices_per_chip


def _tpu(version: str, kinds, memory_gib: float, tflops: float, devices_per_chip: int = 1):
    return Accelerator(
        f"TPU {version}", kinds, int(memory_gib * GIB), tflops * 1e12, devices_per_chip,
        f"https://cloud.google.com/tpu/docs/{version}",
    )  # fmt: skip


# Matched in order against jax's device_kind (lower case): "tpu v5" would also match v5e's
# "TPU v5 lite", so v5e comes before v5p.
ACCELERATORS = (
    _tpu("v2", ("tpu v2",), 16, 45, devices_per_chip=2),
    _tpu("v3", ("tpu v3",), 32, 123, devices_per_chip=2),
    _tpu("v4", ("tpu v4",), 32, 275),
    _tpu("v5e", ("tpu v5 lite", "tpu v5e"), 16, 197),
    _tpu("v5p", ("tpu v5",), 95, 459),
    _tpu("v6e", ("tpu v6 lite", "tpu v6e"), 32, 918),
    Accelerator(
        "H100 PCIe",
        ("h100 pcie",),
        None,
        756e12,
        1,
        "https://www.nvidia.com/en-us/data-center/h100/",
    ),  # fmt: skip
    Accelerator(
        "H100 SXM", ("h100",), None, 989e12, 1, "https://www.nvidia.com/en-us/data-center/h100/"
    ),
    Accelerator(
        "H200", ("h200",), None, 989e12, 1, "https://www.nvidia.com/en-us/data-center/h200/"
    ),
    Accelerator(
        "A100", ("a100",), None, 312e12, 1, "https://www.nvidia.com/en-us/data-center/a100/"
    ),
    Accelerator(  # 242 TFLOP/s with sparsity, half of it dense
        "L4", ("nvidia l4",), None, 121e12, 1, "https://www.nvidia.com/en-us/data-center/l4/"
    ),
    Accelerator(  # float16: the T4 has no bfloat16 tensor cores
        "T4", ("t4",), None, 65e12, 1, "https://www.nvidia.com/en-us/data-center/tesla-t4/"
    ),
)


def accelerator(device_kind: str) -> Accelerator | None:
    """The table's row for jax's device_kind; None where it has none (CPUs)."""
    kind = device_kind.lower()
    return next((row for row in ACCELERATORS if any(k in kind for k in row.device_kinds)), None)


def peak_bf16_flops(device_kind: str) -> float | None:
    """The datasheet's dense bf16 FLOP/s of one JAX device of this kind; None if unknown."""
    row = accelerator(device_kind)
    return None if row is None else row.peak_flops_per_device
