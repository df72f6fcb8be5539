"""VGG16 with batch norm on Imagenette (10 easy ImageNet classes, ~9.5k training images;
tensorflow-datasets downloads it, 325 MB at 320px): a run of the paper's recipe that fits one
GPU in about an hour. S jittered in [256, 384] (the 320px images' smaller side is 320), 224
crops, flips and PCA lighting; evaluated at Q = 256 with a centre crop.

    python train.py --config=vgg_jax/configs/imagenette.py --workdir=runs/imagenette
"""

from ml_collections import ConfigDict

from vgg_jax.configs import default


def get_config() -> ConfigDict:
    config = default.get_config()
    config.model = "vgg16_bn"  # batch norm: trains from scratch without the paper's warm start
    config.width = 1.0
    config.fc_features = 4096
    config.init_scheme = "kaiming"

    config.dataset = "imagenette/320px-v2"
    config.eval_split = "validation"
    config.train_scale = (256, 384)
    config.crop_size = 224
    config.random_flip = True
    config.pca_lighting = 0.1
    config.eval_scale = 256

    config.batch_size = 128
    config.num_epochs = 60
    config.learning_rate = 0.05  # for a batch of 256, scaled linearly
    config.lr_schedule = "cosine"
    config.warmup_epochs = 2
    config.log_every_steps = 50
    config.checkpoint_every_steps = 500
    return config
