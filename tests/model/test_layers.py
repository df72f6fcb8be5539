"""LRN against the formula evaluated directly in NumPy, and its place in A-LRN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import apply, init, run_python

import vgg_jax


def lrn_numpy(a, k=2.0, n=5, alpha=1e-4, beta=0.75):
    """b_c = a_c / (k + alpha * sum over the n channels around c of a^2) ** beta."""
    a = np.asarray(a, np.float64)
    channels = a.shape[-1]
    b = np.empty_like(a)
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels - 1, c + n // 2)
        window = np.sum(a[..., lo : hi + 1] ** 2, axis=-1)
        b[..., c] = a[..., c] / (k + alpha * window) ** beta
    return b


@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: squares large enough for alpha to matter
def test_lrn_matches_krizhevsky_formula(scale):
    a = scale * np.random.default_rng(0).normal(size=(2, 5, 4, 11)).astype(np.float32)
    np.testing.assert_allclose(vgg_jax.local_response_norm(a), lrn_numpy(a), rtol=1e-5)


TORCH_LRN = """
import sys, numpy as np, torch
a = np.load(sys.argv[1])
lrn = torch.nn.LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)  # alpha times n = 5
out = lrn(torch.from_numpy(a).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
np.save(sys.argv[2], out)
"""


def test_lrn_equals_torchs_local_response_norm_with_alpha_times_5(tmp_path):
    """torch.nn.LocalResponseNorm itself (NCHW, its alpha divided by its size), in its own
    process, on activations large enough for the normalisation to matter."""
    a = 30 * np.random.default_rng(2).normal(size=(2, 3, 4, 9)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    completed = run_python("-c", TORCH_LRN, tmp_path / "a.npy", tmp_path / "b.npy")
    assert completed.returncode == 0, completed.stderr[-3000:]
    torch_out = np.load(tmp_path / "b.npy")
    np.testing.assert_allclose(vgg_jax.local_response_norm(a), torch_out, rtol=1e-5, atol=1e-6)
    assert np.abs(torch_out - a / 2**0.75).max() > 0.1  # the window's sum counts


def test_lrn_with_other_constants():
    a = 10 * np.random.default_rng(1).normal(size=(3, 2, 2, 8)).astype(np.float32)
    got = vgg_jax.local_response_norm(a, k=1.0, size=3, alpha=1e-3, beta=0.5)
    np.testing.assert_allclose(got, lrn_numpy(a, k=1.0, n=3, alpha=1e-3, beta=0.5), rtol=1e-5)


def test_lrn_keeps_bfloat16():
    a = jnp.ones((1, 2, 2, 6), jnp.bfloat16)
    assert vgg_jax.local_response_norm(a).dtype == jnp.bfloat16


def test_a_lrn_normalises_conv1_1_before_pool1():
    model = vgg_jax.vgg11_lrn(width=0.25, fc_features=16, num_classes=3)
    images = 50 * jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    variables = init(model, images)
    layers = ["conv1_1", "lrn1", "pool1"]
    feats = apply(model, variables, images, layers=layers, method="extract_features")
    np.testing.assert_allclose(feats["lrn1"], lrn_numpy(feats["conv1_1"]), rtol=1e-5, atol=1e-7)
    pooled = np.asarray(feats["lrn1"]).reshape(2, 16, 2, 16, 2, 16).max(axis=(2, 4))
    np.testing.assert_array_equal(feats["pool1"], pooled)
    # LRN really changes the activations at these magnitudes, so the check above has teeth.
    assert not np.allclose(feats["lrn1"], feats["conv1_1"], rtol=1e-3)


# ----------------------------------------------------- max pooling: a reshape on CPU


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_max_pooling_and_its_gradient_equal_reduce_windows_ties_and_odd_sides_included(dtype):
    """On CPU max_pool_2x2 is a reshape whose gradient goes to each window's first maximum in
    row-major order: what XLA's select-and-scatter gives flax's nn.max_pool, bit for bit."""
    from flax import linen as nn

    from vgg_jax.model.layers import max_pool_2x2

    keys = jax.random.split(jax.random.key(0), 2)
    relu_out = jax.nn.relu(jax.random.normal(keys[0], (2, 9, 11, 5)))  # zeros tie in windows
    rounded = jnp.round(2 * jax.random.uniform(keys[1], (2, 9, 11, 5)))  # positive ties too
    reference = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))  # noqa: E731
    for x in (relu_out.astype(dtype), rounded.astype(dtype)):
        weights = jnp.cos(jnp.arange(2 * 4 * 5 * 5, dtype=jnp.float32)).reshape(2, 4, 5, 5)
        for pool in (max_pool_2x2, reference):
            assert pool(x).shape == (2, 4, 5, 5) and pool(x).dtype == dtype
        np.testing.assert_array_equal(max_pool_2x2(x), reference(x))
        gradient = lambda pool: jax.jit(jax.grad(  # noqa: E731
            lambda x: jnp.sum(pool(x).astype(jnp.float32) * weights)))(x)  # fmt: skip
        got, want = gradient(max_pool_2x2), gradient(reference)
        assert np.count_nonzero(np.asarray(want, np.float32)) == 2 * 4 * 5 * 5
        np.testing.assert_array_equal(got, want)
    # Forward-mode differentiation works as well (a custom JVP, not a custom VJP).
    _, tangent = jax.jvp(max_pool_2x2, (rounded,), (jnp.ones_like(rounded),))
    np.testing.assert_array_equal(tangent, np.ones((2, 4, 5, 5)))


def test_max_pooling_stays_a_reduce_window_off_the_cpu():
    from vgg_jax.model.layers import max_pool_2x2

    x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
    for platform, reduce_window in (("tpu", True), ("cuda", True), ("cpu", False)):
        lowered = jax.jit(max_pool_2x2).trace(x).lower(lowering_platforms=(platform,))
        assert ("reduce_window" in lowered.as_text()) is reduce_window, platform
