"""Classification of image files with a trained VGG: each one's most likely classes.

By default an image is rescaled to smaller side Q and its centre crop classified; dense=True
runs the whole image through the dense head, averaged with its mirror image (the paper's
dense evaluation). `python -m vgg_jax.cli.predict` is its command line.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no TensorFlow: name the extra

import jax
import numpy as np
import tensorflow as tf

from vgg_jax.data.evaluation_data import rescaled_image
from vgg_jax.data.preprocessing import is_well_formed
from vgg_jax.evaluation.inference import Classifier
from vgg_jax.evaluation.protocols import crop_size, posterior_function


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
    posteriors_of = posterior_function(classifier.model, classifier.preprocess, (protocol,), crop)
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
