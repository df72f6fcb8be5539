"""TFDS builders that vgg_jax ships, built locally with no download."""

from vgg_jax.datasets.digits import SklearnDigits

__all__ = ["SklearnDigits"]
