"""NVIDIA GPUs described for XLA's GPU compiler, which compiles for a card it does not see from a
stream_executor.GpuTargetConfigProto (the format of OpenXLA's xla/tools/hlo_opt/gpu_specs/):
streaming multiprocessors, their limits, clock, memory and cache, from NVIDIA's datasheets and
the CUDA programming guide's table of compute capabilities.

Nothing here is measured on the card: cuDNN's workspaces and the autotuner's choices, made on
a real GPU, are not part of such a compile (docs/hardware.md says what that leaves out).
"""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class GpuTarget:
    device_kind: str  # as JAX names the card
    compute_capability: tuple[int, int]
    multiprocessors: int
    fp32_lanes_per_multiprocessor: int
    shared_memory_per_multiprocessor: int
    shared_memory_per_block_optin: int
    threads_per_multiprocessor: int
    clock_ghz: float
    memory_bandwidth: float  # bytes/s
    l2_cache_bytes: int
    memory_bytes: int

    def target_config(self) -> str:
        """The GpuTargetConfigProto, in protobuf's text format."""
        major, minor = self.compute_capability
        return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {self.shared_memory_per_multiprocessor}
  threads_per_core_limit: {self.threads_per_multiprocessor}
  core_count: {self.multiprocessors}
  fpus_per_core: {self.fp32_lanes_per_multiprocessor}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {int(self.memory_bandwidth)}
  l2_cache_size: {self.l2_cache_bytes}
  clock_rate_ghz: {self.clock_ghz}
  device_memory_size: {self.memory_bytes}
  shared_memory_per_block_optin: {self.shared_memory_per_block_optin}
  cuda_compute_capability {{
    major: {major}
    minor: {minor}
  }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{
  major: 9
  minor: 8
}}
device_description_str: "{self.device_kind}"
"""


KIB, MIB = 2**10, 2**20
# By the name --topology takes ("h100", or "h100x8" for eight on one host).
GPU_TARGETS = {
    "t4": GpuTarget("Tesla T4", (7, 5), 40, 64, 64 * KIB, 64 * KIB, 1024, 1.59, 320e9,
                    4 * MIB, 15360 * MIB),
    "l4": GpuTarget("NVIDIA L4", (8, 9), 58, 128, 100 * KIB, 99 * KIB, 1536, 2.04, 300e9,
                    48 * MIB, 23034 * MIB),
    "a100-40gb": GpuTarget("NVIDIA A100-SXM4-40GB", (8, 0), 108, 64, 164 * KIB, 163 * KIB, 2048,
                           1.41, 1555e9, 40 * MIB, 40536 * MIB),
    "a100-80gb": GpuTarget("NVIDIA A100-SXM4-80GB", (8, 0), 108, 64, 164 * KIB, 163 * KIB, 2048,
                           1.41, 2039e9, 40 * MIB, 81920 * MIB),
    "h100": GpuTarget("NVIDIA H100 80GB HBM3", (9, 0), 132, 128, 228 * KIB, 227 * KIB, 2048,
                      1.98, 3352e9, 50 * MIB, 81559 * MIB),
}  # fmt: skip
