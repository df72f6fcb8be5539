"""Every bad input gives a clear error, raised before any computation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from helpers import init

import vgg_jax

SMALL = dict(width=1 / 16, fc_features=16, num_classes=3)


@pytest.fixture(scope="module")
def model_at_64():
    model = vgg_jax.vgg11(**SMALL)
    return model, init(model, jnp.zeros((1, 64, 64, 3)))  # FC6's window: 2x2


@pytest.fixture
def no_computation(monkeypatch):
    """Makes any convolution fail, so an error seen is one raised before the network ran."""

    def refuse(*args, **kwargs):
        raise AssertionError("a convolution ran before the input was checked")

    monkeypatch.setattr(nn.Conv, "__call__", refuse)


@pytest.mark.parametrize("name", ["F", "vgg17", "resnet50"])
def test_unknown_configuration_lists_the_valid_ones(name):
    with pytest.raises(ValueError, match=r"Unknown VGG configuration.*A, A-LRN, B, C, D, E"):
        vgg_jax.create_model(name)
    with pytest.raises(ValueError, match="vgg16_bn"):
        vgg_jax.VGG(config=name)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 0}, "num_classes must be a positive integer, got 0"),
        ({"num_classes": -3}, "num_classes must be a positive integer"),
        ({"num_classes": 2.5}, "num_classes must be a positive integer"),
        ({"dropout_rate": 1.0}, r"dropout_rate must be in \[0, 1\), got 1.0"),
        ({"dropout_rate": -0.1}, r"dropout_rate must be in \[0, 1\)"),
        ({"width": 0.0}, "width must be a positive multiplier"),
        ({"fc_features": 0}, "fc_features must be a positive integer"),
        (
            {"init_scheme": "xavier"},
            "Unknown initialisation scheme 'xavier'.*kaiming, paper, glorot",
        ),
    ],
)
def test_bad_hyperparameters_fail_at_construction(kwargs, message):
    with pytest.raises(ValueError, match=message):
        vgg_jax.vgg16(**kwargs)


def test_named_model_refuses_to_change_its_batch_norm():
    with pytest.raises(TypeError, match="batch_norm"):
        vgg_jax.vgg16_bn(batch_norm=False)


@pytest.mark.parametrize(
    "shape, message",
    [
        ((64, 64, 3), r"\(N, H, W, C\).*shape \(64, 64, 3\).*add a batch axis: x\[None\]"),
        ((2, 64, 64), r"\(N, H, W, C\).*shape \(2, 64, 64\)"),
        ((1, 1, 64, 64, 3), r"\(N, H, W, C\)"),
        ((2, 3, 64, 64), r"expects 3 channels.*NCHW: transpose with x.transpose\(0, 2, 3, 1\)"),
        ((2, 64, 64, 1), r"expects 3 channels in the last axis \(NHWC\); got input of shape"),
        ((2, 16, 16, 3), r"Input 16x16 is too small.*under 32x32 leaves an empty pool5"),
        ((2, 64, 31, 3), r"Input 64x31 is too small"),
    ],
)
def test_bad_input_shapes(model_at_64, no_computation, shape, message):
    model, variables = model_at_64
    with pytest.raises(ValueError, match=message):
        model.apply(variables, jnp.zeros(shape))
    with pytest.raises(ValueError, match=message):  # at init too, and under tracing
        jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def test_classic_head_size_mismatch_points_to_the_dense_head(model_at_64, no_computation):
    model, variables = model_at_64
    message = (
        r"classic head's FC6 was built for a 2x2 pool5 map \(64x64 input\), but this 96x64 "
        r"input gives a 3x2 map. Use the dense head"
    )
    with pytest.raises(ValueError, match=message):
        model.apply(variables, jnp.zeros((1, 96, 64, 3)))


def test_dense_head_needs_the_fc6_window(model_at_64, no_computation):
    model, variables = model_at_64
    with pytest.raises(ValueError, match=r"needs an input of at least 64x64; got 64x32"):
        model.apply(variables, jnp.zeros((1, 64, 32, 3)), dense=True)


def test_training_without_a_dropout_key(model_at_64, no_computation):
    model, variables = model_at_64
    with pytest.raises(ValueError, match=r"rngs=\{'dropout': key\}"):
        model.apply(variables, jnp.zeros((1, 64, 64, 3)), train=True)


@pytest.fixture(scope="module")
def bn_model_at_32():
    model = vgg_jax.vgg11_bn(**SMALL)
    return model, jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_training_batch_norm_without_mutable_statistics(bn_model_at_32, no_computation):
    model, variables = bn_model_at_32
    with pytest.raises(ValueError, match=r"mutable=\['batch_stats'\]"):
        model.apply(
            variables, jnp.zeros((1, 32, 32, 3)), train=True, rngs={"dropout": jax.random.key(0)}
        )


def test_unknown_feature_names(model_at_64, no_computation):
    model, variables = model_at_64
    x = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match=r"Unknown layer names \['conv5_3'\].*conv5_2, pool5"):
        model.apply(variables, x, layers=["conv1_1", "conv5_3"], method="extract_features")
    with pytest.raises(ValueError, match="at least one layer"):
        model.apply(variables, x, layers=[], method="extract_features")
    with pytest.raises(ValueError, match="only in the classic head"):
        model.apply(variables, x, layers=["flatten"], dense=True, method="extract_features")
