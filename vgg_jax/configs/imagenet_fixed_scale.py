"""The paper's fixed-scale ImageNet training (S = 256, Table 3's first rows) for any of its
configurations: `:vgg11` (A, the default), `:vgg11_lrn`, `:vgg13`, `:vgg16_1x1` (C), `:vgg16`,
`:vgg19`, evaluated at Q = 256. Weights start from N(0, 0.01) (the paper's init); the deeper
nets (B-E) are warm-started from a trained net A, as the paper did (vgg_jax.training.warm_start):

    python train.py --config=vgg_jax/configs/imagenet_fixed_scale.py:vgg11 --workdir=runs/vgg11_s256
    python train.py --config=vgg_jax/configs/imagenet_fixed_scale.py:vgg16 --workdir=runs/vgg16_s256

`--config.init_from=DIR` takes net A from another work directory; `--config.init_from=''`
trains a deep net from random weights instead (use init_scheme glorot or kaiming then: the
paper notes N(0, 0.01) needs the warm start). Then imagenet_fine_tune.py continues at S = 384
and with scale jittering.
"""

from ml_collections import ConfigDict

from vgg_jax.configs import imagenet_vgg16
from vgg_jax.model.architectures import resolve_model_name

WARM_START_FROM = "runs/vgg11_s256"  # where the first command above trains net A


def get_config(model: str = "vgg11") -> ConfigDict:
    paper_config, _ = resolve_model_name(model)  # an unknown name fails here, listing them
    config = imagenet_vgg16.get_config()
    config.model = model
    config.init_scheme = "paper"
    config.train_scale = (256, 256)
    config.eval_scale = 256
    if paper_config not in ("A", "A-LRN"):
        config.init_from = WARM_START_FROM
        config.init_layers = "warm_start"
    return config
