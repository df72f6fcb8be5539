"""Trained classifiers ready to use, from a train.py work directory or from pretrained weights.

    classifier = vgg_jax.inference.from_checkpoint("runs/default")          # latest checkpoint
    classifier = vgg_jax.inference.from_weights("vgg16.tv_in1k")            # published weights
    logits = classifier.model.apply(classifier.variables, classifier.preprocess(uint8_images))

A Classifier carries what inference needs besides the network: the preprocessing its weights
expect (uint8 RGB -> model input), its class names, and the data it was trained on.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no ml_collections: name the extra

import jax
import jax.numpy as jnp

from vgg_jax.data.normalization import NORMALIZATIONS
from vgg_jax.data.sources import class_names
from vgg_jax.model.architectures import resolve_model_name
from vgg_jax.model.dtypes import compute_dtype
from vgg_jax.model.vgg import VGG, create_model
from vgg_jax.training.checkpoints import read_trained_variables
from vgg_jax.training.sections import read_saved_config
from vgg_jax.weights import pretrained


@dataclasses.dataclass(frozen=True)
class Classifier:
    name: str  # what the reports call it: the work directory and step, or the weights' name
    model: VGG
    variables: dict
    preprocess: Callable[[jax.Array], jax.Array]  # uint8 RGB images -> the model's input
    class_names: tuple[str, ...]
    dataset: str  # the data set it was trained on (the default to evaluate on) ...
    data_dir: str
    eval_split: str  # ... and its split for evaluation
    eval_scale: int  # the test scale Q its training config evaluated at


def _description(config: str, batch_norm: bool) -> str:
    return f"configuration {config}{' with batch norm' if batch_norm else ''}"


def check_expected_model(found: VGG, expected: str | None, where: str) -> None:
    """A model name asked for must be the network the weights are for."""
    if expected is None:
        return
    wanted = resolve_model_name(expected)
    if wanted != (found.config, found.batch_norm):
        raise ValueError(
            f"{where} holds a VGG of {_description(found.config, found.batch_norm)}, not "
            f"{expected} ({_description(*wanted)}): drop the model option or point it at the "
            f"right run."
        )


def from_checkpoint(
    workdir: str | pathlib.Path, checkpoint: str | int = "latest", model: str | None = None
) -> Classifier:
    """The network of a train.py run with the variables of one of its checkpoints ("latest",
    "best" or a step). `model`, if given, must name the network the run trained."""
    variables, saved, step = read_trained_variables(workdir, checkpoint)
    config = read_saved_config(saved)
    num_classes = int(variables["params"]["fc8"]["kernel"].shape[-1])
    network = config.model.build(num_classes)
    check_expected_model(network, model, f"The checkpoint in {workdir}")
    pretrained.check_shapes(variables, network)
    return Classifier(
        name=f"{workdir} (step {step})",
        model=network,
        variables=jax.tree.map(jnp.asarray, variables),
        preprocess=NORMALIZATIONS[config.data.normalization],
        class_names=class_names(config.data.dataset, config.data.data_dir, num_classes),
        dataset=config.data.dataset,
        data_dir=config.data.data_dir,
        eval_split=config.data.eval_split,
        eval_scale=config.data.test_scale,
    )


def from_weights(
    weights: str, model: str | None = None, download: bool = True, dtype: str = "auto"
) -> Classifier:
    """Published weights by registry name ("vgg16.tv_in1k", see vgg_jax.PRETRAINED_WEIGHTS),
    or a weights file (.pth, .safetensors, Keras .h5) of the network `model` names."""
    # Published weights were trained in float32 (Caffe's on 0-255 inputs): "auto" does not
    # compute them in float16, whose range they were never checked against.
    resolved = compute_dtype(dtype)
    options = {"dtype": jnp.float32 if dtype == "auto" and resolved == jnp.float16 else resolved}
    if weights in pretrained.WEIGHTS:
        check_expected_model(create_model(pretrained.WEIGHTS[weights].model), model, weights)
        network, variables, preprocess = pretrained.load_pretrained(
            weights, download=download, **options
        )
    elif pathlib.Path(weights).expanduser().is_file():
        if model is None:
            raise ValueError(f"Say which network {weights} holds: a model name such as vgg16.")
        path = pathlib.Path(weights).expanduser()
        network, variables, preprocess = pretrained.model_from_file(path, model, **options)
    else:
        raise ValueError(
            f"{weights!r} is neither a weights file nor a known name; the known ones are "
            f"{', '.join(pretrained.WEIGHTS)}."
        )
    return Classifier(
        name=weights,
        model=network,
        variables=variables,
        preprocess=preprocess,
        class_names=class_names("imagenet2012", None, network.num_classes),
        dataset="imagenet2012",
        data_dir="",
        eval_split="validation",
        eval_scale=256,
    )
