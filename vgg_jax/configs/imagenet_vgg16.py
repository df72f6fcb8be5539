"""The paper's VGG16 (configuration D) on ImageNet: batch 256, S jittered in [256, 512],
224x224 crops, flips and PCA lighting, learning rate 1e-2 divided by 10 on plateaus, 74 epochs
(Section 3.1); evaluated at Q = 384 (Table 3, jittered S). `--config.model=A` etc. trains the
other configurations the same way; `--config.train_scale="(256, 256)"` `--config.eval_scale=256`
is the fixed-S recipe.

ImageNet must be downloaded by hand: put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in
<data_dir>/downloads/manual/ (tensorflow-datasets' imagenet2012 instructions).
"""

from ml_collections import ConfigDict

from vgg_jax.configs import default


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
