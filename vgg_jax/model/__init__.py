"""The network: the configuration table (Table 1), its layers and initialisers, the VGG module,
and what a model costs. Imports nothing from the rest of vgg_jax."""
