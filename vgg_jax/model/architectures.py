"""The configuration table of Simonyan & Zisserman (2014), Table 1, and what derives from it.

This table is the only place in vgg_jax where layer lists live. Each configuration is five
blocks; each block is a run of layers written in the paper's notation ("c3-64" is a 3x3
convolution with 64 filters, "c1-256" a 1x1 convolution, "LRN" local response
normalisation) and ends with a 2x2 max-pool. Layer names (conv3_2, lrn1, pool3) are derived
from a layer's position, the way the Caffe releases and the perceptual-loss literature name
them.
"""

from __future__ import annotations

import dataclasses
import functools
import re

CONFIGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "A": (("c3-64",), ("c3-128",), ("c3-256",) * 2, ("c3-512",) * 2, ("c3-512",) * 2),
    "A-LRN": (("c3-64", "LRN"), ("c3-128",), ("c3-256",) * 2, ("c3-512",) * 2, ("c3-512",) * 2),
    "B": (("c3-64",) * 2, ("c3-128",) * 2, ("c3-256",) * 2, ("c3-512",) * 2, ("c3-512",) * 2),
    "C": (
        ("c3-64",) * 2,
        ("c3-128",) * 2,
        ("c3-256",) * 2 + ("c1-256",),
        ("c3-512",) * 2 + ("c1-512",),
        ("c3-512",) * 2 + ("c1-512",),
    ),
    "D": (("c3-64",) * 2, ("c3-128",) * 2, ("c3-256",) * 3, ("c3-512",) * 3, ("c3-512",) * 3),
    "E": (("c3-64",) * 2, ("c3-128",) * 2, ("c3-256",) * 4, ("c3-512",) * 4, ("c3-512",) * 4),
}

# Familiar names -> (paper configuration, batch norm after every conv). The *_bn names follow
# torchvision; C has no torchvision name, so it gets one that says what sets it apart.
MODEL_NAMES: dict[str, tuple[str, bool]] = {
    "vgg11": ("A", False),
    "vgg11_bn": ("A", True),
    "vgg11_lrn": ("A-LRN", False),
    "vgg13": ("B", False),
    "vgg13_bn": ("B", True),
    "vgg16_1x1": ("C", False),
    "vgg16": ("D", False),
    "vgg16_bn": ("D", True),
    "vgg19": ("E", False),
    "vgg19_bn": ("E", True),
}

# The head's feature names, in order, after the convolutional layers. "flatten" exists only in
# the classic head; "fc8" is the class scores (a score map in the dense head).
HEAD_FEATURE_NAMES = ("flatten", "fc6", "fc7", "fc8")
BATCH_NORM_SUFFIX = "_bn"

_CONV_TOKEN = re.compile(r"c(\d+)-(\d+)")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer of the convolutional part: a conv, an LRN or a max-pool."""

    name: str
    kind: str  # "conv", "lrn" or "pool"
    kernel_size: int = 0  # convs only
    features: int = 0  # convs only; the paper's width, before any width multiplier


def resolve_config(config: str) -> str:
    """Returns the table key for a paper configuration letter, in any case ("a-lrn" -> "A-LRN")."""
    key = config.upper() if isinstance(config, str) else config
    if key not in CONFIGS:
        raise ValueError(
            f"Unknown VGG configuration {config!r}. Valid configurations are "
            f"{', '.join(CONFIGS)} (the paper's Table 1), or the model names "
            f"{', '.join(MODEL_NAMES)}."
        )
    return key


def resolve_model_name(name: str) -> tuple[str, bool]:
    """Maps a model name ("vgg16_bn") or a paper letter ("D") to (configuration, batch_norm).

    Any name or letter with "_bn" added ("vgg16_1x1_bn", "D_bn") is that network with batch
    norm, so every configuration has a name with and without it.
    """
    if isinstance(name, str) and name.lower() in MODEL_NAMES:
        return MODEL_NAMES[name.lower()]
    if isinstance(name, str) and name.lower().endswith(BATCH_NORM_SUFFIX):
        config, batch_norm = resolve_model_name(name[: -len(BATCH_NORM_SUFFIX)])
        if not batch_norm:
            return config, True
    return resolve_config(name), False


@functools.cache
def layer_specs(config: str) -> tuple[LayerSpec, ...]:
    """The convolutional layers of a configuration, in order, with their derived names."""
    specs = []
    for block, tokens in enumerate(CONFIGS[resolve_config(config)], start=1):
        conv_index = 0
        for token in tokens:
            if token == "LRN":
                specs.append(LayerSpec(f"lrn{block}", "lrn"))
                continue
            match = _CONV_TOKEN.fullmatch(token)
            if match is None:
                raise ValueError(f"Malformed layer {token!r} in configuration {config!r}.")
            conv_index += 1
            specs.append(
                LayerSpec(
                    f"conv{block}_{conv_index}",
                    "conv",
                    kernel_size=int(match.group(1)),
                    features=int(match.group(2)),
                )
            )
        specs.append(LayerSpec(f"pool{block}", "pool"))
    return tuple(specs)


def conv_blocks(config: str) -> tuple[tuple[LayerSpec, ...], ...]:
    """layer_specs split into the five blocks, each ending with its pool."""
    blocks, block = [], []
    for spec in layer_specs(config):
        block.append(spec)
        if spec.kind == "pool":
            blocks.append(tuple(block))
            block = []
    return tuple(blocks)


def feature_names(config: str) -> tuple[str, ...]:
    """Every layer name whose activation the model can return, in forward order."""
    return tuple(spec.name for spec in layer_specs(config)) + HEAD_FEATURE_NAMES


def weight_layer_names(config: str) -> tuple[str, ...]:
    """The layers with weights, in forward order: the convs, fc6, fc7 and fc8."""
    convs = tuple(spec.name for spec in layer_specs(config) if spec.kind == "conv")
    return convs + tuple(name for name in HEAD_FEATURE_NAMES if name != "flatten")


def downsampling_factor(config: str) -> int:
    """How much the convolutional part shrinks each spatial side: 2 per max-pool."""
    return 2 ** sum(spec.kind == "pool" for spec in layer_specs(config))
