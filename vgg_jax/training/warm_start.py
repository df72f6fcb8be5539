"""Starting a run from another run's weights (Section 3.1): the paper's warm start of the deeper
nets, and fine-tuning at another scale.

"warm_start": the deeper configurations (B-E) begin with the first four conv layers and the
three FC layers of a trained net A; every other layer keeps its fresh random initialisation.
The layers are matched by name, and the names come from the configuration table: A's first
four convs are conv1_1, conv2_1, conv3_1 and conv3_2 (one conv in blocks 1 and 2, two in
block 3), and each deeper net has a layer of that name, at the start of the same block with the
same shape. So the mapping is

    A conv1_1 -> conv1_1    A conv2_1 -> conv2_1    A conv3_1 -> conv3_1    A conv3_2 -> conv3_2
    A fc6 -> fc6            A fc7 -> fc7            A fc8 -> fc8

while conv1_2, conv2_2, conv3_3 (D, E; C's 1x1 conv3_3), conv3_4 (E) and every conv of
blocks 4 and 5 start random. With BatchNorm, a copied conv brings its BatchNorm layer along.
From a source other than A, its own first four convs are the ones copied.

"all": every layer is copied from a run of the same network, as the paper's S=384 nets were
fine-tuned from S=256 ones and the scale-jittered nets from S=384 ones.
"""

from __future__ import annotations

import numpy as np

from vgg_jax.model.architectures import HEAD_FEATURE_NAMES, layer_specs, resolve_model_name

INIT_LAYERS = ("all", "warm_start")
WARM_START_CONVS = 4  # "the first four convolutional layers" of the source net
HEAD_LAYERS = tuple(name for name in HEAD_FEATURE_NAMES if name != "flatten")  # fc6-fc8


def warm_start_layers(source_config: str = "A") -> tuple[str, ...]:
    """The layers the paper's warm start copies from a net of `source_config`."""
    convs = [spec.name for spec in layer_specs(source_config) if spec.kind == "conv"]
    return (*convs[:WARM_START_CONVS], *HEAD_LAYERS)


def _with_batch_norm(layers, params: dict) -> list[str]:
    return [name for layer in layers for name in (layer, f"{layer}_bn") if name in params]


def copy_layers(target: dict, source: dict, layers) -> dict:
    """`target` variables with the named layers (and their BatchNorm layers, parameters and
    statistics) taken from `source`; each must exist in both with the same shapes."""
    copied = {collection: dict(values) for collection, values in target.items()}
    for layer in layers:
        if layer not in target["params"]:
            raise ValueError(f"The network being trained has no layer {layer}.")
        if layer not in source["params"]:
            raise ValueError(f"The run to start from has no layer {layer} to copy.")
    for collection, values in copied.items():
        for name in _with_batch_norm(layers, values):
            theirs = source.get(collection, {}).get(name)
            if theirs is None:
                raise ValueError(f"The run to start from has no {collection} for {name}.")
            ours = values[name]
            for key, array in ours.items():
                if key not in theirs or np.shape(theirs[key]) != np.shape(array):
                    raise ValueError(
                        f"{name}/{key} has shape {np.shape(array)} here but "
                        f"{np.shape(theirs.get(key))} in the run to start from: the networks "
                        f"differ in width, FC size or classes."
                    )
            values[name] = {key: np.asarray(theirs[key], np.asarray(a).dtype)
                            for key, a in ours.items()}  # fmt: skip
    return copied


def initial_variables(fresh: dict, source: dict, source_model: str, mode: str):
    """(variables, copied layer names): `fresh` variables with layers of `source` (the
    variables of a `source_model` net) copied in as `mode` says."""
    if mode not in INIT_LAYERS:
        raise ValueError(f"Unknown init_layers {mode!r}; choose one of {', '.join(INIT_LAYERS)}.")
    if mode == "all":
        ours, theirs = set(fresh["params"]), set(source["params"])
        if ours != theirs:
            raise ValueError(
                f"init_layers='all' needs the same network, but the layers differ: only here "
                f"{sorted(ours - theirs)}, only in the run to start from "
                f"{sorted(theirs - ours)}. For the paper's warm start from net A use "
                f"init_layers='warm_start'."
            )
        layers = [name for name in fresh["params"] if not name.endswith("_bn")]
    else:
        layers = list(warm_start_layers(resolve_model_name(source_model)[0]))
    return copy_layers(fresh, source, layers), layers
