"""ImageNet's class names, which ship with vgg_jax (tensorflow-datasets has only WordNet ids)."""

from __future__ import annotations

import importlib.resources


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names, in the label order of every weight set in vgg_jax."""
    return (
        (importlib.resources.files("vgg_jax.data") / "imagenet_classes.txt")
        .read_text()
        .splitlines()
    )
