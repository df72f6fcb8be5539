"""Pretrained weights: the registry of published VGG weights, downloads, loading and export,
and the conversion between torchvision/timm/Keras layouts and vgg_jax variables."""

from vgg_jax._submodules import submodule_loader

__getattr__ = submodule_loader(__name__)  # vgg_jax.weights.<module> without importing it
