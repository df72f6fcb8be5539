"""LPIPS (vgg_jax.perceptual): equal to the `lpips` package on the same backbone, usable in
training loops (jit, gradients, bfloat16), and one clear error for each bad input."""

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TESTS, input_gradient, relative_error, run_python
from safetensors.numpy import save_file

import vgg_jax
from vgg_jax import perceptual
from vgg_jax.weights.convert import ConversionError

HAVE_LPIPS = all(importlib.util.find_spec(m) for m in ("lpips", "torchvision"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """lpips's distances and maps (tests/lpips_reference.py) and its random VGG16 backbone,
    saved as a .safetensors file with torchvision's keys."""
    folder = tmp_path_factory.mktemp("lpips")
    completed = run_python(TESTS / "lpips_reference.py", folder / "reference.npz", timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    arrays = dict(np.load(folder / "reference.npz"))
    state = {k.removeprefix("state/"): v for k, v in arrays.items() if k.startswith("state/")}
    save_file(state, str(folder / "vgg16_random.safetensors"))
    return arrays, folder / "vgg16_random.safetensors"


@pytest.mark.skipif(not HAVE_LPIPS, reason="the lpips package (or torchvision) is not installed")
def test_lpips_equals_the_lpips_package(reference):
    """Random pairs and photo pairs (shifted, noised, blurred, JPEG-compressed) at 100x150:
    every distance and every spatial map within 1e-5 relative error, and their means and
    sums over the batch. The linear weights are the v0.1 file the package bundles, found
    without importing it."""
    arrays, backbone = reference
    module, variables = vgg_jax.load_lpips(backbone=str(backbone))
    apply = jax.jit(module.apply, static_argnames=("spatial", "reduction"))
    distances = apply(variables, arrays["images0"], arrays["images1"])
    maps = apply(variables, arrays["images0"], arrays["images1"], spatial=True)
    assert distances.shape == (14,) and maps.shape == (14, 100, 150)
    np.testing.assert_allclose(distances, arrays["distances"], rtol=1e-5)
    for ours, theirs in zip(maps, arrays["maps"], strict=True):
        assert relative_error(ours, theirs) < 1e-5
    for reduction, reduce in (("mean", np.mean), ("sum", np.sum)):
        for spatial, expected in ((False, arrays["distances"]), (True, arrays["maps"])):
            reduced = apply(
                variables, arrays["images0"], arrays["images1"], spatial=spatial,
                reduction=reduction,
            )  # fmt: skip
            assert reduced.shape == expected.shape[1:]  # () or (H, W)
            assert relative_error(reduced, reduce(expected, axis=0)) < 1e-5
    # An image against itself is at distance 0.
    same = apply(variables, arrays["images0"][:2], arrays["images0"][:2])
    np.testing.assert_allclose(same, 0.0, atol=1e-7)


@pytest.mark.skipif(not HAVE_LPIPS, reason="the lpips package (or torchvision) is not installed")
def test_lpips_gradients_are_as_close_to_float64_as_the_package_in_float32(reference):
    """d LPIPS / d first image for a random pair and the shifted and noisy astronaut: each
    within twice lpips's largest float32 error over these pairs of lpips in float64; and in
    bfloat16 within 25% (relative L2)."""
    arrays, backbone = reference
    module, variables = vgg_jax.load_lpips(backbone=str(backbone))
    pairs = arrays["gradient_pairs"]
    images0, images1 = arrays["images0"][pairs], arrays["images1"][pairs]
    ours = input_gradient(module, variables, images0, images1)
    exact, theirs = arrays["gradient_float64"], arrays["gradient_float32"]
    their_error = max(relative_error(theirs[i], exact[i]) for i in range(len(pairs)))
    for index in range(len(pairs)):
        assert relative_error(ours[index], exact[index]) <= 2 * their_error, index
    low = perceptual.LPIPS(vgg_jax.vgg16(dtype=jnp.bfloat16))
    low_grad = input_gradient(low, variables, images0, images1)
    assert relative_error(low_grad, ours) < 0.25  # measured 0.18


@pytest.fixture(scope="module")
def small_lpips():
    """LPIPS on a random full-width VGG16 with uniform linear weights: what the
    training-loop and bad-input tests need, without files."""
    module = perceptual.LPIPS(vgg_jax.vgg16())
    images = jnp.zeros((1, 32, 32, 3))
    variables = jax.jit(module.init)(jax.random.key(0), images, images)
    return module, variables


def test_gradient_steps_pull_an_image_towards_its_target(small_lpips):
    module, variables = small_lpips
    keys = jax.random.split(jax.random.key(1), 2)
    target = jax.random.uniform(keys[0], (1, 32, 32, 3), minval=-1, maxval=1)
    image = jax.random.uniform(keys[1], (1, 32, 32, 3), minval=-1, maxval=1)

    @jax.jit
    def step(image):  # each pixel moves 0.02 on average, against the gradient
        distance_to_target = lambda x: module.apply(variables, x, target)[0]  # noqa: E731
        distance, grad = jax.value_and_grad(distance_to_target)(image)
        return jnp.clip(image - 0.02 * grad / jnp.abs(grad).mean(), -1, 1), distance

    distances = []
    for _ in range(8):
        image, distance = step(image)
        distances.append(float(distance))
    assert distances[-1] < 0.8 * distances[0], distances
    assert all(b <= a * 1.02 for a, b in zip(distances, distances[1:])), distances


def test_bfloat16_lpips_is_close_to_float32(small_lpips):
    module, variables = small_lpips
    low = perceptual.LPIPS(vgg_jax.vgg16(dtype=jnp.bfloat16))
    keys = jax.random.split(jax.random.key(2), 2)
    images = [jax.random.uniform(k, (2, 32, 32, 3), minval=-1, maxval=1) for k in keys]
    full = module.apply(variables, *images)
    half = jax.jit(low.apply)(variables, *images)
    assert half.dtype == jnp.float32  # distances in float32 whatever the compute dtype
    np.testing.assert_allclose(half, full, rtol=0.05)
    grad = jax.grad(lambda x: low.apply(variables, x, images[1]).sum())(images[0])
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0


@pytest.mark.parametrize(
    "images0, images1, message",
    [
        ((2, 32, 32, 3), (2, 32, 48, 3), r"one shape; got \(2, 32, 32, 3\) and \(2, 32, 48, 3\)"),
        ((2, 32, 32, 1), (2, 32, 32, 1), r"NHWC RGB batches \(N, H, W, 3\); got shape"),
        ((2, 8, 8, 3), (2, 8, 8, 3), "at least 16x16 pixels .* got 8x8"),
    ],
)
def test_images_of_the_wrong_shape_are_refused(small_lpips, images0, images1, message):
    module, variables = small_lpips
    with pytest.raises(ValueError, match=message):
        module.apply(variables, jnp.zeros(images0), jnp.zeros(images1))


def test_images_outside_minus_one_to_one_are_refused_when_concrete(small_lpips):
    module, variables = small_lpips
    uint8_like = jnp.full((1, 32, 32, 3), 200.0)
    with pytest.raises(ValueError, match=r"\[-1, 1\]; got values from 200 to 200 .* 127.5 - 1"):
        module.apply(variables, uint8_like, uint8_like)


@pytest.mark.parametrize(
    "backbone",
    [vgg_jax.vgg11(), vgg_jax.vgg19(), vgg_jax.vgg16_bn(), vgg_jax.vgg16(pooling="avg")],
    ids=["vgg11", "vgg19", "vgg16_bn", "vgg16 avg"],
)
def test_lpips_refuses_any_backbone_but_the_one_its_weights_were_fitted_to(backbone):
    with pytest.raises(ValueError, match="defined on VGG16 .configuration D. without batch norm"):
        perceptual.LPIPS(backbone)


def test_load_lpips_refuses_caffe_weights(tmp_path, monkeypatch):
    """The Caffe weights expect 0-255 minus the mean; LPIPS's scaling gives them inputs 58x
    smaller: wrong distances, so an error instead."""
    monkeypatch.setattr(
        perceptual.pretrained, "load_pretrained",
        lambda *a, **k: (vgg_jax.vgg16(), {}, perceptual.pretrained.CAFFE_NORMALIZATION),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"Caffe's 0-255 minus the mean\). Use vgg16.tv_in1k"):
        vgg_jax.load_lpips("vgg16.caffe_in1k")


def test_linear_weights_files_are_checked(tmp_path):
    wrong_shape = {f"lin{i}.model.1.weight": np.ones((1, 8, 3, 3), np.float32) for i in range(5)}
    save_file(wrong_shape, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(ConversionError, match=r"lin0.model.1.weight .* has shape \(1, 8, 3, 3\)"):
        perceptual.read_linear_weights(tmp_path / "wrong.safetensors")
    save_file({"other": np.ones(3, np.float32)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConversionError, match="not an LPIPS linear-weights file: it has no lin0"):
        perceptual.read_linear_weights(tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="is not the file of lpips.vgg.v0.1: its sha256 is"):
        perceptual.linear_weights_file(tmp_path / "wrong.safetensors")


def test_without_the_package_or_internet_the_error_says_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setattr(perceptual.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError) as error:
        perceptual.linear_weights_file(cache_dir=tmp_path, download=False)
    message = str(error.value)
    assert perceptual.LPIPS_VGG_V0_1.url in message and "load_lpips(linear_path=...)" in message
    assert str(tmp_path / "lpips_vgg_v0.1.pth") in message


# ------------------------------------------------------------------ feature and style losses


def test_gram_matrices_and_losses_by_their_definitions():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    other = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    flat = features.reshape(2, 35, 3)
    expected = np.stack([f.T @ f for f in flat]) / (3 * 5 * 7)  # Johnson et al.'s G / (C H W)
    np.testing.assert_allclose(vgg_jax.gram_matrix(features), expected, rtol=1e-5)
    np.testing.assert_allclose(
        vgg_jax.feature_loss(features, other), ((features - other) ** 2).mean(axis=(1, 2, 3)),
        rtol=1e-5,
    )  # fmt: skip
    grams = [vgg_jax.gram_matrix(x) for x in (features, other)]
    np.testing.assert_allclose(
        vgg_jax.style_loss(features, other), ((grams[0] - grams[1]) ** 2).sum(axis=(1, 2)),
        rtol=1e-5,
    )  # fmt: skip
    # Style ignores where things are; content does not.
    shuffled = flat[:, rng.permutation(35)].reshape(features.shape)
    np.testing.assert_allclose(vgg_jax.style_loss(features, shuffled), 0.0, atol=1e-10)
    assert np.all(vgg_jax.feature_loss(features, shuffled) > 0.1)


@pytest.fixture(scope="module")
def narrow_vgg16():
    model = vgg_jax.vgg16(width=1 / 8, fc_features=16, num_classes=5)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return model, variables


def test_perceptual_loss_adds_the_weighted_layer_losses(narrow_vgg16):
    model, variables = narrow_vgg16
    from vgg_jax.data.normalization import IMAGENET_NORMALIZATION as preprocess

    keys = jax.random.split(jax.random.key(3), 3)
    images, content = (jax.random.uniform(k, (2, 32, 32, 3), maxval=255) for k in keys[:2])
    style = jax.random.uniform(keys[2], (1, 48, 40, 3), maxval=255)  # one, of another size
    content_layers, style_layers = {"conv2_2": 2.0}, {"conv1_2": 1.0, "conv3_3": 0.5}
    loss = vgg_jax.perceptual_loss(
        model, variables, preprocess, images, content, style, content_layers, style_layers
    )
    layers = ["conv1_2", "conv2_2", "conv3_3"]
    features = [
        model.apply(variables, preprocess(x), layers=layers, method="extract_features")
        for x in (images, content, style)
    ]
    expected = 2.0 * vgg_jax.feature_loss(features[0]["conv2_2"], features[1]["conv2_2"])
    for name, weight in style_layers.items():
        grams = vgg_jax.gram_matrix(features[0][name]), vgg_jax.gram_matrix(features[2][name])
        expected += weight * ((grams[0] - grams[1]) ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    same = vgg_jax.perceptual_loss(model, variables, preprocess, images, images, images)
    np.testing.assert_allclose(same, 0.0, atol=1e-8)


def test_perceptual_loss_pulls_an_image_towards_its_content(narrow_vgg16):
    model, variables = narrow_vgg16
    from vgg_jax.data.normalization import IMAGENET_NORMALIZATION as preprocess

    keys = jax.random.split(jax.random.key(4), 2)
    image, content = (jax.random.uniform(k, (1, 32, 32, 3), maxval=255) for k in keys)
    loss = jax.jit(lambda x: vgg_jax.perceptual_loss(model, variables, preprocess, x, content)[0])
    grad = jax.jit(jax.grad(loss))
    losses = [float(loss(image))]
    for _ in range(5):
        g = grad(image)
        image = jnp.clip(image - 4.0 * g / jnp.abs(g).mean(), 0, 255)
        losses.append(float(loss(image)))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize(
    "arguments, message",
    [
        ({"content_layers": {"relu3_3": 1.0}}, r"Layers \['relu3_3'\] are not layers of .*'D'"),
        ({"content": None}, "Give content images, a style image, or both"),
        ({"style": np.zeros((3, 32, 32, 3))}, r"one style image or one per image \(2\); got 3"),
        ({"content": np.zeros((2, 40, 32, 3))}, r"content images must have the images' shape"),
    ],
)
def test_perceptual_loss_refuses_bad_layers_and_targets(narrow_vgg16, arguments, message):
    model, variables = narrow_vgg16
    options = {"content": np.zeros((2, 32, 32, 3)), **arguments}
    with pytest.raises(ValueError, match=message):
        vgg_jax.perceptual_loss(model, variables, lambda x: x, np.zeros((2, 32, 32, 3)), **options)


def test_average_pooling_uses_the_same_weights(narrow_vgg16):
    model, variables = narrow_vgg16
    averaging = vgg_jax.vgg16(width=1 / 8, fc_features=16, num_classes=5, pooling="avg")
    again = jax.jit(averaging.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    jax.tree.map(np.testing.assert_array_equal, again, variables)  # same tree, same values
    x = jax.random.normal(jax.random.key(5), (1, 32, 32, 3))
    pooled = {
        pooling: vgg.apply(variables, x, layers=["conv1_2", "pool1"], method="extract_features")
        for pooling, vgg in (("max", model), ("avg", averaging))
    }
    conv = np.asarray(pooled["avg"]["conv1_2"])
    windows = conv.reshape(1, 16, 2, 16, 2, -1)
    np.testing.assert_allclose(pooled["avg"]["pool1"], windows.mean(axis=(2, 4)), rtol=1e-6)
    np.testing.assert_allclose(pooled["max"]["pool1"], windows.max(axis=(2, 4)), rtol=1e-6)
    with pytest.raises(ValueError, match="pooling must be one of max, avg, l2; got 'mean'"):
        vgg_jax.vgg16(pooling="mean")


def test_the_default_layers_are_johnson_et_als_for_style_transfer_and_gatys_are_the_papers():
    """Johnson et al. 2016 (VGG16): style transfer compares features at relu2_2 and Grams at
    relu1_2, relu2_2, relu3_3 and relu4_3; their super-resolution uses relu2_2 features alone.
    The defaults follow style transfer (the content layer is the same in both). Gatys et al.
    2016 (VGG19): content at conv4_2, style at conv1_1 ... conv5_1 weighted 1/5 each. vgg_jax's
    convN_M is the ReLU's output, as the papers' layers are."""
    import inspect

    defaults = inspect.signature(perceptual.perceptual_loss).parameters
    assert dict(defaults["content_layers"].default) == {"conv2_2": 1.0}
    assert dict(defaults["style_layers"].default) == dict.fromkeys(
        ["conv1_2", "conv2_2", "conv3_3", "conv4_3"], 1.0
    )
    assert dict(perceptual.GATYS_CONTENT_LAYERS) == {"conv4_2": 1.0}
    assert dict(perceptual.GATYS_STYLE_LAYERS) == dict.fromkeys(
        ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"], 0.2
    )
    assert set(defaults["style_layers"].default) <= set(vgg_jax.feature_names("D"))
    assert set(perceptual.GATYS_STYLE_LAYERS) <= set(vgg_jax.feature_names("E"))
    model = vgg_jax.vgg16(width=1 / 16, fc_features=8, num_classes=2)
    x = 50 * jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    relu2_2, _ = model.init_with_output(
        jax.random.key(1), x, layers=["conv2_2"], method="extract_features"
    )  # only the layers up to conv2_2 are made
    relu2_2 = relu2_2["conv2_2"]
    assert float(jnp.min(relu2_2)) == 0.0 and float(jnp.max(relu2_2)) > 0.0
