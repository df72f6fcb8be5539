"""The configurations shipped in vgg_jax/configs: valid, building the intended networks."""

import jax
import jax.numpy as jnp
import pytest
from helpers import run_python
from tfds_mocks import mocked_tfds

from vgg_jax.configs import get_config
from vgg_jax.data import pipeline, sources
from vgg_jax.model.costs import count_params
from vgg_jax.training.checkpoints import upgraded_record
from vgg_jax.training.loop import TrainingError, train_and_evaluate, validate_config
from vgg_jax.training.sections import read_config


def abstract_params(config, num_classes, input_shape):
    model = read_config(config).model.build(num_classes)
    images = jax.ShapeDtypeStruct((1, *input_shape), jnp.float32)
    return model, jax.eval_shape(model.init, jax.random.key(0), images)


def test_paper_imagenet_config_is_vgg16_with_the_papers_recipe():
    config = get_config("imagenet_vgg16")
    validate_config(config)
    model, variables = abstract_params(config, 1000, (224, 224, 3))
    assert count_params(variables["params"]) == 138_357_544  # PAPER.md, configuration D
    assert (config.batch_size, config.learning_rate, config.lr_schedule) == (256, 0.01, "paper")
    augmentation = pipeline.augmentation_from_config(read_config(config).data)
    assert augmentation.scale == (256, 512) and augmentation.crop == 224
    assert augmentation.flip and augmentation.pca_sigma == 0.1
    assert pipeline.eval_preprocessing_from_config(read_config(config).data).scale == 384


@pytest.mark.parametrize(
    "model, expected_params",
    [("vgg11", 132_863_336), ("vgg13", 133_047_848), ("vgg16_1x1", 133_638_952),
     ("vgg16", 138_357_544), ("vgg19", 143_667_240)],
)  # fmt: skip
def test_fixed_scale_configs_build_each_configuration(model, expected_params):
    config = get_config("imagenet_fixed_scale", model)
    validate_config(config)
    _, variables = abstract_params(config, 1000, (224, 224, 3))
    assert count_params(variables["params"]) == expected_params  # PAPER.md's counts
    assert pipeline.augmentation_from_config(read_config(config).data).scale == (256, 256)
    assert config.eval_scale == 256 and config.init_scheme == "paper"
    # The paper's warm start: B-E begin from the net A that the `:vgg11` config trains.
    if model == "vgg11":
        assert config.init_from == ""
    else:
        assert (config.init_from, config.init_layers) == ("runs/vgg11_s256", "warm_start")
    with pytest.raises(ValueError, match="Unknown VGG configuration 'vgg17'"):
        get_config("imagenet_fixed_scale", "vgg17")


def test_fine_tune_configs_continue_from_the_previous_scale():
    at_384 = get_config("imagenet_fine_tune", "vgg16,384")
    jittered = get_config("imagenet_fine_tune", "vgg19,jittered")
    for config in (at_384, jittered):
        validate_config(config)
        assert config.learning_rate == 1e-3 and config.init_layers == "all"
        assert config.eval_scale == 384
    assert (at_384.model, at_384.train_scale, at_384.init_from) == (
        "vgg16",
        (384, 384),
        "runs/vgg16_s256",
    )
    assert (jittered.model, jittered.train_scale, jittered.init_from) == (
        "vgg19",
        (256, 512),
        "runs/vgg19_s384",
    )
    with pytest.raises(ValueError, match="MODEL,STAGE"):
        get_config("imagenet_fine_tune", "vgg16,512")


def test_imagenette_recipe_reads_imagenette_through_tfds(tmp_path):
    config = get_config("imagenette")
    validate_config(config)
    _, variables = abstract_params(config, 10, (224, 224, 3))
    assert count_params(variables["params"]) == 134_309_962  # VGG16-BN with a 10-class FC8
    with mocked_tfds(config.dataset, tmp_path, examples=8):
        builder = sources.get_builder(config.dataset, str(tmp_path))
        info = sources.describe(builder, config.train_split, config.eval_split)
        assert info.num_classes == 10 and info.image_shape == (None, None, 3)
        assert pipeline.model_input_shape(read_config(config).data, info) == (224, 224, 3)
        augmentation = pipeline.augmentation_from_config(read_config(config).data)
        batch = next(
            pipeline.train_batches(builder, "train", 8, 0, 0, augmentation=augmentation)
        )
        assert batch["image"].shape == (4, 2, 224, 224, 3) and batch["lighting"].shape == (4, 2, 3)


@pytest.mark.parametrize("name", ["default", "imagenet_vgg16", "cifar10", "imagenette"])
def test_batch_norm_is_chosen_by_the_model_name_alone(name):
    config = get_config(name)
    assert "batch_norm" not in config
    for model, expected in [("vgg16_bn", ("D", True)), ("vgg16", ("D", False)),
                            ("vgg16_1x1_bn", ("C", True)), ("A-LRN_bn", ("A-LRN", True))]:
        config.model = model
        built = read_config(config).model.build(10)
        assert (built.config, built.batch_norm) == expected
    config.batch_norm = True  # a config written before the field went: one clear error
    with pytest.raises(TrainingError, match="batch norm is chosen by the model name"):
        validate_config(config)


def test_checkpoints_saved_with_a_batch_norm_field_read_as_the_bn_model():
    old = {"config": {"model": "vgg16", "batch_norm": True}, "step": 3}
    assert upgraded_record(old)["config"] == {"model": "vgg16_bn"}
    assert upgraded_record({"config": {"model": "vgg11", "batch_norm": False}})["config"] == {
        "model": "vgg11"
    }


def test_cifar10_recipe_trains_through_the_real_tfds_path(tmp_path):
    config = get_config("cifar10")
    config.update(data_dir=str(tmp_path / "tfds"), width=1 / 16, fc_features=16, batch_size=8,
                  max_steps=3, num_epochs=1)  # fmt: skip
    with mocked_tfds("cifar10", tmp_path / "tfds", examples=16):
        summary = train_and_evaluate(config, tmp_path / "run")
    assert summary["step"] == 2 and summary["finished"]  # 16 examples: 2 batches of 8
    # Two steps teach nothing; what can be checked is that the evaluation counted each of
    # the 16 test examples once: accuracies in sixteenths.
    for accuracy in (summary["best_top1_accuracy"], summary["best_top5_accuracy"]):
        assert (16 * accuracy).is_integer() and 0 <= accuracy <= 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "vgg16_bn on cifar10: 16 train / 16 eval examples, 10 classes, 32x32x3 images" in log


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("seed", -1, "config.seed must be a non-negative integer, got -1."),
        (
            "dtype",
            "float8",
            "config.dtype must be one of auto, float32, bfloat16, float16; got 'float8'.",
        ),
    ],
)
def test_an_invalid_seed_or_dtype_is_one_line_naming_the_field(field, value, message):
    config = get_config()
    config[field] = value
    with pytest.raises(TrainingError) as raised:
        validate_config(config)
    assert str(raised.value) == message


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"train_scale": (256, 512), "crop_size": 384},
            "config.crop_size=384 is larger than the smallest training scale "
            "(config.train_scale=(256, 512)): use S_min >= 384, or a smaller crop.",
        ),
        (
            {"inception_crop": True, "train_scale": (256, 512), "crop_size": 224},
            "config.inception_crop replaces scale jittering: give config.crop_size (e.g. 224) "
            "and config.train_scale=().",
        ),
        ({"inception_crop": True, "crop_size": 0}, "config.inception_crop replaces"),
    ],
)
def test_augmentation_fields_that_cannot_work_together_are_refused_at_the_boundary(
    overrides, message
):
    """Before any data is read (TrainAugmentation would refuse them only once the pipeline is
    built, with TensorFlow loaded and the work directory held)."""
    config = get_config()
    config.update(overrides)
    with pytest.raises(TrainingError) as raised:
        validate_config(config)
    assert str(raised.value).startswith(message)


def test_the_config_check_starts_no_jax_backend():
    """train.py checks the config before jax.distributed.initialize, which must come first."""
    code = (
        "from jax._src import xla_bridge; from vgg_jax.configs import get_config; "
        "from vgg_jax.training.sections import read_config; read_config(get_config()); "
        "print(xla_bridge.backends_are_initialized())"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "False"


def test_the_fine_tuning_config_starts_from_torchvisions_vgg16_bn_with_a_fresh_classifier():
    config = get_config("fine_tune")
    validate_config(config)
    sections = read_config(config)
    assert (sections.run.init_from, sections.model.model) == ("vgg16_bn.tv_in1k", "vgg16_bn")
    assert sections.optimizer.copied_lr_multiplier == 0.1 and sections.model.trainable == "all"
    augmentation = pipeline.augmentation_from_config(sections.data)
    assert augmentation.crop == 224 and augmentation.flip
    model, variables = abstract_params(config, 37, (224, 224, 3))
    assert variables["params"]["fc8"]["kernel"].shape == (4096, 37)
    assert count_params(variables["params"]) == 138_365_992 - 1000 * 4097 + 37 * 4097
