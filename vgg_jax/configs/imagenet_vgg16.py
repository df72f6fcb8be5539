"""The paper's VGG16 (configuration D) on ImageNet: batch 256, S jittered in [256, 512],
224x224 crops, flips and PCA lighting, learning rate 1e-2 divided by 10 on plateaus, 74 epochs
(Section 3.1); evaluated at Q = 384 (Table 3, jittered S). `--config.model=A` etc. trains the
other configurations the same way; `--config.train_scale="(256, 256)"` `--config.eval_scale=256`
is the fixed-S recipe.

ImageNet must be downloaded by hand: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
<data_dir>/downloads/manual/ (tensorflow-datasets' imagenet2012 instructions).

On one GPU instead of the paper's four, keep batch_size=256 (the learning rate's) and, where the
step does not fit, accumulate micro-batches: `--config.grad_accum_steps=2` on a 16 GB T4 or V100
(float16); none on a 24 GB card of compute capability 8.0 or later (bfloat16): ONE_GPU below.
train.py checks the step's memory on the GPU itself at start and, if it does not fit, names the
settings that do.
"""

from ml_collections import ConfigDict

from vgg_jax.configs import default

# grad_accum_steps by the GPU vgg-jax-plan names (--topology), each the smallest power of two
# whose step, in dtype "auto", fits the memory JAX takes of the card in the GPU compiler's own
# analysis (tests/training/test_gpu_plans.py compiles it, and the one with half the factor,
# which does not fit). What the compile cannot see (cuDNN's workspaces, the autotuner's
# choices: docs/hardware.md) is for train.py's check on the card to catch.
ONE_GPU = {"t4": 2, "l4": 1}


def get_config() -> ConfigDict:
    config = default.get_config()
    config.model = "vgg16"
    config.width = 1.0
    config.fc_features = 4096
    config.init_scheme = "kaiming"  # trains D from scratch, without the paper's warm start

    config.dataset = "imagenet2012"
    config.eval_split = "validation"
    config.train_scale = (256, 512)
    config.crop_size = 224
    config.random_flip = True
    config.pca_lighting = 0.1
    config.eval_scale = 384

    config.batch_size = 256
    config.num_epochs = 74
    config.learning_rate = 0.01
    config.lr_schedule = "paper"
    config.lr_plateau_patience = 2
    config.log_every_steps = 100
    config.checkpoint_every_steps = 2_000
    return config
