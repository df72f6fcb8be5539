"""Classify image files with a trained VGG and print each one's most likely classes.

    python -m vgg_jax.predict cat.jpg dog.png --weights vgg16.tv_in1k
    python -m vgg_jax.predict digit.png --workdir runs/default --dense

By default an image is rescaled to smaller side Q and its centre crop classified; --dense
runs the whole image through the dense head, averaged with its mirror image (the paper's
dense evaluation).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Sequence

import jax
import numpy as np
from absl import logging as absl_logging
import tensorflow as tf

from vgg_jax import inference
from vgg_jax.checkpoints import CheckpointNotFound
from vgg_jax.evaluate import posterior_function
from vgg_jax.evaluation_data import rescaled_image
from vgg_jax.inference import Classifier
from vgg_jax.preprocessing import is_well_formed
from vgg_jax.protocols import crop_size


def read_image(path: str | pathlib.Path, scale: int) -> np.ndarray:
    """An image file as uint8 RGB rescaled to smaller side `scale`; a clear error for a file
    that is missing or is not a whole JPEG or PNG."""
    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"No image file at {path}.")
    encoded = tf.constant(path.read_bytes())
    if not bool(is_well_formed(encoded)):
        raise ValueError(f"{path} is not a JPEG or PNG image (or the file is cut short).")
    return rescaled_image(encoded, scale).numpy()


def default_scale(classifier: Classifier) -> int:
    """Q: the training config's test scale, else torchvision's ratio (256 for a 224 crop)."""
    crop = crop_size(classifier.model, classifier.variables)
    return classifier.eval_scale or round(crop * 256 / 224)


def predict(
    classifier: Classifier,
    paths: Sequence[str | pathlib.Path],
    dense: bool = False,
    scale: int | None = None,
    top: int = 5,
) -> list[list[tuple[str, int, float]]]:
    """For each image, its `top` classes as (class name, index, probability), most likely
    first."""
    crop = crop_size(classifier.model, classifier.variables)
    scale = scale or default_scale(classifier)
    if scale < crop:
        raise ValueError(f"--scale {scale} is below the model's {crop}-pixel input.")
    protocol = "dense" if dense else "center"
    posteriors_of = posterior_function(classifier, (protocol,), crop)
    images = [read_image(path, scale) for path in paths]  # every file checked before any work
    predictions = []
    for image in images:
        posteriors = jax.device_get(posteriors_of(classifier.variables, image[None]))
        probabilities = np.asarray(posteriors[protocol][0])
        best = np.argsort(-probabilities, kind="stable")[:top]
        predictions.append(
            [(classifier.class_names[i], int(i), float(probabilities[i])) for i in best]
        )
    return predictions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vgg_jax.predict", description="Print the top classes of image files."
    )
    parser.add_argument("images", nargs="+", help="JPEG or PNG files")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--workdir", help="a train.py work directory")
    source.add_argument("--weights", help="pretrained weights: a registry name or a file")
    parser.add_argument("--checkpoint", default="latest", help="latest, best or a step")
    parser.add_argument("--model", help="the network a weights file holds (e.g. vgg16)")
    parser.add_argument("--dense", action="store_true", help="the paper's dense evaluation")
    parser.add_argument("--scale", type=int, help="smaller image side Q before the model")
    parser.add_argument("--top", type=int, default=5, help="how many classes to print")
    args = parser.parse_args(argv)
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax reports every read at WARNING
    try:
        if args.workdir:
            classifier = inference.from_checkpoint(args.workdir, args.checkpoint, args.model)
        else:
            classifier = inference.from_weights(args.weights, args.model)
        predictions = predict(classifier, args.images, args.dense, args.scale, args.top)
    except (ValueError, CheckpointNotFound, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, classes in zip(args.images, predictions, strict=True):
        print(path)
        for rank, (name, index, probability) in enumerate(classes, 1):
            print(f"  {rank}. {100 * probability:6.2f}%  {name} ({index})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
