"""The offline default: a narrow VGG-A on scikit-learn's digits (32x32), minutes on a CPU."""

from ml_collections import ConfigDict


def get_config() -> ConfigDict:
    """Every field of a training config, with its default, grouped as the sections they are
    read into (vgg_jax.training.sections); each group's comments say what its fields mean."""
    config = ConfigDict()
    _model(config)
    _data(config)
    _optimisation(config)
    _bookkeeping(config)
    return config


def _model(config: ConfigDict) -> None:
    # Model: any name or paper letter of vgg_jax.create_model; "_bn" at the end adds batch
    # norm after every conv ("vgg16_bn", "vgg11_bn", "A-LRN_bn").
    # Configuration A with batch norm, and (below) a rate of 0.1 warmed up over 2 epochs: the
    # plain net at 0.2 ended at 88.6-98.6% depending on float rounding (dtype, XLA flags), and
    # at 0.2 even batch norm's evaluations dipped 14 points at epoch 3 on one seed.
    # benchmarks/recipe_sweep.py runs the matrix this recipe holds on (README: Reproducibility).
    config.model = "vgg11_bn"
    config.width = 0.25  # conv widths 16, 32, 64, 128, 128
    config.fc_features = 256
    config.dropout_rate = 0.5
    # Glorot: with FC layers this narrow, torchvision's N(0, 0.01) FC init leaves the logits
    # so small that the net does not start learning within the default run.
    config.init_scheme = "glorot"
    # Compute dtype: "auto" is bfloat16 on TPUs and GPUs of compute capability 8.0 and up,
    # float16 (with dynamic loss scaling) on older GPUs such as the T4 and V100, float32 on
    # CPUs; or "float32", "bfloat16", "float16".
    config.dtype = "auto"
    # Recompute each conv block in the backward pass instead of keeping its activations, to
    # lower the peak memory where XLA's scheduler lets it (not on CPUs); about 33% more FLOPs
    # for VGG16 (vgg_jax.model.vgg.REMAT_POLICY).
    config.remat = False
    # What trains: "all"; "classifier" (fc8 alone: a linear probe on fc7's features); "head"
    # (fc6-fc8); or the lowest layer that trains, every layer above it training too (e.g.
    # "conv5_1"). Layers below are frozen: no update, no weight decay, their batch-norm
    # statistics fixed, and nothing of them differentiated.
    config.trainable = "all"


def _data(config: ConfigDict) -> None:
    # Data: a TFDS name, or "digits" (built locally from scikit-learn, no download).
    config.dataset = "digits"
    config.data_dir = ""  # TFDS's default (~/tensorflow_datasets) when empty
    config.train_split = "train"
    config.eval_split = "test"
    config.shuffle_buffer_size = 16_384
    # Preprocessing (Sections 3.1-3.2); the digits are used as stored, already 32x32.
    config.train_scale = ()  # (S_min, S_max): smaller side rescaled to S in it; () keeps it
    config.crop_size = 0  # random crop in training, centre crop in evaluation; 0: whole image
    config.random_flip = False  # digits are not mirror-symmetric
    config.pca_lighting = 0.0  # sigma of AlexNet's colour noise (the paper's recipe: 0.1)
    # The model's input: "imagenet" (ImageNet's mean and deviation per channel subtracted and
    # divided, as torchvision's weights expect) or "caffe" (the mean pixel subtracted, as the
    # paper's Caffe weights expect). "auto": what config.init_from's weights expect, else
    # "imagenet". The run records the choice; evaluate and predict apply it.
    config.normalization = "auto"
    # Inception-style random-resized crops of crop_size instead of the paper's S and crop.
    config.inception_crop = False
    config.eval_scale = 0  # Q: smaller side before the centre crop; 0 keeps it


def _optimisation(config: ConfigDict) -> None:
    # Optimisation (Section 3.1): SGD, momentum 0.9, L2 5e-4 on kernels.
    config.batch_size = 64  # global, over all devices and hosts
    # Split each device's share of the batch into this many micro-batches, run one after
    # another, and average their gradients: one step over the whole batch, with the activations
    # of one micro-batch at a time. The learning rate still scales with batch_size.
    config.grad_accum_steps = 1
    config.num_epochs = 12
    config.max_steps = 0  # stop early after this many steps in all (0: no limit)
    config.learning_rate = 0.1  # for a batch of 256; scaled by batch_size / 256
    config.lr_schedule = "cosine"  # "paper" (divide by 10 on plateau), "step", "cosine"
    config.warmup_epochs = 2.0  # cosine
    config.lr_step_epochs = (6, 10)  # step: epochs at which the rate is multiplied ...
    config.lr_step_factor = 0.1  # ... by this
    config.lr_plateau_patience = 2  # paper: evaluations without improvement before a decay
    config.momentum = 0.9
    config.nesterov = False
    config.weight_decay = 5e-4
    config.grad_clip_norm = 0.0  # 0: no clipping
    # The learning rate of every trained layer but the classifier (fc8), as a multiple of the
    # classifier's: below 1 (e.g. 0.1) when fine-tuning copied layers under a new head.
    config.copied_lr_multiplier = 1.0


def _bookkeeping(config: ConfigDict) -> None:
    # Starting point (Section 3.1), used when the workdir has no checkpoint yet: the latest
    # checkpoint of another train.py run, or published weights (a registry name such as
    # "vgg16_bn.tv_in1k", or a torchvision-layout .pth/.safetensors file). init_layers "all" copies every layer (fine-tuning, as
    # the paper's S=384 and scale-jittered nets); "warm_start" copies the first four convs and
    # the three FC layers of a net A into a deeper one (vgg_jax.training.warm_start has the
    # mapping).
    config.init_from = ""  # a --workdir, weights name or file; "" starts from random weights
    config.init_layers = "all"

    # Bookkeeping.
    config.seed = 0
    config.log_every_steps = 20
    config.checkpoint_every_steps = 200  # and at the end of every epoch
    config.keep_checkpoints = 3  # the latest ones; the best by validation top-1 is kept too
