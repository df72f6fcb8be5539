"""Alternative implementations of VGG's building blocks, for speed experiments.

`python -m benchmarks.throughput --variants NAME[,NAME...]` measures the library's own train step
once more for each variant, in a fresh process with the variant's replacements patched into
vgg_jax (and its XLA flags set), so an experiment needs no option in the library itself.
Whatever wins moves into vgg_jax.model.layers; docs/performance.md records the figures of both.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp


def reshape_max_pool(x: jax.Array) -> jax.Array:
    """2x2 stride-2 max-pooling as a reshape and a max over the two window axes.

    XLA differentiates reduce_window(max) into select-and-scatter; a max over reshaped axes
    differentiates into compares and selects, plain elementwise work that fuses.
    """
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


@jax.custom_vjp
def relu_output_mask(x: jax.Array) -> jax.Array:
    """ReLU whose gradient reads its output (kept anyway for the next layer) rather than its
    input, so the pre-activation need not be kept and conv+bias+ReLU can fuse."""
    return jnp.maximum(x, 0)


def _relu_forward(x):
    y = jnp.maximum(x, 0)
    return y, y


def _relu_backward(y, g):
    return (jnp.where(y > 0, g, jnp.zeros_like(g)),)


relu_output_mask.defvjp(_relu_forward, _relu_backward)


@dataclasses.dataclass(frozen=True)
class Variant:
    patches: dict[str, Callable] = dataclasses.field(default_factory=dict)
    xla_flags: str = ""


VARIANTS = {
    "reshape_pool": Variant({"vgg_jax.model.vgg.max_pool_2x2": reshape_max_pool}),
    "relu_output_mask": Variant({"vgg_jax.model.vgg.relu": relu_output_mask}),
    "reshape_pool+relu_output_mask": Variant(
        {
            "vgg_jax.model.vgg.max_pool_2x2": reshape_max_pool,
            "vgg_jax.model.vgg.relu": relu_output_mask,
        }
    ),
    "no_triton_gemm": Variant(xla_flags="--xla_gpu_enable_triton_gemm=false"),
    "autotune_level_2": Variant(xla_flags="--xla_gpu_autotune_level=2"),
}
