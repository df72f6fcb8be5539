"""DISTS (Ding, Ma, Wang and Simoncelli, "Image Quality Assessment: Unifying Structure and
Texture Similarity", TPAMI 2020) on VGG16, equal to the `DISTS-pytorch` package (DISTS_pt.py):

    dists, variables = vgg_jax.load_dists()                   # torchvision's VGG16 + alpha/beta
    distances = dists.apply(variables, images0, images1)      # NHWC in [0, 1] -> (N,)
    loss = dists.apply(variables, images0, images1, reduction="mean")

VGG16's max poolings become L2 poolings (vgg_jax.model.layers.l2_pool_hann); the image itself
and the ReLU outputs conv1_2, conv2_2, conv3_3, conv4_3 and conv5_3 are the six stages. Per
stage and channel, over all positions: a structure term from the two means and a texture term
from the variances and covariance, each weighted by the learned alpha and beta (normalised to
sum to one together); DISTS = 1 - the weighted sum.

DISTS's learned alpha and beta (`weights.pt`) come from dingkeyan93/DISTS, Copyright (c) 2020
Keyan Ding; MIT License: the copyright notice and its permission notice are to be included in
all copies or substantial portions (https://github.com/dingkeyan93/DISTS/blob/master/LICENSE).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from vgg_jax.data.normalization import MEAN_RGB, STDDEV_RGB
from vgg_jax.model.vgg import VGG
from vgg_jax.perceptual import (
    LinearWeights,
    check_image_pair,
    check_reduction,
    load_backbone,
    metric_weights_file,
    read_torch_arrays,
    reduce_batch,
)
from vgg_jax.weights.convert import ConversionError

# The ReLU outputs DISTS compares after the image itself, in vgg_jax's layer names.
DISTS_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
DISTS_CHANNELS = (3, 64, 128, 256, 512, 512)  # the image, then each layer
STRUCTURE_C1 = 1e-6  # DISTS_pt.py's c1 and c2, which keep the ratios finite on flat maps
TEXTURE_C2 = 1e-6
DISTS_RANGE_HINT = "for uint8 pass x / 255; for images in [-1, 1], (x + 1) / 2"

DISTS_ALPHA_BETA = LinearWeights(
    name="dists.alpha_beta",
    url="https://github.com/dingkeyan93/DISTS/raw/master/DISTS_pytorch/weights.pt",
    file_hash="f5e65c96230b7f6ca995691647d482237e4cab8a50c5c4a5784f219ef0748218",
    hash_algorithm="sha256",
    file_name="dists_alpha_beta.pt",
    package="DISTS_pytorch",
    package_path="weights.pt",
    load_hint="load_dists(weights_path=...)",
)


class DISTS(nn.Module):
    """DISTS distances between two batches of NHWC images in [0, 1]: (N,), or with
    reduction="mean" or "sum" their mean or sum over the batch (a scalar).

    There is no spatial map: each term compares statistics of a whole feature map (its mean,
    variance and covariance over all positions), and the structure term is a ratio of those
    means, so no part of the distance belongs to one position (a map would be another metric,
    a windowed DISTS, which the paper does not define).

    The backbone is VGG16 (configuration D, no batch norm) with L2 pooling: a VGG16 with
    other pooling is used with "l2" instead, its parameters unchanged. Inputs are checked as
    LPIPS's are (shape, 3 channels, sides of at least 16, values when concrete). `reduction`
    is static: under jax.jit pass it with static_argnames="reduction".
    """

    backbone: VGG
    c1: float = STRUCTURE_C1
    c2: float = TEXTURE_C2

    def __post_init__(self):
        backbone = self.backbone
        if backbone.config != "D" or backbone.batch_norm:
            raise ValueError(
                f"DISTS is defined on VGG16 (configuration D) without batch norm, the network "
                f"its alpha and beta were fitted to; got configuration {backbone.config!r}, "
                f"batch_norm={backbone.batch_norm}."
            )
        if backbone.pooling != "l2":  # same parameters, DISTS's pooling
            object.__setattr__(self, "backbone", backbone.clone(pooling="l2"))
        super().__post_init__()

    @nn.compact
    def __call__(self, images0: jax.Array, images1: jax.Array, reduction: str = "none"):
        check_reduction(reduction)
        check_image_pair(images0, images1, "DISTS", (0, 1), DISTS_RANGE_HINT)
        mean, stddev = jnp.asarray(MEAN_RGB) / 255, jnp.asarray(STDDEV_RGB) / 255
        images0, images1 = images0.astype(jnp.float32), images1.astype(jnp.float32)
        # One backbone pass per batch, not one on both concatenated (as LPIPS): a gradient
        # with respect to one batch then runs the backward through its own pass alone.
        features0, features1 = (
            self.backbone.extract_features((images - mean) / stddev, DISTS_LAYERS)
            for images in (images0, images1)
        )
        pairs = [(images0, images1)] + [(features0[n], features1[n]) for n in DISTS_LAYERS]
        channels = [x.shape[-1] for x, _ in pairs]  # DISTS_CHANNELS at full width
        weights = {
            name: self.param(name, _average, (sum(channels),), jnp.float32)
            for name in ("alpha", "beta")
        }
        total = weights["alpha"].sum() + weights["beta"].sum()
        splits = [sum(channels[: index + 1]) for index in range(len(channels) - 1)]
        alphas, betas = (jnp.split(weights[k] / total, splits) for k in ("alpha", "beta"))
        distance = 0.0
        for (x, y), alpha, beta in zip(pairs, alphas, betas, strict=True):
            structure, texture = self.stage_distances(*(v.astype(jnp.float32) for v in (x, y)))
            distance = distance + structure @ alpha + texture @ beta
        return reduce_batch(distance, reduction)

    def stage_distances(self, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(N, C) one minus the structure and one minus the texture similarity of one stage's
        (N, H, W, C) maps x against y. DISTS_pt.py computes 1 - sum of
        the weighted similarities, S1 = (2 x y + c1) / (x^2 + y^2 + c1) of the means and
        S2 = (2 cov + c2) / (var x + var y + c2); with the weights summing to one that is
        the sum of the weighted 1 - S1 = (x - y)^2 / (x^2 + y^2 + c1) and 1 - S2 =
        var(x - y) / (var x + var y + c2), the same in exact arithmetic, but in float32
        without the cancellation of 1 - S near 1 (which costs the reference's own float32
        up to 5e-5 of small distances)."""
        x_mean, y_mean = jnp.mean(x, axis=(1, 2)), jnp.mean(y, axis=(1, 2))
        structure = (x_mean - y_mean) ** 2 / (x_mean**2 + y_mean**2 + self.c1)
        x_centred, y_centred = x - x_mean[:, None, None], y - y_mean[:, None, None]
        x_var, y_var = jnp.mean(x_centred**2, axis=(1, 2)), jnp.mean(y_centred**2, axis=(1, 2))
        difference_var = jnp.mean((x_centred - y_centred) ** 2, axis=(1, 2))
        texture = difference_var / (x_var + y_var + self.c2)
        return structure, texture


def _average(key, shape, dtype):
    return jnp.full(shape, 1.0 / shape[0], dtype)


def load_dists(
    backbone: str = "vgg16.tv_in1k",
    backbone_path=None,
    weights_path=None,
    cache_dir=None,
    download: bool = True,
    dtype=jnp.float32,
) -> tuple[DISTS, dict]:
    """(DISTS module, variables): the backbone as load_lpips takes it (a registry name, its
    file at `backbone_path`, or a VGG16 weights file given as `backbone`); alpha and beta
    from `weights_path`, else from the `DISTS-pytorch` package where installed, else from the
    cache or downloaded (their hash checked either way)."""
    model, variables = load_backbone(
        "DISTS", backbone, backbone_path, cache_dir, download, dtype, pooling="l2"
    )
    module = DISTS(model)
    file = metric_weights_file(DISTS_ALPHA_BETA, weights_path, cache_dir, download)
    return module, dists_variables(module, variables, read_alpha_beta(file))


def dists_variables(module: DISTS, backbone_variables: dict, alpha_beta: dict | None = None):
    """DISTS's variables: the backbone's conv layers up to conv5_3 and alpha and beta, each
    (1475,) (read_alpha_beta); without `alpha_beta`, every channel weighted alike."""
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    expected = jax.eval_shape(module.init, jax.random.key(0), image, image)["params"]
    params = {"backbone": {layer: backbone_variables["params"][layer]
                           for layer in expected["backbone"]}}  # fmt: skip
    for name in ("alpha", "beta"):
        params[name] = _average(None, expected[name].shape, jnp.float32)
        if alpha_beta is not None:
            params[name] = jnp.asarray(alpha_beta[name])
    return {"params": params}


def read_alpha_beta(path) -> dict:
    """{"alpha": (1475,), "beta": (1475,)} from DISTS's weights.pt (each (1, 1475, 1, 1)): 3
    image channels and the 64 + 128 + 256 + 512 + 512 of the five layers; a clear error for
    another file."""
    arrays = read_torch_arrays(path)
    want = (1, sum(DISTS_CHANNELS), 1, 1)
    weights = {}
    for name in ("alpha", "beta"):
        if name not in arrays:
            raise ConversionError(
                f"{path} is not a DISTS weights file: it has no {name} (found "
                f"{', '.join(sorted(arrays)[:6])})."
            )
        if tuple(arrays[name].shape) != want:
            raise ConversionError(
                f"{name} in {path} has shape {tuple(arrays[name].shape)}; DISTS's are {want} "
                f"(VGG16's image and five stages, {' + '.join(map(str, DISTS_CHANNELS))})."
            )
        weights[name] = arrays[name].reshape(-1)
    return weights
