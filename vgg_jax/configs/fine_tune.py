"""Fine-tuning torchvision's ImageNet VGG16 with batch norm on your own image folder
(root/<split>/<class>/*.jpg): every layer copied from vgg16_bn.tv_in1k but the classifier,
which starts fresh with one output per class folder; the copied layers learn at a tenth of the
classifier's rate. torchvision's transfer-learning augmentation at 224: random-resized crops
and flips; evaluated at Q = 256 with a 224 centre crop.

    python train.py --config=vgg_jax/configs/fine_tune.py --config.dataset=./pets \
        --config.eval_split=val --workdir=runs/pets

`--config.trainable=classifier` trains fc8 alone (a linear probe on fc7's features, several
times faster a step); `--config.trainable=conv5_1` the last block and the head.
"""

from ml_collections import ConfigDict

from vgg_jax.configs import default


def get_config() -> ConfigDict:
    config = default.get_config()
    config.model = "vgg16_bn"
    config.width = 1.0
    config.fc_features = 4096
    config.init_scheme = "kaiming"  # the fresh classifier's
    config.init_from = "vgg16_bn.tv_in1k"
    config.trainable = "all"

    config.dataset = "./images"  # give yours: --config.dataset=./pets
    config.eval_split = "val"
    config.train_scale = ()
    config.inception_crop = True
    config.crop_size = 224
    config.random_flip = True
    config.eval_scale = 256

    config.batch_size = 32
    config.num_epochs = 10
    config.learning_rate = 0.08  # for a batch of 256: the classifier's 0.01 at 32
    config.copied_lr_multiplier = 0.1
    config.lr_schedule = "cosine"
    config.warmup_epochs = 1
    config.weight_decay = 1e-4
    config.log_every_steps = 20
    config.checkpoint_every_steps = 500
    return config
