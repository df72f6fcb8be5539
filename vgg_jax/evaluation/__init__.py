"""Evaluation: the paper's test protocols, classifiers from checkpoints or weights (inference),
evaluation of a data set (on_dataset; the command vgg_jax.cli.evaluate) and prediction on image
files (on_files; the command vgg_jax.cli.predict)."""

from vgg_jax._submodules import submodule_loader

__getattr__ = submodule_loader(__name__)  # vgg_jax.evaluation.<module> without importing it
