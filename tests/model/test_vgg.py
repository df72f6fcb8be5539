"""The VGG module on real (small) computation: heads, features, dropout, BatchNorm, init, dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import apply, images, init, relative_error

import vgg_jax

SMALL = dict(width=1 / 16, fc_features=32, num_classes=7)
BN_SMALL = dict(width=1 / 16, fc_features=16, num_classes=5, dropout_rate=0.0)


def conv_relu(x, params):
    y = jax.lax.conv_general_dilated(
        x, params["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.nn.relu(y + params["bias"])


@pytest.fixture(scope="module")
def vgg16_at_224():
    model = vgg_jax.vgg16(**SMALL)
    x = images((2, 224, 224, 3))
    return model, init(model, x, seed=1), x


@pytest.fixture(scope="module")
def vgg11_at_32():
    model = vgg_jax.vgg11(**SMALL)
    x = images((4, 32, 32, 3))
    return model, init(model, x), x


@pytest.fixture(scope="module")
def vgg11_bn_at_32():
    model = vgg_jax.vgg11_bn(**BN_SMALL)
    x = 3.0 + 2.0 * images((8, 32, 32, 3))
    return model, init(model, x), x


# ---------------------------------------------------------------- heads


def test_classic_and_dense_heads_agree_at_224(vgg16_at_224):
    model, variables, x = vgg16_at_224
    assert variables["params"]["fc6"]["kernel"].shape == (7, 7, 32, 32)
    classic = apply(model, variables, x)
    dense = apply(model, variables, x, dense=True)
    assert classic.shape == dense.shape == (2, 7)
    assert relative_error(dense, classic) < 1e-5
    # Not trivially equal: the logits differ between the two images.
    assert relative_error(classic[0], classic[1]) > 1e-2


@pytest.mark.parametrize("size", [(256, 256), (384, 288)])
def test_dense_head_runs_on_larger_images(vgg16_at_224, size):
    model, variables, _ = vgg16_at_224
    x = images((2, *size, 3), seed=2)
    logits = apply(model, variables, x, dense=True)
    score_map = apply(model, variables, x, dense=True, layers=["fc8"], method="extract_features")
    # pool5 is size/32 on each side; FC6's 7x7 window slides over it.
    expected_map = (size[0] // 32 - 6, size[1] // 32 - 6)
    assert score_map["fc8"].shape == (2, *expected_map, 7)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    assert relative_error(logits, score_map["fc8"].mean(axis=(1, 2))) < 1e-5


def test_dense_score_map_is_the_classic_head_at_each_window(vgg16_at_224):
    """Each score-map position is the classic head applied to that 7x7 window of pool5."""
    model, variables, _ = vgg16_at_224
    x = images((1, 288, 256, 3), seed=3)
    layers = ["pool5", "fc8"]
    feats = apply(model, variables, x, dense=True, layers=layers, method="extract_features")
    params = variables["params"]
    assert feats["fc8"].shape == (1, 3, 2, 7)
    for i, j in [(0, 0), (1, 1), (2, 0)]:
        window = feats["pool5"][:, i : i + 7, j : j + 7, :].reshape(1, -1)
        h = jax.nn.relu(window @ params["fc6"]["kernel"].reshape(-1, 32) + params["fc6"]["bias"])
        h = jax.nn.relu(h @ params["fc7"]["kernel"] + params["fc7"]["bias"])
        scores = h @ params["fc8"]["kernel"] + params["fc8"]["bias"]
        assert relative_error(feats["fc8"][:, i, j], scores) < 1e-5


# ---------------------------------------------------------------- features


def test_extract_features_returns_the_named_activations(vgg11_at_32):
    model, variables, x = vgg11_at_32
    layers = ["conv1_1", "pool5", "fc7", "fc8"]
    feats = apply(model, variables, x, layers=layers, method="extract_features")
    assert set(feats) == set(layers)
    expected_conv1_1 = conv_relu(x, variables["params"]["conv1_1"])
    assert relative_error(feats["conv1_1"], expected_conv1_1) < 1e-6
    assert feats["pool5"].shape == (4, 1, 1, 32)
    assert feats["fc7"].shape == (4, 32) and float(feats["fc7"].min()) >= 0.0  # after ReLU
    assert relative_error(feats["fc8"], apply(model, variables, x)) < 1e-6


def test_conv_features_need_no_head_and_any_size(vgg11_at_32):
    """Extraction stops at the deepest layer asked for, so the head's input size is moot."""
    model, variables, _ = vgg11_at_32
    feats = apply(
        model, variables, images((1, 96, 64, 3)), layers="pool5", method="extract_features"
    )
    assert feats["pool5"].shape == (1, 3, 2, 32)


def test_feature_names_cover_every_layer():
    names = vgg_jax.feature_names("E")
    assert names[:3] == ("conv1_1", "conv1_2", "pool1")
    assert "conv5_4" in names and names[-4:] == ("flatten", "fc6", "fc7", "fc8")
    assert "lrn1" in vgg_jax.feature_names("A-LRN")


# ---------------------------------------------------------------- dropout


def test_dropout_active_only_in_training(vgg11_at_32):
    model, variables, x = vgg11_at_32
    key = lambda seed: {"dropout": jax.random.key(seed)}
    eval_logits = apply(model, variables, x)
    np.testing.assert_array_equal(eval_logits, apply(model, variables, x, rngs=key(5)))
    train_1 = apply(model, variables, x, rngs=key(1), train=True)
    train_2 = apply(model, variables, x, rngs=key(2), train=True)
    np.testing.assert_array_equal(train_1, apply(model, variables, x, rngs=key(1), train=True))
    assert relative_error(train_1, train_2) > 1e-2
    assert relative_error(train_1, eval_logits) > 1e-2
    # With dropout off, training mode computes exactly what evaluation does (no BN here).
    no_dropout = model.clone(dropout_rate=0.0)
    no_dropout_logits = apply(no_dropout, variables, x, rngs=key(1), train=True)
    assert relative_error(no_dropout_logits, eval_logits) < 1e-6


# ---------------------------------------------------------------- batch norm


def test_batch_norm_updates_running_statistics_with_torch_momentum(vgg11_bn_at_32):
    model, variables, x = vgg11_bn_at_32
    stats = variables["batch_stats"]["conv1_1_bn"]
    np.testing.assert_array_equal(stats["mean"], 0.0)
    np.testing.assert_array_equal(stats["var"], 1.0)
    _, updated = apply(model, variables, x, train=True, mutable=("batch_stats",))
    conv1_1 = variables["params"]["conv1_1"]
    raw = (
        jax.lax.conv_general_dilated(
            x, conv1_1["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        + conv1_1["bias"]
    )
    new = updated["batch_stats"]["conv1_1_bn"]
    # torch momentum 0.1 is flax momentum 0.9: running = 0.9 * running + 0.1 * batch.
    assert relative_error(new["mean"], 0.1 * raw.mean(axis=(0, 1, 2))) < 1e-4
    assert relative_error(new["var"], 0.9 + 0.1 * raw.var(axis=(0, 1, 2))) < 1e-4


def test_batch_norm_uses_running_statistics_in_evaluation(vgg11_bn_at_32):
    model, variables, x = vgg11_bn_at_32
    train = lambda v, batch: apply(model, v, batch, train=True, mutable=("batch_stats",))
    trained = {"params": variables["params"], **train(variables, x)[1]}
    # Evaluation does not depend on what else is in the batch; training does.
    assert relative_error(apply(model, trained, x[:2]), apply(model, trained, x)[:2]) < 1e-5
    assert relative_error(train(trained, x[:2])[0], train(trained, x)[0][:2]) > 1e-3
    # And evaluation follows the running statistics: new statistics, new outputs.
    assert relative_error(apply(model, trained, x), apply(model, variables, x)) > 1e-3


def test_batch_norm_statistics_are_averaged_across_devices_under_pmap():
    devices = jax.local_device_count()
    assert devices == 4, "conftest.py asks for four CPU devices"
    model = vgg_jax.vgg11_bn(**BN_SMALL, axis_name="batch")
    scale = jnp.arange(1.0, devices + 1)[:, None, None, None, None]  # devices see different data
    x = images((devices, 2, 32, 32, 3)) * scale
    variables = init(model, x[0])

    def train_forward(variables, x):
        return model.apply(variables, x, train=True, mutable=["batch_stats"])[1]["batch_stats"]

    per_device = jax.pmap(train_forward, axis_name="batch", in_axes=(None, 0))(variables, x)
    single_model = model.clone(axis_name=None)
    whole_batch = apply(
        single_model, variables, x.reshape(-1, 32, 32, 3), train=True, mutable=("batch_stats",)
    )[1]["batch_stats"]
    for layer in ("conv1_1_bn", "conv5_2_bn"):
        for stat in ("mean", "var"):
            values = np.asarray(per_device[layer][stat])
            for d in range(1, devices):
                np.testing.assert_array_equal(values[d], values[0])
            assert relative_error(values[0], whole_batch[layer][stat]) < 1e-4


# ---------------------------------------------------------------- initialisation


def init_params(scheme):
    model = vgg_jax.vgg11(width=0.25, fc_features=256, num_classes=10, init_scheme=scheme)
    return init(model, jnp.zeros((1, 64, 64, 3)))["params"]  # 64x64: FC6's window is 2x2


def test_paper_init_is_normal_with_std_0_01_and_zero_biases():
    params = init_params("paper")
    for name in ("conv3_1", "conv5_2", "fc6", "fc7"):
        assert abs(float(jnp.std(params[name]["kernel"])) - 0.01) < 0.001
        np.testing.assert_array_equal(params[name]["bias"], 0.0)


def test_kaiming_init_uses_conv_fan_out_and_small_fc_weights():
    params = init_params("kaiming")
    for name in ("conv3_1", "conv4_2"):
        kernel = params[name]["kernel"]
        fan_out = kernel.shape[0] * kernel.shape[1] * kernel.shape[3]
        assert abs(float(jnp.std(kernel)) / np.sqrt(2.0 / fan_out) - 1) < 0.05
        np.testing.assert_array_equal(params[name]["bias"], 0.0)
    assert abs(float(jnp.std(params["fc7"]["kernel"])) - 0.01) < 0.001


def test_glorot_init_counts_fc6_as_the_dense_layer_it_is():
    params = init_params("glorot")
    kernel = params["fc6"]["kernel"]
    assert kernel.shape == (2, 2, 128, 256)
    bound = np.sqrt(6.0 / (2 * 2 * 128 + 256))  # fan-in 512 + fan-out 256; no 2x2 in fan-out
    assert 0.95 * bound < float(jnp.max(jnp.abs(kernel))) <= bound
    conv = params["conv2_1"]["kernel"]
    conv_bound = np.sqrt(6.0 / (9 * 16 + 9 * 32))
    assert 0.95 * conv_bound < float(jnp.max(jnp.abs(conv))) <= conv_bound


# ---------------------------------------------------------------- dtype


def test_bfloat16_compute_keeps_float32_params_and_logits(vgg11_bn_at_32):
    model, variables, x = vgg11_bn_at_32
    bf16 = model.clone(dtype=jnp.bfloat16)
    abstract = jax.eval_shape(bf16.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
    logits = apply(bf16, variables, x)
    assert logits.dtype == jnp.float32
    feats = apply(bf16, variables, x, layers=["conv2_1"], method="extract_features")
    assert feats["conv2_1"].dtype == jnp.bfloat16
    assert relative_error(logits, apply(model, variables, x)) < 0.05
