"""Pixel statistics and the normalisation of input batches, done on the accelerator.

The input pipeline sends uint8 images (a quarter of float32's bytes over the host-to-device
link, and half the host's work per image) with, for training, each image's PCA lighting shift;
the train and eval steps turn them into the model's float input here, where it costs nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# ImageNet's mean and standard deviation per RGB channel, on the 0-255 scale.
MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STDDEV_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)

# AlexNet's "fancy PCA" lighting noise: the principal components of ImageNet's RGB pixel values
# (on the 0-1 scale), as fb.resnet.torch and most reimplementations use them.
IMAGENET_PCA_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def normalize(images: jax.Array, lighting: jax.Array | None = None) -> jax.Array:
    """uint8 (or 0-255 float) images (..., H, W, 3) -> float32 with the mean RGB subtracted and
    divided by the deviation; `lighting` (..., 3) is each image's PCA shift, added first."""
    images = images.astype(jnp.float32)
    if lighting is not None:
        images = images + lighting[..., None, None, :]
    return (images - jnp.asarray(MEAN_RGB)) / jnp.asarray(STDDEV_RGB)


def model_input(batch: dict) -> jax.Array:
    """The model's input from a batch: uint8 images from the input pipeline are normalised
    here; float images are taken as already normalised."""
    images = batch["image"]
    if images.dtype == jnp.uint8:
        return normalize(images, batch.get("lighting"))
    return images
