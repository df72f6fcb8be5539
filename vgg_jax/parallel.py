"""Data parallelism in one vocabulary: the batch is split over this process's devices along one
axis, AXIS_NAME, and the variables are copied onto every device.

Training runs its steps under jax.pmap (the design: per-device code averaged with lax.pmean
on AXIS_NAME; since JAX 0.10 pmap itself runs on jit and shard_map), so its arrays carry a
leading device axis: `split_over_devices` and `replicate`. Evaluation runs under jax.jit over
a Mesh of the same devices and axis: `put_batch` and `put_replicated`. Both read the devices
from `local_devices`.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS_NAME = "batch"  # the one data-parallel axis: pmap's axis name and the mesh's


def local_devices() -> list:
    return jax.local_devices()


def local_mesh() -> Mesh:
    """This process's devices as a one-axis mesh named AXIS_NAME."""
    return Mesh(local_devices(), (AXIS_NAME,))


# ---------------------------------------------------------------- pmap (training)


def split_over_devices(batch: dict) -> dict:
    """Host arrays reshaped to (local devices, per-device batch, ...), as pmap takes them."""
    devices = jax.local_device_count()
    return {key: value.reshape(devices, -1, *value.shape[1:]) for key, value in batch.items()}


def replicate(tree: Any, devices=None) -> Any:
    """`tree` copied onto every local device (or onto `devices`), for pmapped functions."""
    return flax.jax_utils.replicate(tree, devices)


def prefetch_to_devices(batches, size: int = 2):
    """Batches from split_over_devices, `size` of them put on the devices ahead of use."""
    return flax.jax_utils.prefetch_to_device(batches, size)


def unreplicate(tree: Any) -> Any:
    """One host (NumPy) copy of a replicated pytree (a state, metrics), on every process of a
    multi-host run."""
    return jax.device_get(flax.jax_utils.unreplicate(tree))


# ---------------------------------------------------------------- jit over a mesh (evaluation)


def put_batch(array: Any, mesh: Mesh) -> jax.Array:
    """`array` split along its first axis over the mesh's devices."""
    return jax.device_put(array, NamedSharding(mesh, PartitionSpec(AXIS_NAME)))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """`tree` copied onto every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))
