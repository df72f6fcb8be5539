"""The paper's fine-tuned ImageNet nets (Section 3.1, Table 3's last two columns): a net
trained at S = 256 fine-tuned at S = 384, and that one fine-tuned with scale jittering
(S in [256, 512]), every layer copied and the learning rate 1e-3. The argument is
"MODEL,384" or "MODEL,jittered":

    python train.py --config=vgg_jax/configs/imagenet_fine_tune.py:vgg16,384 \
        --workdir=runs/vgg16_s384
    python train.py --config=vgg_jax/configs/imagenet_fine_tune.py:vgg16,jittered \
        --workdir=runs/vgg16_s256-512

They start from runs/MODEL_s256 and runs/MODEL_s384 (the work directories of the commands in
imagenet_fixed_scale.py and above); `--config.init_from=DIR` names another. Both are
evaluated at Q = 384.
"""

from ml_collections import ConfigDict

from vgg_jax.configs import imagenet_fixed_scale

STAGES = {  # stage -> (S range, the stage it starts from)
    "384": ((384, 384), "s256"),
    "jittered": ((256, 512), "s384"),
}


def get_config(argument: str = "vgg16,384") -> ConfigDict:
    model, _, stage = argument.partition(",")
    if stage not in STAGES:
        raise ValueError(
            f"Give MODEL,STAGE with STAGE one of {', '.join(STAGES)} (e.g. vgg16,384); got "
            f"{argument!r}."
        )
    train_scale, previous = STAGES[stage]
    config = imagenet_fixed_scale.get_config(model)
    config.train_scale = train_scale
    config.eval_scale = 384
    config.learning_rate = 1e-3
    config.init_from = f"runs/{model}_{previous}"
    config.init_layers = "all"
    return config
