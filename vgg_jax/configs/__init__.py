"""Training configurations as code (ml_collections), one file each, as in Flax's examples.

`python train.py --config=vgg_jax/configs/default.py --config.batch_size=64` picks a file and
overrides any field. `get_config(name)` returns one by name.
"""

import importlib

from ml_collections import ConfigDict


def get_config(name: str = "default") -> ConfigDict:
    return importlib.import_module(f"vgg_jax.configs.{name}").get_config()
