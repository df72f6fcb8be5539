"""Starting a run from published weights (config.init_from: a registry name or a weights file):
every layer copied, a fresh classifier where the class counts differ, the names that cannot
work refused before anything is read, and the images normalised as the weights expect."""

import dataclasses
import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest
from helpers import (
    IMAGE_SHAPE,
    flat_arrays,
    global_batches,
    small_config,
    small_training_setup,
)

from vgg_jax.data.normalization import CAFFE_NORMALIZATION, NORMALIZATIONS, Normalization
from vgg_jax.training import warm_start
from vgg_jax.training.reports import TrainingError
from vgg_jax.training.sections import read_config, read_saved_config
from vgg_jax.training.start import check_same_architecture, start_from_weights, validate_config
from vgg_jax.training.steps import init_training, pmapped_steps
from vgg_jax.weights.pretrained import save_safetensors


def state_for(classes: int, seed: int, **overrides):
    config = read_config(small_config(init_scheme="glorot", seed=seed, **overrides))
    model = config.model.build(classes)
    return config, init_training(config, model, IMAGE_SHAPE, steps_per_epoch=10)[1]


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A narrow VGG-A with batch norm on 10 classes, saved as torchvision-layout safetensors:
    (path, its variables)."""
    config, state = state_for(10, seed=1, model="vgg11_bn")
    path = tmp_path_factory.mktemp("weights") / "vgg11_bn_digits.safetensors"
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    save_safetensors(variables, config.model.build(10), path)
    return path, jax.device_get(variables)


@pytest.mark.parametrize("classes", [10, 5])
def test_every_layer_is_copied_and_a_new_class_count_gets_a_fresh_classifier(
    weights_file, classes
):
    path, saved = weights_file
    config, fresh = state_for(classes, seed=2, model="vgg11_bn", init_from=str(path))
    started = start_from_weights(config, fresh)
    ours = flat_arrays({"params": started.params, "batch_stats": started.batch_stats})
    theirs = flat_arrays(saved)
    untouched = flat_arrays({"params": fresh.params})
    for name, array in ours.items():
        if classes != 10 and name.startswith("params/fc8/"):
            np.testing.assert_array_equal(array, untouched[name])  # the fresh head
            assert array.shape[-1] == classes
        else:
            np.testing.assert_array_equal(array, theirs[name], err_msg=name)
    # The fresh state's other layers differed from the file's: the copy is what made them equal.
    assert not np.array_equal(untouched["params/conv1_1/kernel"], theirs["params/conv1_1/kernel"])


def config_with(init_from: str, **overrides):
    return small_config(init_from=init_from, **overrides)


@pytest.mark.parametrize(
    "init_from, model, words",
    [("vgg16.nonsense_in1k", "vgg16", "Unknown pretrained weights 'vgg16.nonsense_in1k': "
      "choose one of vgg11.tv_in1k"),
     ("vgg19.tv_in1k", "vgg16", "vgg19.tv_in1k holds vgg19's weights, and config.model='vgg16' "
      "is another network: use vgg16.tv_in1k or vgg16.caffe_in1k"),
     ("vgg16.caffe_in1k", "vgg16_bn", "vgg16.caffe_in1k holds vgg16's weights, and "
      "config.model='vgg16_bn' is another network: use vgg16_bn.tv_in1k")],
)  # fmt: skip
def test_names_that_cannot_work_are_refused_before_anything_is_read(init_from, model, words):
    with pytest.raises(TrainingError, match="config.init_from=") as error:
        validate_config(config_with(init_from, model=model))
    assert words in str(error.value)
    assert "\n" not in str(error.value)


def test_a_file_of_another_network_or_not_of_weights_is_refused(weights_file, tmp_path):
    path, _ = weights_file
    config, fresh = state_for(10, seed=2, model="vgg13_bn", init_from=str(path))
    with pytest.raises(TrainingError, match="vgg11_bn_digits.safetensors holds vgg11_bn's "
                       "weights, and config.model='vgg13_bn' is another network"):
        start_from_weights(config, fresh)
    garbage = tmp_path / "not_weights.pth"
    garbage.write_bytes(b"these are not weights")
    config, fresh = state_for(10, seed=2, model="vgg11_bn", init_from=str(garbage))
    with pytest.raises(TrainingError, match="Could not read .*not_weights.pth"):
        start_from_weights(config, fresh)
    config, fresh = state_for(10, seed=2, model="vgg11_bn", init_from=str(tmp_path / "no.pth"))
    with pytest.raises(TrainingError, match="No weights file at .*no.pth"):
        start_from_weights(config, fresh)


def test_work_directories_stay_work_directories():
    assert not warm_start.names_published_weights("runs/vgg11_s256")
    assert warm_start.names_published_weights("vgg16_bn.tv_in1k")
    assert warm_start.names_published_weights("./my weights/vgg16.safetensors")


# ------------------------------------------------------------ the normalisation they expect


@pytest.mark.parametrize(
    "init_from, expected",
    [("", "imagenet"), ("vgg16.tv_in1k", "imagenet"), ("vgg16.caffe_in1k", "caffe"),
     ("weights/vgg16.safetensors", "imagenet"), ("weights/vgg16.pth", "imagenet"),
     ("weights/vgg16_caffe.h5", "caffe")],
)  # fmt: skip
def test_auto_normalisation_is_what_the_starting_weights_expect_and_is_recorded(
    init_from, expected
):
    config = read_config(small_config(model="vgg16", init_from=init_from))
    assert config.data.normalization == expected
    assert json.loads(config.to_json())["normalization"] == expected  # config.json's
    assert read_saved_config(config.as_dict()).data.normalization == expected


def test_a_work_directory_passes_on_the_normalisation_it_recorded(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"normalization": "caffe"}))
    assert read_config(small_config(init_from=str(tmp_path))).data.normalization == "caffe"
    (tmp_path / "config.json").write_text(json.dumps({"model": "vgg11"}))  # records none
    assert read_config(small_config(init_from=str(tmp_path))).data.normalization == "imagenet"
    # A checkpoint's config that records none trained with ImageNet's.
    assert read_saved_config({"model": "vgg11"}).data.normalization == "imagenet"


def test_a_normalisation_against_the_weights_is_refused_in_one_line():
    with pytest.raises(TrainingError) as error:
        validate_config(small_config(model="vgg16", init_from="vgg16.caffe_in1k",
                                     normalization="imagenet"))  # fmt: skip
    assert str(error.value) == (
        "config.normalization='imagenet' is not the normalisation the weights of "
        "config.init_from='vgg16.caffe_in1k' expect ('caffe'): leave it 'auto' to use theirs."
    )
    config = small_config(model="vgg16", init_from="vgg16.caffe_in1k", normalization="caffe")
    assert validate_config(config).data.normalization == "caffe"
    with pytest.raises(TrainingError, match="config.normalization must be one of auto, "):
        validate_config(small_config(normalization="torch"))


def test_a_resume_keeps_the_normalisation_its_checkpoints_trained_with(tmp_path):
    """A run started from a work directory that recorded Caffe's; that directory deleted since,
    "auto" resolves to ImageNet's."""
    gone = str(tmp_path / "deleted run")
    checkpoints = SimpleNamespace(directory=tmp_path / "checkpoints")
    record = {"config": {**read_config(small_config(init_from=gone)).fields,
                         "normalization": "caffe"}}  # fmt: skip
    with pytest.raises(TrainingError) as error:
        check_same_architecture(read_config(small_config(init_from=gone)), checkpoints, record)
    assert str(error.value) == (
        f"{checkpoints.directory} holds checkpoints trained on images normalised as 'caffe', "
        f"but this run's config.normalization is 'imagenet' (config.init_from={gone!r}): pass "
        "--config.normalization=caffe to resume it."
    )
    resumable = read_config(small_config(init_from=gone, normalization="caffe"))
    check_same_architecture(resumable, checkpoints, record)
    # A checkpoint that records none trained with ImageNet's.
    del record["config"]["normalization"]
    check_same_architecture(read_config(small_config(init_from=gone)), checkpoints, record)
    with pytest.raises(TrainingError, match="normalised as 'imagenet'"):
        check_same_architecture(resumable, checkpoints, record)


def test_the_train_and_eval_steps_take_the_configured_normalisation():
    """Each step on uint8 images equals the same step on images normalised by hand as the
    Caffe weights expect (with a setup that then changes nothing)."""
    setup, state = small_training_setup(batch_norm=True, normalization="caffe")
    assert setup.normalization == NORMALIZATIONS["caffe"] != NORMALIZATIONS["imagenet"]
    images, labels = next(global_batches(1))
    unchanged = dataclasses.replace(setup, normalization=Normalization((0, 0, 0), (1, 1, 1)))
    replicated = jax.tree.map(lambda leaf: np.stack([leaf]), jax.device_get(state))

    def run(step_setup, batch_images):
        batch = {"image": batch_images[None], "label": labels[None]}
        train, evaluate = pmapped_steps(step_setup, devices=jax.local_devices()[:1])
        sums = evaluate(replicated, batch)
        trained, _ = train(replicated, batch)
        return sums, trained.params

    ours, by_hand = run(setup, images), run(unchanged, CAFFE_NORMALIZATION(images))
    jax.tree.map(np.testing.assert_array_equal, ours, by_hand)
