"""Pretrained weights: the registry of published VGG weights, downloads, loading and export,
and the conversion between torchvision/timm/Keras layouts and vgg_jax variables."""
