"""A small model, optimiser, state and batches shared by the training tests and their workers."""

import pathlib

import jax
import numpy as np
from ml_collections import ConfigDict

from vgg_jax.model.vgg import model_from_config
from vgg_jax.training import steps
from vgg_jax.training.checkpoints import Checkpoints
from vgg_jax.configs import get_config

IMAGE_SHAPE = (32, 32, 3)


def small_config(**overrides) -> ConfigDict:
    config = get_config()
    config.update(
        dict(width=1 / 16, fc_features=16, dropout_rate=0.0, batch_size=8, learning_rate=0.5,
             lr_schedule="step", num_epochs=1)
    )  # fmt: skip
    config.update(overrides)
    return config


def small_training_setup(batch_norm: bool, **overrides):
    """(setup, state) of a small VGG-A (with batch norm: vgg11_bn) on 10 classes."""
    config = small_config(model="vgg11_bn" if batch_norm else "vgg11", init_scheme="glorot",
                          **overrides)  # fmt: skip
    model = model_from_config(config, num_classes=10)
    return steps.init_training(config, model, IMAGE_SHAPE, steps_per_epoch=10)


def global_batches(steps: int = 3, batch_size: int = 8):
    rng = np.random.default_rng(42)
    for _ in range(steps):
        images = rng.integers(0, 256, size=(batch_size, *IMAGE_SHAPE), dtype=np.uint8)
        yield images, rng.integers(0, 10, size=batch_size).astype(np.int32)


def flat_arrays(tree) -> dict:
    """{"params/conv1_1/kernel": array, ...} for a pytree of nested dicts."""
    return {
        "/".join(key.key for key in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def tiny_config(digits_dir, **overrides) -> ConfigDict:
    """The default config, shrunk: 22 steps per epoch of a 1/16-width VGG-A, with the paper's
    augmentation (scale jitter, random crop, flip, PCA lighting) so resuming must replay it."""
    config = get_config()
    config.update(
        data_dir=digits_dir, width=1 / 16, fc_features=32, num_epochs=2, lr_schedule="paper",
        learning_rate=0.4, log_every_steps=5, checkpoint_every_steps=10, keep_checkpoints=1,
        train_scale=(32, 40), crop_size=32, random_flip=True, pca_lighting=0.1,
    )  # fmt: skip
    config.update(overrides)
    return config


def saved_state(workdir, step=None):
    """The train state saved in a work directory (the latest checkpoint by default), as
    nested dicts of NumPy arrays."""
    store = Checkpoints(pathlib.Path(workdir) / "checkpoints", read_only=True)
    state = store.restore_arrays(step if step is not None else store.steps()[-1])
    store.close()
    return state
