"""The paper's fixed-scale ImageNet training (S = 256, Table 3's first rows) for any of its
configurations: `:vgg11` (A, the default), `:vgg11_lrn`, `:vgg13`, `:vgg16_1x1` (C), `:vgg16`,
`:vgg19`, evaluated at Q = 256.

    python train.py --config=vgg_jax/configs/imagenet_fixed_scale.py:vgg13 --workdir=runs/b256
"""

from ml_collections import ConfigDict

from vgg_jax.architectures import resolve_model_name
from vgg_jax.configs import imagenet_vgg16


def get_config(model: str = "vgg11") -> ConfigDict:
    resolve_model_name(model)  # an unknown name fails here, listing the valid ones
    config = imagenet_vgg16.get_config()
    config.model = model
    config.train_scale = (256, 256)
    config.eval_scale = 256
    return config
