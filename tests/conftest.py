"""Test setup, applied before JAX starts.

Four fake CPU devices, so pmap tests run anywhere. LLVM optimisation off: on CPU it makes up
most of the compile time of a model's init (the random initialisers), while the tests' small
models run fast either way; the numerics are IEEE either way.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
