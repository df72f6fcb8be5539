"""Pretrained weights: conversion from torchvision, timm and Keras layouts, checked against
those libraries' own models where installed, and against known arrays where not."""

import hashlib
import importlib.util
import json
import os
import re

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from helpers import TESTS, relative_error, run_python, write_keras_h5

import vgg_jax
from vgg_jax.data.normalization import CAFFE_NORMALIZATION, IMAGENET_NORMALIZATION
from vgg_jax.weights import convert, pretrained
from vgg_jax.weights.convert import ConversionError

HAVE_TORCHVISION = importlib.util.find_spec("torchvision") is not None
HAVE_KERAS = importlib.util.find_spec("keras") is not None
TORCHVISION_MODELS = [
    "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
]  # fmt: skip
# Every configuration torchvision builds (A, B, D, E), with and without batch norm; each is a
# 500 MB model, so the other four combinations are left to the shared code they run through.
TORCHVISION_MODELS_COMPARED = ["vgg11_bn", "vgg13", "vgg16", "vgg19_bn"]
SMALL = dict(width=1 / 16, fc_features=16, num_classes=5)


def small_variables(name, image_size=64, seed=0, **overrides):
    """A narrow model and random variables; BN statistics randomised too."""
    model = vgg_jax.create_model(name, **(SMALL | overrides))
    images = jnp.zeros((1, image_size, image_size, 3))
    variables = jax.jit(model.init)(jax.random.key(seed), images)
    return model, jax.tree.map(
        lambda a: a + 0.1 * jax.random.uniform(jax.random.key(seed + 1), a.shape), variables
    )


def both_heads(model, variables, images):
    @jax.jit
    def logits(variables, images):
        return model.apply(variables, images), model.apply(variables, images, dense=True)

    return logits(variables, images)


@pytest.fixture(scope="module")
def torchvision_references(tmp_path_factory):
    """NAME -> path of the .npz of each torchvision model, all made by one PyTorch process."""
    out = tmp_path_factory.mktemp("torchvision")
    script = TESTS / "torchvision_reference.py"
    completed = run_python(script, out, *TORCHVISION_MODELS_COMPARED, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {name: out / f"{name}.npz" for name in TORCHVISION_MODELS_COMPARED}


@pytest.mark.skipif(not HAVE_TORCHVISION, reason="torchvision is not installed")
@pytest.mark.parametrize("name", TORCHVISION_MODELS_COMPARED)
def test_torchvision_models_give_the_same_logits(name, torchvision_references):
    reference = np.load(torchvision_references[name])
    arrays = {k.removeprefix("state/"): reference[k] for k in reference if k.startswith("state/")}
    model = vgg_jax.create_model(name)
    variables = convert.from_torch(arrays, model.config, model.batch_norm)
    classic, dense = both_heads(model, variables, reference["images"])
    assert relative_error(classic, reference["logits"]) < 1e-5
    assert relative_error(dense, reference["logits"]) < 1e-5


@pytest.fixture
def keras_seeded():
    """keras with its random seed set, and TensorFlow's global seed cleared afterwards, so no
    later test on this worker inherits it (the training pipeline's order no longer depends on
    it: test_input_pipeline checks that)."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    yield keras
    tf.random.set_seed(None)


@pytest.mark.skipif(not HAVE_KERAS, reason="keras is not installed")
@pytest.mark.parametrize("name", ["vgg16", "vgg19"])
def test_keras_models_give_the_same_logits(name, tmp_path, keras_seeded):
    keras = keras_seeded
    builder = {"vgg16": keras.applications.VGG16, "vgg19": keras.applications.VGG19}[name]
    reference = builder(weights=None, classifier_activation=None)
    # The published file's layout (Keras 2 h5): layer_names, and weight_names per layer.
    path = tmp_path / f"{name}.h5"
    with h5py.File(path, "w") as file:
        layers = [layer for layer in reference.layers if layer.weights]
        file.attrs["layer_names"] = [layer.name.encode() for layer in layers]
        for layer in layers:
            group = file.create_group(layer.name)
            names = [f"{layer.name}_W_1:0", f"{layer.name}_b_1:0"]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for weight_name, weight in zip(names, layer.get_weights(), strict=True):
                group[weight_name] = weight
    model = vgg_jax.create_model(name)
    variables = pretrained.variables_from_file(path, model, "keras")
    rgb = np.random.default_rng(1).uniform(0, 255, size=(1, 224, 224, 3)).astype(np.float32)
    caffe_input = rgb[..., ::-1] - np.array([103.939, 116.779, 123.68], np.float32)
    expected = np.asarray(reference(caffe_input))
    classic, dense = both_heads(model, variables, CAFFE_NORMALIZATION(rgb))
    assert relative_error(classic, expected) < 1e-5
    assert relative_error(dense, expected) < 1e-5


def test_fc6_is_unflattened_from_pytorchs_channel_major_order():
    model, variables = small_variables("vgg11")  # pool5: 2x2 maps of 32 channels
    arrays = convert.to_torch(variables, model.config, False)
    out, flat = arrays["classifier.0.weight"].shape
    assert (out, flat) == (16, 32 * 2 * 2)
    arrays["classifier.0.weight"] = np.arange(out * flat, dtype=np.float32).reshape(out, flat)
    kernel = convert.from_torch(arrays, model.config, False)["params"]["fc6"]["kernel"]
    assert kernel.shape == (2, 2, 32, 16)
    for h, w, c, o in [(0, 0, 0, 0), (0, 1, 0, 3), (1, 0, 5, 7), (1, 1, 31, 15)]:
        assert kernel[h, w, c, o] == arrays["classifier.0.weight"][o, c * 4 + h * 2 + w]


def test_safetensors_convert_to_exactly_the_expected_arrays(tmp_path):
    model, variables = small_variables("vgg13_bn")
    path = tmp_path / "vgg13_bn.safetensors"
    vgg_jax.save_safetensors(variables, model, path)
    from safetensors.numpy import load_file

    stored = load_file(str(path))
    # torchvision's layout: conv1_1 is features.0, its BatchNorm features.1, conv1_2 features.3.
    kernel = np.asarray(variables["params"]["conv1_2"]["kernel"])
    np.testing.assert_array_equal(stored["features.3.weight"], kernel.transpose(3, 2, 0, 1))
    np.testing.assert_array_equal(
        stored["features.1.running_var"], variables["batch_stats"]["conv1_1_bn"]["var"]
    )
    loaded = pretrained.variables_from_file(path, model)
    jax.tree.map(np.testing.assert_array_equal, loaded, variables)


def test_timm_layout_with_conv_shaped_head(tmp_path):
    model, variables = small_variables("vgg11")
    arrays = convert.to_torch(variables, model.config, False)
    fc6 = arrays.pop("classifier.0.weight").reshape(16, 32, 2, 2)
    fc7 = arrays.pop("classifier.3.weight")[:, :, None, None]
    arrays |= {
        "pre_logits.fc1.weight": fc6, "pre_logits.fc1.bias": arrays.pop("classifier.0.bias"),
        "pre_logits.fc2.weight": fc7, "pre_logits.fc2.bias": arrays.pop("classifier.3.bias"),
        "head.fc.weight": arrays.pop("classifier.6.weight"),
        "head.fc.bias": arrays.pop("classifier.6.bias"),
    }  # fmt: skip
    converted = convert.from_torch(arrays, model.config, False)
    jax.tree.map(np.testing.assert_array_equal, converted, jax.device_get(variables))


def test_keras_h5_converts_with_bgr_folded_into_the_first_conv(tmp_path):
    model, variables = small_variables("vgg16")
    params = jax.device_get(variables["params"])
    path = tmp_path / "weights.h5"
    write_keras_h5(params, "D", path)  # the Keras file of these weights, conv1_1 taking BGR
    loaded = pretrained.variables_from_file(path, model)
    jax.tree.map(np.testing.assert_array_equal, loaded, {"params": params})


def test_round_trip_flax_torch_flax_is_exact():
    model, variables = small_variables("vgg19_bn")
    state = vgg_jax.export_torch_state_dict(variables, model)
    back = convert.from_torch(state, model.config, model.batch_norm)
    jax.tree.map(np.testing.assert_array_equal, back, jax.device_get(variables))


def test_weights_of_another_architecture_name_the_first_mismatch(tmp_path):
    vgg19, variables = small_variables("vgg19")
    arrays = convert.to_torch(variables, vgg19.config, False)
    with pytest.raises(ConversionError, match=r"no tensor 'features\.17\.weight'.*conv4_1"):
        convert.from_torch(arrays, "D", batch_norm=False)
    with pytest.raises(ConversionError, match=r"no tensor 'features\.1\.weight'.*conv1_1_bn"):
        convert.from_torch(arrays, "E", batch_norm=True)
    vgg11, small = small_variables("vgg11")
    arrays = convert.to_torch(small, vgg11.config, False) | {"features.99.weight": np.zeros(1)}
    with pytest.raises(ConversionError, match="first 'features.99.weight'"):
        convert.from_torch(arrays, "A", batch_norm=False)
    path = tmp_path / "narrow.safetensors"
    vgg_jax.save_safetensors(small, vgg11, path)
    wider = vgg_jax.create_model("vgg11", **(SMALL | {"width": 1 / 8}))
    with pytest.raises(
        ConversionError, match=r"give params/conv1_1/bias the shape \(4,\), while A .* needs \(8,\)"
    ):
        pretrained.variables_from_file(path, wider)


def test_a_truncated_file_is_reported(tmp_path):
    model, variables = small_variables("vgg11")
    path = tmp_path / "cut.safetensors"
    vgg_jax.save_safetensors(variables, model, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConversionError, match="cut.safetensors.*truncated"):
        pretrained.variables_from_file(path, model)


def registry_entry(tmp_path, file, digest):
    return pretrained.PretrainedWeights(
        "tiny.test", "vgg11", file.as_uri(), digest, "sha256", "torch",
        IMAGENET_NORMALIZATION, 0.0, 0.0,
    )  # fmt: skip


def test_download_checks_the_hash_and_caches(tmp_path, monkeypatch, capsys):
    model, variables = small_variables("vgg11", num_classes=1000)
    source = tmp_path / "published" / "tiny-weights.safetensors"
    source.parent.mkdir()
    vgg_jax.save_safetensors(variables, model, source)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    cache = tmp_path / "cache"

    wrong = registry_entry(tmp_path, source, "0" * 8)
    with pytest.raises(ValueError, match="is not the file of tiny.test: its sha256 is"):
        pretrained.weights_file(wrong, cache_dir=cache)
    assert not list(cache.iterdir())  # a file that failed its check is not kept

    entry = registry_entry(tmp_path, source, digest[:8])  # torchvision gives 8 digits
    cached = pretrained.weights_file(entry, cache_dir=cache)  # "downloads" the file:// URL
    progress = capsys.readouterr().err  # a bar with the size, not one line then silence
    assert re.search(r"tiny-weights.safetensors: 100%.*\| *([\d.]+[kM]?)/\1 ", progress), progress
    assert cached == cache / "tiny-weights.safetensors" and cached.read_bytes() == (
        source.read_bytes()
    )
    source.unlink()
    assert pretrained.weights_file(entry, cache_dir=cache) == cached  # from the cache now

    monkeypatch.setitem(pretrained.WEIGHTS, "tiny.test", entry)
    loaded_model, loaded, preprocess = vgg_jax.load_pretrained(
        "tiny.test", cache_dir=cache, width=SMALL["width"], fc_features=SMALL["fc_features"]
    )
    jax.tree.map(np.testing.assert_array_equal, loaded, jax.device_get(variables))
    assert preprocess is IMAGENET_NORMALIZATION
    images = np.full((1, 64, 64, 3), 124, np.uint8)
    assert loaded_model.apply(loaded, preprocess(images)).shape == (1, 1000)
    # The same weights load into Gatys et al.'s average-pooling network.
    averaging, same, _ = vgg_jax.load_pretrained(
        "tiny.test", cache_dir=cache, width=SMALL["width"], fc_features=SMALL["fc_features"],
        pooling="avg",
    )  # fmt: skip
    assert averaging.pooling == "avg"
    jax.tree.map(np.testing.assert_array_equal, same, loaded)


def test_offline_without_a_file_says_what_to_fetch_and_where(tmp_path):
    weights = pretrained.WEIGHTS["vgg16.tv_in1k"]
    with pytest.raises(FileNotFoundError) as error:
        pretrained.weights_file(weights, cache_dir=tmp_path, download=False)
    message = str(error.value)
    assert "https://download.pytorch.org/models/vgg16-397923af.pth" in message
    assert str(tmp_path / "vgg16-397923af.pth") in message and "path=" in message
    with pytest.raises(ValueError, match="Unknown pretrained weights 'vgg16'; choose one of"):
        vgg_jax.load_pretrained("vgg16")
    with pytest.raises(ValueError, match="vgg16-397923af.pth.*is not the file of"):
        (tmp_path / "vgg16-397923af.pth").write_bytes(b"not the weights")
        pretrained.weights_file(weights, cache_dir=tmp_path)


@pytest.mark.skipif(not HAVE_TORCHVISION, reason="torchvision is not installed")
def test_predict_reads_a_pth_file_and_gives_pytorchs_probabilities(
    torchvision_references, tmp_path
):
    """python -m vgg_jax.cli.predict --weights=FILE.pth --model=vgg11_bn: reading the .pth (PyTorch
    in a process that has TensorFlow), from_weights, model_from_file, the 1000 class names.
    A grey image stays grey through the resize to 256 and the 224 crop, so PyTorch's
    probabilities for a grey 224x224 input are the expected ones."""
    reference = torchvision_references["vgg11_bn"]  # tests/torchvision_reference.py: PTH_MODEL
    image = tmp_path / "grey.png"
    image.write_bytes(tf.io.encode_png(np.full((300, 400, 3), 128, np.uint8)).numpy())  # GREY
    weights = reference.with_suffix(".pth")
    result = run_python("-m", "vgg_jax.cli.predict", f"--weights={weights}", "--model=vgg11_bn",
                        "--top=3", image, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    expected = np.load(reference.with_suffix(".grey.npy"))
    names = vgg_jax.imagenet_class_names()
    lines = result.stdout.splitlines()
    assert lines[0] == str(image) and len(lines) == 4
    third = np.sort(expected)[-3]
    for rank, line in enumerate(lines[1:], start=1):
        found = re.fullmatch(r"  (\d)\. +([\d.]+)%  (.+) \((\d+)\)", line)
        assert found and int(found[1]) == rank, line
        index = int(found[4])
        assert found[3] == names[index] and expected[index] >= third - 1e-6  # a top-3 class
        assert float(found[2]) == pytest.approx(100 * expected[index], abs=0.006)


@pytest.mark.skipif(not HAVE_TORCHVISION, reason="torchvision is not installed")
def test_registry_matches_what_torchvision_publishes(torchvision_references):
    """Each torchvision entry against torchvision's own weight metadata (offline): the URL,
    the hash digits in its file name, the accuracies, and the mean and std its transforms
    use."""
    folder = next(iter(torchvision_references.values())).parent
    published = json.loads((folder / "weights.json").read_text())
    assert set(published) == set(TORCHVISION_MODELS)
    for name, theirs in published.items():
        ours = vgg_jax.PRETRAINED_WEIGHTS[f"{name}.tv_in1k"]
        assert ours.model == name and ours.url == theirs["url"]
        assert theirs["url"].endswith(f"-{ours.file_hash}.pth") and ours.hash_algorithm == "sha256"
        assert (ours.top1, ours.top5) == (theirs["top1"], theirs["top5"])
        np.testing.assert_allclose(ours.preprocessing.mean, np.multiply(theirs["mean"], 255))
        np.testing.assert_allclose(ours.preprocessing.stddev, np.multiply(theirs["std"], 255))
        assert (theirs["resize"], theirs["crop"]) == (256, 224)  # our evaluation's Q and crop
        assert list(vgg_jax.imagenet_class_names()) == theirs["categories"]


def test_registry_and_class_names():
    names = vgg_jax.imagenet_class_names()
    assert len(names) == 1000 and names[0] == "tench" and names[-1] == "toilet tissue"
    assert len(set(names)) >= 998  # "crane" and "maillot" appear twice in ImageNet
    assert set(vgg_jax.PRETRAINED_WEIGHTS) == {f"{m}.tv_in1k" for m in TORCHVISION_MODELS} | {
        "vgg16.caffe_in1k",
        "vgg19.caffe_in1k",
    }
    for weights in vgg_jax.PRETRAINED_WEIGHTS.values():
        vgg_jax.create_model(weights.model)  # every entry names a real model
    # The torchvision entries are checked against torchvision above; the Caffe ones against
    # the Keras applications table (keras.io/api/applications: top-1 and top-5 accuracy) and
    # the Keras source's file names and md5 digests.
    caffe = {name: vgg_jax.PRETRAINED_WEIGHTS[f"{name}.caffe_in1k"] for name in ("vgg16", "vgg19")}
    assert (caffe["vgg16"].top1, caffe["vgg16"].top5) == (71.3, 90.1)
    assert (caffe["vgg19"].top1, caffe["vgg19"].top5) == (71.3, 90.0)
    assert caffe["vgg16"].file_hash == "64373286793e3c8b2b4e3219cbf3544b"
    assert caffe["vgg19"].file_hash == "cbe5617147190e668d6c5d5026f83318"
    for name, weights in caffe.items():
        assert weights.url == (
            f"https://storage.googleapis.com/tensorflow/keras-applications/{name}/"
            f"{name}_weights_tf_dim_ordering_tf_kernels.h5"
        )
        assert weights.preprocessing == CAFFE_NORMALIZATION


CACHE_PROBE = """
import importlib, os, sys
from vgg_jax.weights import pretrained

def where_offline():
    try:
        pretrained.weights_file(pretrained.WEIGHTS["vgg16.tv_in1k"], download=False)
    except FileNotFoundError as error:
        print(str(error).split(" and put it at ")[1].split(",")[0])

where_offline()  # with $VGG_JAX_CACHE
del os.environ["VGG_JAX_CACHE"]
os.environ["HOME"] = sys.argv[1]
where_offline()  # the module as imported: the cache was read once, at import
importlib.reload(pretrained)
where_offline()  # without $VGG_JAX_CACHE: ~/.cache/vgg_jax
"""


def test_the_weights_cache_is_vgg_jax_cache_else_the_home_folders(tmp_path):
    env = {**os.environ, "VGG_JAX_CACHE": str(tmp_path / "mine")}
    result = run_python("-c", CACHE_PROBE, tmp_path / "home", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    mine, still_mine, home = result.stdout.split()
    assert mine == still_mine == str(tmp_path / "mine" / "vgg16-397923af.pth")
    assert home == str(tmp_path / "home" / ".cache" / "vgg_jax" / "vgg16-397923af.pth")


@pytest.mark.parametrize(
    "device_picks, asked, computes",
    [
        (jnp.float16, "auto", jnp.float32),  # a V100 or T4: weights never checked in float16
        (jnp.bfloat16, "auto", jnp.bfloat16),  # bfloat16 where it is native
        (jnp.float16, "float16", jnp.float16),  # asked for by name: as asked
        (jnp.float32, "bfloat16", jnp.bfloat16),
    ],
)
def test_from_weights_never_picks_float16_itself(
    device_picks, asked, computes, monkeypatch, tmp_path
):
    from vgg_jax.evaluation import inference
    from vgg_jax.model import dtypes

    monkeypatch.setattr(dtypes, "auto_dtype", lambda device=None: (device_picks, "a test"))
    built = []

    def model_from_file(path, model, **options):
        built.append(options)
        network = vgg_jax.vgg11(width=1 / 16, fc_features=8, **options)
        return network, {}, IMAGENET_NORMALIZATION

    monkeypatch.setattr(pretrained, "model_from_file", model_from_file)
    (tmp_path / "vgg11.safetensors").write_bytes(b"read by the stand-in above, not here")
    classifier = inference.from_weights(str(tmp_path / "vgg11.safetensors"), "vgg11", dtype=asked)
    assert built == [{"dtype": computes}]
    assert classifier.model.dtype == computes
