"""Compute dtypes: the ones a config can name, and what "auto" picks on a device."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

# Compute dtypes a config can name, besides "auto" (auto_dtype: the device's fastest).
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
# NVIDIA GPUs have bfloat16 tensor cores from Ampere (compute capability 8.0) on, float16
# ones from Volta (7.0: V100, T4); older ones run half precision no faster than float32.
BFLOAT16_CAPABILITY = (8, 0)
FLOAT16_CAPABILITY = (7, 0)


def auto_dtype(device=None) -> tuple[Any, str]:
    """The compute dtype "auto" picks on `device` (JAX's first device by default), and why:
    bfloat16 on TPUs and on GPUs with bfloat16 tensor cores, float16 on GPUs with float16
    tensor cores only (trained with dynamic loss scaling), float32 elsewhere."""
    device = device if device is not None else jax.devices()[0]
    kind = device.device_kind
    if device.platform == "tpu":
        return jnp.bfloat16, f"{kind}: bfloat16 is the TPU's native matrix type"
    if device.platform not in ("gpu", "cuda", "rocm"):
        return jnp.float32, f"{kind} ({device.platform}): no faster half precision than float32"
    capability = str(getattr(device, "compute_capability", "") or "")
    try:
        version = tuple(int(part) for part in capability.split("."))
    except ValueError:  # not an NVIDIA capability (AMD reports gfx names)
        return jnp.bfloat16, f"{kind} ({capability or 'no compute capability'}): bfloat16"
    if version >= BFLOAT16_CAPABILITY:
        return jnp.bfloat16, f"{kind}, compute capability {capability}: bfloat16 tensor cores"
    if version >= FLOAT16_CAPABILITY:
        return jnp.float16, (
            f"{kind}, compute capability {capability}: float16 tensor cores but no bfloat16 "
            f"ones (those need 8.0), so float16 with dynamic loss scaling"
        )
    return jnp.float32, f"{kind}, compute capability {capability}: no tensor cores"


def compute_dtype(name: str):
    """The dtype a config's `dtype` names ("auto", "float32", "bfloat16", "float16");
    parameters are float32 whatever it is."""
    if name == "auto":
        return auto_dtype()[0]
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; choose auto, {', '.join(COMPUTE_DTYPES)}.")
    return COMPUTE_DTYPES[name]


def dtype_choice(name: str) -> str:
    """One line for the log: the dtype the config's `dtype` computes in, and why."""
    dtype = jnp.dtype(compute_dtype(name)).name
    why = auto_dtype()[1] if name == "auto" else f"config.dtype={name!r}"
    scaled = ", with dynamic loss scaling" if dtype == "float16" else ""
    return f"Computing in {dtype}{scaled}: {why}."
