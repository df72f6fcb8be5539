"""Evaluation: the paper's test protocols, classifiers from checkpoints or weights, evaluation
of a data set (python -m vgg_jax.evaluate) and prediction on files (python -m vgg_jax.predict)."""

from vgg_jax._submodules import submodule_loader

__getattr__ = submodule_loader(__name__)  # vgg_jax.evaluation.<module> without importing it
