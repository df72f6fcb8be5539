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

A run may also start from published weights: a registry name (vgg_jax.weights.pretrained's
WEIGHTS, downloaded and hash-checked) or a weights file (.pth, .safetensors, Keras .h5). Then
"all" copies every layer, except that the classifier (fc8) starts fresh, sized for the data,
where the data set's class count differs from the weights'. Training then normalises its
images as the weights expect (expected_normalization).
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np

from vgg_jax.data.normalization import normalization_name
from vgg_jax.model.architectures import HEAD_FEATURE_NAMES, layer_specs, resolve_model_name
from vgg_jax.weights import convert
from vgg_jax.weights.pretrained import WEIGHTS, converted_variables, read_arrays, weights_file

INIT_LAYERS = ("all", "warm_start")
WARM_START_CONVS = 4  # "the first four convolutional layers" of the source net
HEAD_LAYERS = tuple(name for name in HEAD_FEATURE_NAMES if name != "flatten")  # fc6-fc8
CLASSIFIER = HEAD_LAYERS[-1]  # fc8
WEIGHTS_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".h5")
# The networks a torchvision-layout file can hold, each tried to name the one a file holds.
TORCHVISION_NAMES = tuple(f"vgg{depth}{bn}" for depth in (11, 13, 16, 19) for bn in ("", "_bn"))


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


def names_published_weights(init_from: str) -> bool:
    """Whether config.init_from names published weights (a registry name, or a file with a
    weights suffix, or a name shaped like a registry one) rather than a train.py work
    directory."""
    if init_from in WEIGHTS or pathlib.Path(init_from).suffix.lower() in WEIGHTS_SUFFIXES:
        return True
    looks_like_a_name = "." in init_from and os.sep not in init_from
    return looks_like_a_name and not os.path.exists(init_from)


def expected_normalization(init_from: str) -> str | None:
    """The normalisation (a name of vgg_jax.data.normalization.NORMALIZATIONS) that the weights
    `init_from` names expect: the registry entry's; the Caffe mean pixel for a Keras .h5 file
    (the paper's weights); ImageNet's for a torchvision-layout file; for a train.py work
    directory, the one its config.json records (ImageNet's where it records none). None where
    `init_from` is empty or names nothing that exists."""
    if init_from in WEIGHTS:
        return normalization_name(WEIGHTS[init_from].preprocessing)
    suffix = pathlib.Path(init_from).suffix.lower()
    if suffix in WEIGHTS_SUFFIXES:
        return "caffe" if suffix == ".h5" else "imagenet"
    recorded = pathlib.Path(init_from).expanduser() / "config.json"
    if not init_from or not recorded.is_file():
        return None
    return json.loads(recorded.read_text()).get("normalization", "imagenet")


def check_published_weights(init_from: str, model_name: str) -> None:
    """Raises ValueError, before anything is read, for a registry name that names no weights or
    weights of another network than `model_name`. A file is read where the run starts from it
    (not where it resumes): published_variables says what is wrong with one."""
    if init_from in WEIGHTS:
        weights = WEIGHTS[init_from]
        if resolve_model_name(weights.model) != resolve_model_name(model_name):
            raise ValueError(
                f"{init_from} holds {weights.model}'s weights, and config.model={model_name!r} "
                f"is another network: use {_names_for(model_name) or 'weights of it'}, or "
                f"config.model={weights.model!r}."
            )
    elif pathlib.Path(init_from).suffix.lower() not in WEIGHTS_SUFFIXES:
        raise ValueError(
            f"Unknown pretrained weights {init_from!r}: choose one of {', '.join(WEIGHTS)}, "
            f"give a weights file ({', '.join(WEIGHTS_SUFFIXES)}), or a train.py work directory."
        )


def _names_for(model_name: str) -> str:
    wanted = resolve_model_name(model_name)
    names = [w.name for w in WEIGHTS.values() if resolve_model_name(w.model) == wanted]
    return " or ".join(names)


def published_variables(init_from: str, model_name: str) -> dict:
    """The variables (NumPy arrays) of published weights for a `model_name` network: the
    registry's file (downloaded once, hash-checked) or the file at `init_from`."""
    config, batch_norm = resolve_model_name(model_name)
    if init_from in WEIGHTS:
        weights = WEIGHTS[init_from]
        variables, _ = converted_variables(weights_file(weights), config, batch_norm, weights.layout)
        return variables
    path = pathlib.Path(init_from).expanduser()
    if not path.is_file():
        raise ValueError(f"No weights file at {init_from}.")
    if path.suffix.lower() == ".h5":  # the paper's Caffe weights, as Keras saved them
        if batch_norm:
            raise ValueError(
                f"{init_from} is a Keras file of the paper's Caffe weights, which have no batch "
                f"norm, and config.model={model_name!r} has: use the name without '_bn'."
            )
        return converted_variables(path, config, batch_norm, "keras")[0]
    arrays = read_arrays(path, "torch")
    try:
        return convert.from_torch(arrays, config, batch_norm)
    except convert.ConversionError:
        held = next((name for name in TORCHVISION_NAMES if _holds(arrays, name)), None)
        if held is None:
            raise
        raise ValueError(
            f"{init_from} holds {held}'s weights, and config.model={model_name!r} is another "
            f"network: use config.model={held!r}, or weights of {model_name}."
        ) from None


def _holds(arrays: dict, model_name: str) -> bool:
    try:
        convert.from_torch(arrays, *resolve_model_name(model_name))
    except convert.ConversionError:
        return False
    return True


def fine_tuning_variables(fresh: dict, source: dict) -> tuple[dict, list[str], bool]:
    """(variables, copied layers, whether the classifier starts fresh): every layer of
    `source` copied into `fresh`, but the classifier where its class count differs."""
    ours = fresh["params"][CLASSIFIER]["kernel"].shape[-1]
    theirs = np.shape(source["params"][CLASSIFIER]["kernel"])[-1]
    layers = [name for name in fresh["params"] if not name.endswith("_bn")]
    fresh_head = ours != theirs
    if fresh_head:
        layers.remove(CLASSIFIER)
    return copy_layers(fresh, source, layers), layers, fresh_head
