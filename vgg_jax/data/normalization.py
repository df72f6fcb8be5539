"""Pixel statistics and the one normalisation of input images, done on the accelerator.

The input pipeline sends uint8 images (a quarter of float32's bytes over the host-to-device
link, and half the host's work per image) with, for training, each image's PCA lighting shift;
the train and eval steps turn them into the model's float input here, where it costs nothing.
Pretrained weights name the statistics they were trained with as a `Normalization` preset, and a
training config names one of NORMALIZATIONS (config.normalization).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# ImageNet's mean and standard deviation per RGB channel, on the 0-255 scale.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# The mean pixel the paper's Caffe weights subtract (Keras lists it as BGR 103.939, 116.779,
# 123.68), in RGB; those weights divide by nothing.
CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)

# AlexNet's "fancy PCA" lighting noise: the principal components of ImageNet's RGB pixel values
# (on the 0-1 scale), as fb.resnet.torch and most reimplementations use them.
IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@dataclasses.dataclass(frozen=True)
class Normalization:
    """uint8 (or 0-255 float) RGB images (..., H, W, 3) -> float32 model input: the mean RGB
    subtracted, divided by the deviation, both on the 0-255 scale."""

    mean: tuple[float, float, float]
    stddev: tuple[float, float, float]

    def __call__(self, images, lighting: jax.Array | None = None) -> jax.Array:
        """`lighting` (..., 3) is each image's PCA shift, added first."""
        images = jnp.asarray(images).astype(jnp.float32)
        if lighting is not None:
            images = images + lighting[..., None, None, :]
        return (images - jnp.asarray(self.mean)) / jnp.asarray(self.stddev)


# What vgg_jax trains with, and torchvision's weights expect.
IMAGENET_NORMALIZATION = Normalization(MEAN_RGB, STDDEV_RGB)
# What the paper's Caffe weights expect: 0-255 minus the mean pixel.
CAFFE_NORMALIZATION = Normalization(CAFFE_MEAN_RGB, (1.0, 1.0, 1.0))


# The presets by the names a training config gives them.
NORMALIZATIONS = {"imagenet": IMAGENET_NORMALIZATION, "caffe": CAFFE_NORMALIZATION}


def normalization_name(normalization: Normalization) -> str:
    """The name NORMALIZATIONS gives a preset."""
    return next(name for name, preset in NORMALIZATIONS.items() if preset == normalization)


def normalize(images: jax.Array, lighting: jax.Array | None = None) -> jax.Array:
    """The default training normalisation (IMAGENET_NORMALIZATION) of uint8 images."""
    return IMAGENET_NORMALIZATION(images, lighting)


def model_input(batch: dict, normalization: Normalization = IMAGENET_NORMALIZATION) -> jax.Array:
    """The model's input from an input-pipeline batch of uint8 images (and PCA shifts)."""
    return normalization(batch["image"], batch.get("lighting"))
