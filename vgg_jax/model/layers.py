"""VGG's layers beyond flax.linen's: LRN, FC6 as a sliding window, and the activation and
pooling every VGG block applies (one place to change them for speed)."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

# Krizhevsky et al. (2012), the constants the paper's A-LRN uses.
LRN_K = 2.0
LRN_SIZE = 5
LRN_ALPHA = 1e-4
LRN_BETA = 0.75


def local_response_norm(
    x: jax.Array,
    k: float = LRN_K,
    size: int = LRN_SIZE,
    alpha: float = LRN_ALPHA,
    beta: float = LRN_BETA,
) -> jax.Array:
    """Local response normalisation across channels (last axis), Krizhevsky's formula.

    b_c = a_c / (k + alpha * sum_{c' in the `size` channels around c} a_{c'}^2) ** beta

    alpha is not divided by `size` (Caffe and torch.nn.LocalResponseNorm divide it; the
    equivalent torch layer is LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2)). The window
    is cut at the first and last channel. Computed in float32 whatever the input dtype, since
    the power of a sum of squares loses too much in bfloat16.
    """
    if size < 1:
        raise ValueError(f"LRN size must be a positive number of channels, got {size}.")
    squares = jnp.square(x.astype(jnp.float32))
    half = size // 2
    window_sums = jax.lax.reduce_window(
        squares,
        0.0,
        jax.lax.add,
        window_dimensions=(1,) * (x.ndim - 1) + (size,),
        window_strides=(1,) * x.ndim,
        padding=((0, 0),) * (x.ndim - 1) + ((half, size - 1 - half),),
    )
    return (x.astype(jnp.float32) / (k + alpha * window_sums) ** beta).astype(x.dtype)


def relu(x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """The paper's max-pooling: 2x2 windows, stride 2; an odd last row or column is dropped.
    On CPU computed as a reshape: XLA:CPU's gradient of a reduce-window (a reduce-window over
    indices and a scatter) takes twice as long (docs/performance.md)."""
    return jax.lax.platform_dependent(x, cpu=_max_pool_2x2_by_reshape, default=_max_pool_2x2)


def _max_pool_2x2(x: jax.Array) -> jax.Array:
    return nn.max_pool(x, (2, 2), strides=(2, 2))


def _windows(x: jax.Array) -> jax.Array:
    """(N, H/2, 2, W/2, 2, C): each 2x2 window's rows on axis 2 and columns on axis 4."""
    n, h, w, c = x.shape
    return x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)


def _corners(x: jax.Array) -> tuple[jax.Array, ...]:
    """Each 2x2 window's four values, in row-major order, as four (N, H/2, W/2, C) arrays."""
    windows = _windows(x)
    return tuple(windows[:, :, row, :, column] for row in (0, 1) for column in (0, 1))


@jax.custom_jvp
def _max_pool_2x2_by_reshape(x: jax.Array) -> jax.Array:
    return _windows(x).max(axis=(2, 4))


@_max_pool_2x2_by_reshape.defjvp
def _max_pool_2x2_by_reshape_jvp(primals, tangents):
    # The first maximum in row-major order takes the tangent, as XLA's select-and-scatter
    # does: the gradient equals nn.max_pool's bit for bit, ties included.
    (x,), (tangent,) = primals, tangents
    pooled = _max_pool_2x2_by_reshape(x)
    (x00, x01, x10, _), (t00, t01, t10, t11) = _corners(x), _corners(tangent)
    chosen = jnp.where(x10 == pooled, t10, t11)
    chosen = jnp.where(x01 == pooled, t01, chosen)
    return pooled, jnp.where(x00 == pooled, t00, chosen)


def avg_pool_2x2(x: jax.Array) -> jax.Array:
    """Average pooling on the same windows: Gatys et al.'s choice for image synthesis, where
    it gives smoother gradients; it has no parameters, so the same weights serve both."""
    return nn.avg_pool(x, (2, 2), strides=(2, 2))


def l2_pool_hann(x: jax.Array, epsilon: float = 1e-12) -> jax.Array:
    """DISTS's L2 pooling (Ding et al., 2020, after Henaff and Simoncelli, 2016): the square
    root of a Hann-weighted mean of squares, sqrt(g * x^2 + epsilon), with g the 3x3 window
    numpy.hanning(5)[1:-1] gives, normalised (outer([1, 2, 1], [1, 2, 1]) / 16), stride 2 and
    one pixel of zero padding, so each side halves rounding up (ceil(H / 2)) and no map is
    ever emptied. Nine weighted strided slices, summed as DISTS_pt's depthwise convolution
    sums them. Measured on the 2-core CPU (VGG16 DISTS forward + backward, 4 pairs of
    256x256): XLA's depthwise convolution took 10.5 s, these slices 6.2 s, with the same
    gradients; the separable form (two 3-tap passes) gave gradients 10-100x further from
    float64 (5e-4 to 3e-3 against 3e-5 to 5e-5, tests/test_dists.py's photo pairs)."""
    squares = jnp.square(x)
    out_h, out_w = (x.shape[1] + 1) // 2, (x.shape[2] + 1) // 2
    padded = jnp.pad(squares, ((0, 0), (1, 1), (1, 1), (0, 0)))
    taps = (0.25, 0.5, 0.25)
    pooled = 0.0
    for i, row in enumerate(taps):
        for j, column in enumerate(taps):
            window = padded[:, i : i + 2 * out_h - 1 : 2, j : j + 2 * out_w - 1 : 2]
            pooled = pooled + (row * column) * window
    return jnp.sqrt(pooled + epsilon)


# VGG(pooling=...): max_pool_2x2, avg_pool_2x2 or l2_pool_hann
POOLINGS = ("max", "avg", "l2")


def dense_shaped_init(init: Callable) -> Callable:
    """Initialises a (h, w, c, out) FC6 kernel exactly as the (h*w*c, out) dense layer it is.

    Fan-based schemes (Glorot) would otherwise count the 7x7 window in the fan-out too.
    """

    def initialize(key, shape, dtype=jnp.float32):
        fan_in = 1
        for size in shape[:-1]:
            fan_in *= size
        return init(key, (fan_in, shape[-1]), dtype).reshape(shape)

    return initialize


class SlidingFullyConnected(nn.Module):
    """FC6: a fully connected layer over the pool5 map, stored as an (h, w, c, out) kernel.

    The classic head flattens the map (H, W, C order, NHWC) and multiplies by the kernel seen
    as a matrix; it needs the map to be exactly the size the kernel was built for. The dense
    head slides the same kernel over a larger map as a VALID convolution (the paper's dense
    evaluation). At init the kernel takes the spatial size of the map it is first given,
    the way nn.Dense takes its input width.
    """

    features: int
    kernel_init: Callable = nn.initializers.normal(0.01)
    bias_init: Callable = nn.initializers.zeros_init()
    dtype: Any = None
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, dense: bool) -> jax.Array:
        if self.has_variable("params", "kernel"):
            window = self.get_variable("params", "kernel").shape[:2]
        else:
            window = x.shape[1:3]
        kernel = self.param(
            "kernel",
            self.kernel_init,
            (*window, x.shape[-1], self.features),
            self.param_dtype,
        )
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        if dense:
            y = jax.lax.conv_general_dilated(
                x, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            y = x.reshape(x.shape[0], -1) @ kernel.reshape(-1, self.features)
        return y + bias
