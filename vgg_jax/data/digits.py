"""The handwritten digits scikit-learn carries, as a TFDS dataset built with no download.

1,797 8x8 grey images of the digits 0-9 (`sklearn.datasets.load_digits`, which ships the data
inside the package), upsampled to 32x32 RGB, the smallest input VGG takes. Every fifth image
(index % 5 == 4) is the test split: 359 test and 1,438 training images, the same everywhere.
"""

from __future__ import annotations

import numpy as np

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no TensorFlow Datasets: name the extra

import tensorflow_datasets as tfds

IMAGE_SIZE = 32
_UPSAMPLE = IMAGE_SIZE // 8


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 32, 32, 3), labels int (N,)) from scikit-learn's copy."""
    from sklearn.datasets import load_digits  # only needed to build the dataset once

    digits = load_digits()
    grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # values 0..16 -> 0..255
    grey = grey.repeat(_UPSAMPLE, axis=1).repeat(_UPSAMPLE, axis=2)
    return np.repeat(grey[..., None], 3, axis=-1), digits.target


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits at 32x32 RGB."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: 32x32 RGB, test split = index % 5 == 4."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships inside scikit-learn
        images, labels = digit_images()
        is_test = np.arange(len(labels)) % 5 == 4
        return {
            "train": self._generate_examples(images, labels, np.flatnonzero(~is_test)),
            "test": self._generate_examples(images, labels, np.flatnonzero(is_test)),
        }

    def _generate_examples(self, images, labels, indices):
        for index in indices:
            yield int(index), {"image": images[index], "label": int(labels[index])}
