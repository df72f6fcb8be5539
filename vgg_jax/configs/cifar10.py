"""VGG16 with batch norm on CIFAR-10, the usual recipe for 32x32 images: pad-and-crop style
jitter (smaller side 32-40, random 32x32 crop), flips, cosine schedule over 100 epochs."""

from ml_collections import ConfigDict

from vgg_jax.configs import default


def get_config() -> ConfigDict:
    config = default.get_config()
    config.model = "vgg16_bn"
    config.width = 1.0
    config.fc_features = 512
    config.init_scheme = "kaiming"

    config.dataset = "cifar10"
    config.eval_split = "test"
    config.train_scale = (32, 40)
    config.crop_size = 32
    config.random_flip = True

    config.batch_size = 128
    config.num_epochs = 100
    config.learning_rate = 0.2  # 0.1 at batch 128
    config.lr_schedule = "cosine"
    config.warmup_epochs = 2.0
    config.log_every_steps = 50
    config.checkpoint_every_steps = 1_000
    return config
