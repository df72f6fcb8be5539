"""The network: the configuration table (Table 1), its layers and initialisers, the VGG module,
and what a model costs. Imports nothing from the rest of vgg_jax; its modules load on first use."""

from vgg_jax._submodules import submodule_loader

__getattr__ = submodule_loader(__name__)  # vgg_jax.model.<module> without importing it
