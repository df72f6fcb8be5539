"""Perceptual similarity on VGG's features: LPIPS (Zhang, Isola, Efros, Shechtman and Wang,
"The Unreasonable Effectiveness of Deep Features as a Perceptual Metric", 2018), net "vgg",
version 0.1, equal to the `lpips` package; and the feature and style losses of Gatys, Ecker
and Bethge (2016) and Johnson, Alahi and Fei-Fei (2016).

    lpips, variables = vgg_jax.load_lpips()                  # torchvision's VGG16 + v0.1 weights
    distances = lpips.apply(variables, images0, images1)     # NHWC in [-1, 1] -> (N,)
    maps = lpips.apply(variables, images0, images1, spatial=True)  # (N, H, W)
    loss = lpips.apply(variables, images0, images1, reduction="mean")  # the batch's mean
    model, variables, preprocess = vgg_jax.load_pretrained("vgg16.tv_in1k")
    loss = vgg_jax.perceptual_loss(model, variables, preprocess, images, content, style)

LPIPS's learned linear weights (v0.1 `vgg.pth`) come from richzhang/PerceptualSimilarity,
Copyright (c) 2018, Richard Zhang, Phillip Isola, Alexei A. Efros, Eli Shechtman, Oliver
Wang; BSD-2-Clause: redistributions must retain that copyright notice, its list of
conditions and its disclaimer (https://github.com/richzhang/PerceptualSimilarity/blob/master/
LICENSE).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
from collections.abc import Mapping
from types import MappingProxyType

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from vgg_jax.data.normalization import IMAGENET_NORMALIZATION
from vgg_jax.model.architectures import feature_names
from vgg_jax.model.vgg import VGG
from vgg_jax.weights import pretrained
from vgg_jax.weights.convert import ConversionError

# The ReLU outputs LPIPS compares, in vgg_jax's layer names (lpips's relu1_2 ... relu5_3).
LPIPS_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3", "conv5_3")
# LPIPS v0.1's ScalingLayer: images in [-1, 1] brought near ImageNet's normalisation.
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
MIN_SIDE = 16  # conv5_3 comes after four 2x2 poolings
RANGE_SLACK = 1e-3  # what [-1, 1] allows for rounding
REDUCTIONS = ("none", "mean", "sum")


@dataclasses.dataclass(frozen=True)
class LinearWeights:
    """A published file of a metric's learned weights, LPIPS's linear weights or DISTS's
    alpha and beta (fetched and checked by vgg_jax.weights.pretrained.weights_file)."""

    name: str
    url: str
    file_hash: str
    hash_algorithm: str
    file_name: str
    package: str  # the reference's pip package, which bundles the same file
    package_path: str  # where in that package
    load_hint: str


LPIPS_VGG_V0_1 = LinearWeights(
    name="lpips.vgg.v0.1",
    url="https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/v0.1/vgg.pth",
    file_hash="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    hash_algorithm="sha256",
    file_name="lpips_vgg_v0.1.pth",
    package="lpips",
    package_path="weights/v0.1/vgg.pth",
    load_hint="load_lpips(linear_path=...)",
)


class LPIPS(nn.Module):
    """LPIPS distances between two batches of NHWC images in [-1, 1]: (N,) distances, or with
    spatial=True (N, H, W) maps (each layer's map upsampled bilinearly, as lpips does);
    reduction="mean" or "sum" reduces over the batch ((), or an (H, W) map).

    Checked before any compute: both batches have one shape, 3 channels, sides of at least
    16 pixels; and, when the images are concrete arrays rather than traced under jit, that
    their values lie in [-1, 1] (a min/max on the host: under jit this costs nothing).
    `spatial` and `reduction` are static: under jax.jit pass them by name, with
    static_argnames=("spatial", "reduction").
    """

    backbone: VGG
    epsilon: float = 1e-10  # lpips's normalize_tensor

    def __post_init__(self):
        backbone = self.backbone
        if backbone.config != "D" or backbone.batch_norm or backbone.pooling != "max":
            raise ValueError(
                f"LPIPS (net 'vgg') is defined on VGG16 (configuration D) without batch norm, "
                f"with max pooling, the network its linear weights were fitted to; got "
                f"configuration {backbone.config!r}, batch_norm={backbone.batch_norm}, "
                f"pooling={backbone.pooling!r}."
            )
        super().__post_init__()

    @nn.compact
    def __call__(
        self, images0: jax.Array, images1: jax.Array, spatial: bool = False, reduction="none"
    ):
        check_reduction(reduction)
        check_image_pair(images0, images1)
        shift, scale = jnp.asarray(LPIPS_SHIFT), jnp.asarray(LPIPS_SCALE)
        # One backbone pass per batch, not one on both concatenated: a gradient with respect
        # to one batch (LPIPS as a loss) then runs the backward through that batch's pass
        # alone; on the concatenation XLA ran it through both, twice the input-gradient
        # convolutions (benchmarks/lpips_backward.py).
        features0, features1 = (
            self.backbone.extract_features((images - shift) / scale, LPIPS_LAYERS)
            for images in (images0, images1)
        )
        total = 0.0
        for name in LPIPS_LAYERS:
            channels = features0[name].shape[-1]
            weights = self.param(f"linear_{name}", _average, (channels,), jnp.float32)
            first, second = (self._unit(f[name]) for f in (features0, features1))
            weighted = jnp.einsum("nhwc,c->nhw", (first - second) ** 2, weights)
            if spatial:
                shape = (weighted.shape[0], *images0.shape[1:3])
                total = total + jax.image.resize(weighted, shape, "linear", antialias=False)
            else:
                total = total + jnp.mean(weighted, axis=(1, 2))
        return reduce_batch(total, reduction)

    def _unit(self, feature: jax.Array) -> jax.Array:
        """lpips's normalize_tensor: each position's channel vector over its norm."""
        feature = feature.astype(jnp.float32)
        return feature / (jnp.sqrt(jnp.sum(feature**2, -1, keepdims=True)) + self.epsilon)


def _average(key, shape, dtype):
    return jnp.full(shape, 1.0 / shape[0], dtype)


LPIPS_RANGE_HINT = "for images in [0, 1] pass 2 * x - 1; for uint8, x / 127.5 - 1"


def check_image_pair(
    images0, images1, metric="LPIPS", value_range=(-1, 1), range_hint=LPIPS_RANGE_HINT
) -> None:
    """Both batches NHWC RGB of one shape, sides >= MIN_SIDE, values in `value_range` (when
    concrete), or a ValueError naming `metric` and what it takes."""
    shape0, shape1 = jnp.shape(images0), jnp.shape(images1)
    if shape0 != shape1:
        raise ValueError(f"{metric} compares images of one shape; got {shape0} and {shape1}.")
    if len(shape0) != 4 or shape0[-1] != 3:
        raise ValueError(f"{metric} takes NHWC RGB batches (N, H, W, 3); got shape {shape0}.")
    if min(shape0[1:3]) < MIN_SIDE:
        raise ValueError(
            f"{metric} needs images of at least {MIN_SIDE}x{MIN_SIDE} pixels (conv5_3 comes "
            f"after four poolings); got {shape0[1]}x{shape0[2]}."
        )
    low_end, high_end = value_range
    for images in (images0, images1):
        if isinstance(images, jax.core.Tracer):
            continue  # under jit: values unknown until it runs
        values = np.asarray(images)  # on the host: under jit, jnp would trace even a constant
        low, high = float(values.min()), float(values.max())
        if low < low_end - RANGE_SLACK or high > high_end + RANGE_SLACK:
            raise ValueError(
                f"{metric} takes images in [{low_end}, {high_end}]; got values from {low:.3g} "
                f"to {high:.3g} ({range_hint})."
            )


def check_reduction(reduction) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}.")


def reduce_batch(values: jax.Array, reduction: str) -> jax.Array:
    """Per-image values (N, ...) as they are ("none"), or their mean or sum over the batch."""
    if reduction == "mean":
        return jnp.mean(values, axis=0)
    return jnp.sum(values, axis=0) if reduction == "sum" else values


def load_lpips(
    backbone: str = "vgg16.tv_in1k",
    backbone_path=None,
    linear_path=None,
    cache_dir=None,
    download: bool = True,
    dtype=jnp.float32,
) -> tuple[LPIPS, dict]:
    """(LPIPS module, variables): the backbone from the weights registry (or its file at
    `backbone_path`), or a weights file of a VGG16 given as `backbone`; the v0.1 linear
    weights from `linear_path`, else from the `lpips` package where installed, else from the
    cache or downloaded (their hash checked either way)."""
    model, variables = load_backbone("LPIPS", backbone, backbone_path, cache_dir, download, dtype)
    module = LPIPS(model)
    linear = read_linear_weights(linear_weights_file(linear_path, cache_dir, download))
    return module, lpips_variables(module, variables, linear)


def load_backbone(metric: str, backbone, backbone_path, cache_dir, download, dtype, **kwargs):
    """(VGG16, variables) for a metric: registry name (or its file at `backbone_path`), or a
    VGG16 weights file given as `backbone`; refused unless torchvision-normalised."""
    if pathlib.Path(str(backbone)).expanduser().is_file():
        model, variables, preprocess = pretrained.model_from_file(
            backbone, "vgg16", dtype=dtype, **kwargs
        )
    else:
        model, variables, preprocess = pretrained.load_pretrained(
            backbone, path=backbone_path, cache_dir=cache_dir, download=download, dtype=dtype,
            **kwargs,
        )  # fmt: skip
    if preprocess != IMAGENET_NORMALIZATION:
        raise ValueError(
            f"{metric}'s input scaling is fitted to torchvision-style VGG16 weights; {backbone} "
            f"expects other inputs (Caffe's 0-255 minus the mean). Use vgg16.tv_in1k."
        )
    return model, variables


def lpips_variables(module: LPIPS, backbone_variables: dict, linear: dict | None = None) -> dict:
    """LPIPS's variables: the backbone's conv layers up to conv5_3 (its head is not used) and
    the linear weights {layer: (C,)} (read_linear_weights), each shape checked; without
    `linear`, every layer's channels weighted uniformly."""
    image = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    expected = jax.eval_shape(module.init, jax.random.key(0), image, image)["params"]
    params = {"backbone": {layer: backbone_variables["params"][layer]
                           for layer in expected["backbone"]}}  # fmt: skip
    for name in LPIPS_LAYERS:
        want = expected[f"linear_{name}"].shape
        if linear is None:
            params[f"linear_{name}"] = _average(None, want, jnp.float32)
            continue
        if linear[name].shape != want:
            raise ConversionError(
                f"LPIPS's linear weights for {name} have shape {linear[name].shape}; the "
                f"backbone gives {name} {want[0]} channels. Is this a VGG16 LPIPS file?"
            )
        params[f"linear_{name}"] = jnp.asarray(linear[name])
    return {"params": params}


def linear_weights_file(path=None, cache_dir=None, download: bool = True) -> pathlib.Path:
    """`path` (hash checked), else the copy the `lpips` package bundles, else the cache or a
    download."""
    return metric_weights_file(LPIPS_VGG_V0_1, path, cache_dir, download)


def metric_weights_file(weights: LinearWeights, path=None, cache_dir=None, download=True):
    """`path` (hash checked), else the copy the reference package bundles, else the cache or
    a download."""
    if path is None:
        # Found without importing the package (and PyTorch).
        spec = importlib.util.find_spec(weights.package)
        if spec is not None and spec.submodule_search_locations:
            bundled = pathlib.Path(spec.submodule_search_locations[0]) / weights.package_path
            if bundled.is_file():
                path = bundled
    return pretrained.weights_file(weights, path=path, cache_dir=cache_dir, download=download)


def read_torch_arrays(path) -> dict:
    """{name: array} of a PyTorch weights file: the one reader of the metrics' files."""
    return pretrained.read_arrays(pathlib.Path(path), "torch")


def read_linear_weights(path: pathlib.Path) -> dict:
    """{layer name: (C,) weights} from lpips's file (lin0.model.1.weight ... of shape
    (1, C, 1, 1)); a clear error for another file."""
    arrays = read_torch_arrays(path)
    linear = {}
    for index, name in enumerate(LPIPS_LAYERS):
        key = f"lin{index}.model.1.weight"
        if key not in arrays:
            raise ConversionError(
                f"{path} is not an LPIPS linear-weights file: it has no {key} (found "
                f"{', '.join(sorted(arrays)[:6])})."
            )
        weight = arrays[key]
        if weight.ndim != 4 or weight.shape[0] != 1 or weight.shape[2:] != (1, 1):
            raise ConversionError(
                f"{key} in {path} has shape {weight.shape}; LPIPS's are (1, C, 1, 1)."
            )
        linear[name] = weight.reshape(-1)
    return linear


# The papers' layers, in vgg_jax's names (each the ReLU output of that conv), with weights.
# Johnson et al. (VGG16, style transfer): feature reconstruction at relu2_2, style at relu1_2,
# relu2_2, relu3_3 and relu4_3. Gatys et al. (VGG19, average pooling): content at conv4_2,
# style at conv1_1 ... conv5_1, each weighted 1/5. Read-only: they are default arguments.
JOHNSON_CONTENT_LAYERS = MappingProxyType({"conv2_2": 1.0})
JOHNSON_STYLE_LAYERS = MappingProxyType(
    {"conv1_2": 1.0, "conv2_2": 1.0, "conv3_3": 1.0, "conv4_3": 1.0}
)
GATYS_CONTENT_LAYERS = MappingProxyType({"conv4_2": 1.0})
GATYS_STYLE_LAYERS = MappingProxyType({f"conv{block}_1": 0.2 for block in range(1, 6)})


def gram_matrix(features: jax.Array) -> jax.Array:
    """(N, H, W, C) features -> (N, C, C) Gram matrices divided by C*H*W (Johnson et al.'s
    normalisation). Gatys et al.'s style term, sum (G - A)^2 / (4 N^2 M^2) with N = C and
    M = H*W, is style_loss on these Grams divided by 4."""
    n, h, w, c = features.shape
    flat = features.reshape(n, h * w, c).astype(jnp.float32)
    return jnp.einsum("nkc,nkd->ncd", flat, flat) / (c * h * w)


def feature_loss(features: jax.Array, targets: jax.Array) -> jax.Array:
    """Johnson et al.'s feature reconstruction loss, per image: the squared Euclidean distance
    of the feature maps divided by C*H*W (their mean squared difference). (N,)"""
    difference = features.astype(jnp.float32) - targets.astype(jnp.float32)
    return jnp.mean(difference**2, axis=(1, 2, 3))


# Gatys et al.'s name for it; their content loss is 1/2 the *sum* of squared differences, so
# their content/style weight ratios do not carry over unchanged.
content_loss = feature_loss


def style_loss(features: jax.Array, targets: jax.Array) -> jax.Array:
    """The squared Frobenius distance of the two Gram matrices (gram_matrix), per image. (N,)"""
    return jnp.sum((gram_matrix(features) - gram_matrix(targets)) ** 2, axis=(1, 2))


def perceptual_loss(
    model: VGG,
    variables: dict,
    preprocess,
    images: jax.Array,
    content: jax.Array | None = None,
    style: jax.Array | None = None,
    content_layers: Mapping[str, float] = JOHNSON_CONTENT_LAYERS,
    style_layers: Mapping[str, float] = JOHNSON_STYLE_LAYERS,
) -> jax.Array:
    """sum_l w_l feature_loss at the content layers against `content` plus sum_l w_l
    style_loss at the style layers against `style`, per image (N,). Images are RGB 0-255
    (uint8 or float), as `preprocess` (the weights' normalisation, from load_pretrained)
    takes them; `content` has the images' shape, `style` may be one image of any size for the
    whole batch. For Gatys et al.'s setting use vgg19 with pooling="avg" and the GATYS_*
    layers."""
    if content is None and style is None:
        raise ValueError("Give content images, a style image, or both, to compare against.")
    wanted = {**(content_layers if content is not None else {}),
              **(style_layers if style is not None else {})}  # fmt: skip
    valid = feature_names(model.config)
    unknown = [name for name in wanted if name not in valid]
    if unknown or not wanted:
        raise ValueError(
            f"Layers {unknown or 'none'} are not layers of configuration {model.config!r} to "
            f"compare; choose among {', '.join(valid)}."
        )
    count = jnp.shape(images)[0]
    if content is not None and jnp.shape(content) != jnp.shape(images):
        raise ValueError(
            f"The content images must have the images' shape {jnp.shape(images)}; got "
            f"{jnp.shape(content)}."
        )
    if style is not None and jnp.shape(style)[0] not in (1, count):
        raise ValueError(
            f"Give one style image or one per image ({count}); got {jnp.shape(style)[0]}."
        )

    def extract(x, layers):
        layers = tuple(layers)
        return model.apply(variables, preprocess(x), layers=layers, method="extract_features")

    features = extract(images, wanted)
    total = jnp.zeros(count, jnp.float32)
    if content is not None:  # each target computed only as deep as its own layers
        targets = extract(content, content_layers)
        for name, weight in content_layers.items():
            total = total + weight * feature_loss(features[name], targets[name])
    if style is not None:
        targets = extract(style, style_layers)
        for name, weight in style_layers.items():  # Grams are C x C: any style image size
            total = total + weight * style_loss(features[name], targets[name])
    return total
