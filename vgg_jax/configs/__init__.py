"""Training configurations as code (ml_collections), one file each, as in Flax's examples.

`python train.py --config=vgg_jax/configs/default.py --config.batch_size=64` picks a file and
overrides any field; `--config=vgg_jax/configs/imagenet_fixed_scale.py:vgg13` passes an
argument to a file that takes one. `get_config(name, *args)` returns one by name.
"""

import importlib

from vgg_jax.environment import require_training_libraries

require_training_libraries()  # a base install has no ml_collections: name the extra

from ml_collections import ConfigDict


def get_config(name: str = "default", *args) -> ConfigDict:
    return importlib.import_module(f"vgg_jax.configs.{name}").get_config(*args)
