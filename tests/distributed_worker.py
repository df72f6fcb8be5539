"""One process of a two-process CPU run (gloo on 127.0.0.1), for test_steps.py.

Each process takes its half of every global batch, runs the library's pmapped train step
on its two devices, and process 0 writes the final parameters to an .npz file.
Usage: python distributed_worker.py PROCESS_ID PORT OUT.npz
"""

import os
import sys

# As in conftest.py: LLVM optimisation off keeps compilation short.
os.environ["XLA_FLAGS"] = (
    "--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0"
)
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")
process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import helpers  # noqa: E402
import numpy as np  # noqa: E402

from vgg_jax.parallel import replicate, unreplicate  # noqa: E402
from vgg_jax.training import steps  # noqa: E402

assert jax.device_count() == 4 and jax.local_device_count() == 2
setup, state = helpers.small_training_setup(batch_norm=True)
p_train_step, _ = steps.pmapped_steps(setup)
replicated = replicate(state)
for images, labels in helpers.global_batches():
    half = len(labels) // 2
    mine = slice(process_id * half, (process_id + 1) * half)
    batch = {
        "image": images[mine].reshape(2, -1, *images.shape[1:]),
        "label": labels[mine].reshape(2, -1),
    }
    replicated, _ = p_train_step(replicated, batch)
final = unreplicate(replicated)
if process_id == 0:
    np.savez(
        out, **helpers.flat_arrays({"params": final.params, "stats": final.batch_stats})
    )
jax.distributed.shutdown()
