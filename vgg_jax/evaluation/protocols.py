"""The paper's test protocols (Section 3.2) as pure functions of one batch of rescaled images.

Every function takes a model, its variables and model-input images that were all rescaled to
the same smaller side Q, shaped (N, H, W, C), and returns class posteriors (N, classes): the
softmax averaged over the views the protocol looks at.

- center: one crop from the middle (with Q=256 and a 224 crop, torchvision's protocol);
- dense: the whole image through the dense head (FC layers as convolutions, class-score map
  averaged), softmax averaged with that of the horizontally flipped image;
- multi_crop: a 5x5 regular grid of crops and their flips, 50 views, softmax averaged;
- dense+multi_crop: the average of the two.

Multi-scale evaluation and ensembles average these posteriors again, across scales and models
(vgg_jax.evaluation.on_dataset). The crop is the classic head's input size: FC6's window times
the net's downsampling (224 for a model initialised at 224x224). `posterior_function` jits
them, with the preprocessing that turns uint8 images into model input, for the commands.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vgg_jax.evaluation.protocol_names import PROTOCOLS, check_protocols
from vgg_jax.model.architectures import downsampling_factor
from vgg_jax.model.vgg import VGG

__all__ = [  # PROTOCOLS and check_protocols live in protocol_names, without jax
    "PROTOCOLS", "center_crop", "center_posteriors", "check_protocols", "crop_size",
    "dense_posteriors", "flipped", "grid_offsets", "multi_crop_posteriors", "multi_crops",
    "posterior_function", "protocol_posteriors",
]  # fmt: skip
GRID = 5  # the paper's 5x5 grid of crops per scale


def crop_size(model: VGG, variables: dict) -> int:
    """The side of the square input the classic head was built for (224 for ImageNet)."""
    window = variables["params"]["fc6"]["kernel"].shape[:2]
    if window[0] != window[1]:
        raise ValueError(f"FC6's window is {window[0]}x{window[1]}; crops need a square one.")
    return int(window[0]) * downsampling_factor(model.config)


def grid_offsets(length: int, crop: int, grid: int = GRID) -> tuple[int, ...]:
    """`grid` crop starts spread evenly over a side of `length`, first and last at the edges."""
    if length < crop:
        raise ValueError(f"A {crop}-pixel crop does not fit in a side of {length} pixels.")
    return tuple(int(round(offset)) for offset in np.linspace(0, length - crop, grid))


def flipped(images: jax.Array) -> jax.Array:
    """Horizontal mirror images (NHWC)."""
    return images[:, :, ::-1, :]


def center_crop(images: jax.Array, crop: int) -> jax.Array:
    _, height, width, _ = images.shape
    top, left = (height - crop) // 2, (width - crop) // 2
    return images[:, top : top + crop, left : left + crop, :]


def multi_crops(images: jax.Array, crop: int, grid: int = GRID, flip: bool = True) -> jax.Array:
    """Every view of the multi-crop protocol, (N, grid * grid * (2 if flip else 1), crop, crop,
    C): row-major over the grid, then the same crops mirrored."""
    _, height, width, _ = images.shape
    crops = [
        images[:, top : top + crop, left : left + crop, :]
        for top in grid_offsets(height, crop, grid)
        for left in grid_offsets(width, crop, grid)
    ]
    views = jnp.stack(crops, axis=1)
    if flip:
        views = jnp.concatenate([views, views[:, :, :, ::-1, :]], axis=1)
    return views


def _softmax(model: VGG, variables: dict, images: jax.Array, dense: bool) -> jax.Array:
    return jax.nn.softmax(model.apply(variables, images, dense=dense), axis=-1)


def _with_flips(posteriors_of: Callable, images: jax.Array, flip: bool) -> jax.Array:
    """Posteriors averaged with those of the mirrored images (one batch of 2N)."""
    if not flip:
        return posteriors_of(images)
    both = posteriors_of(jnp.concatenate([images, flipped(images)]))
    return (both[: len(images)] + both[len(images) :]) / 2


def center_posteriors(model: VGG, variables: dict, images: jax.Array, crop: int) -> jax.Array:
    return _softmax(model, variables, center_crop(images, crop), dense=False)


def dense_posteriors(model: VGG, variables: dict, images: jax.Array, flip: bool = True):
    return _with_flips(lambda x: _softmax(model, variables, x, dense=True), images, flip)


def multi_crop_posteriors(
    model: VGG, variables: dict, images: jax.Array, crop: int, grid: int = GRID, flip: bool = True
) -> jax.Array:
    """The mean softmax over multi_crops(images), computed one grid position at a time so the
    batch's 50 views never sit in memory together."""
    num, height, width, channels = images.shape
    starts = jnp.asarray(
        [(t, s) for t in grid_offsets(height, crop, grid) for s in grid_offsets(width, crop, grid)]
    )

    def posteriors_at(start):
        crops = lax.dynamic_slice(images, (0, start[0], start[1], 0), (num, crop, crop, channels))
        return _with_flips(lambda x: _softmax(model, variables, x, dense=False), crops, flip)

    return jnp.mean(lax.map(posteriors_at, starts), axis=0)


def protocol_posteriors(
    model: VGG, variables: dict, images: jax.Array, protocols, crop: int
) -> dict[str, jax.Array]:
    """{protocol: (N, classes) posteriors} for each requested protocol, sharing the work of
    dense+multi_crop with dense and multi_crop."""
    protocols = check_protocols(protocols)
    combined = "dense+multi_crop" in protocols
    out = {}
    if "center" in protocols:
        out["center"] = center_posteriors(model, variables, images, crop)
    if "dense" in protocols or combined:
        out["dense"] = dense_posteriors(model, variables, images)
    if "multi_crop" in protocols or combined:
        out["multi_crop"] = multi_crop_posteriors(model, variables, images, crop)
    if combined:
        out["dense+multi_crop"] = (out["dense"] + out["multi_crop"]) / 2
    return {name: out[name] for name in protocols}


def posterior_function(model: VGG, preprocess: Callable, protocols, crop: int) -> Callable:
    """Jitted (variables, uint8 images) -> {protocol: posteriors}, `preprocess` turning the
    images into the model's input; one compilation per image shape."""

    @jax.jit
    def posteriors(variables, images):
        return protocol_posteriors(model, variables, preprocess(images), protocols, crop)

    return posteriors
