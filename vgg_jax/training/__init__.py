"""Training: the pure train and eval steps, the optimiser and learning rate, metrics,
checkpoints, warm starts, the loop behind train.py and what it reports."""

from vgg_jax._submodules import submodule_loader

__getattr__ = submodule_loader(__name__)  # vgg_jax.training.<module> without importing it
