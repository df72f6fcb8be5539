"""The model against the paper's Table 1, its parameter counts and its dimension walkthrough.

Everything here is read off real models with jax.eval_shape, so full-size models cost no compute.
"""

import jax
import jax.numpy as jnp
import pytest

import vgg_jax

# Table 1 transcribed independently of the library ("M" is a 2x2 max-pool).
TABLE_1 = {
    "A": "c3-64 M c3-128 M c3-256 c3-256 M c3-512 c3-512 M c3-512 c3-512 M",
    "A-LRN": "c3-64 LRN M c3-128 M c3-256 c3-256 M c3-512 c3-512 M c3-512 c3-512 M",
    "B": "c3-64 c3-64 M c3-128 c3-128 M c3-256 c3-256 M c3-512 c3-512 M c3-512 c3-512 M",
    "C": "c3-64 c3-64 M c3-128 c3-128 M c3-256 c3-256 c1-256 M "
    "c3-512 c3-512 c1-512 M c3-512 c3-512 c1-512 M",
    "D": "c3-64 c3-64 M c3-128 c3-128 M c3-256 c3-256 c3-256 M "
    "c3-512 c3-512 c3-512 M c3-512 c3-512 c3-512 M",
    "E": "c3-64 c3-64 M c3-128 c3-128 M c3-256 c3-256 c3-256 c3-256 M "
    "c3-512 c3-512 c3-512 c3-512 M c3-512 c3-512 c3-512 c3-512 M",
}

# PAPER.md: exact counts with 1000 classes, and with BatchNorm after every conv.
PARAMETER_COUNTS = {
    "vgg11": 132_863_336,
    "vgg11_lrn": 132_863_336,
    "vgg13": 133_047_848,
    "vgg16_1x1": 133_638_952,
    "vgg16": 138_357_544,
    "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840,
    "vgg13_bn": 133_053_736,
    "vgg16_bn": 138_365_992,
    "vgg19_bn": 143_678_248,
}

# PAPER.md: multiply-accumulates at 224x224, in G.
GIGA_MACS = {"A": 7.609, "A-LRN": 7.609, "B": 11.308, "C": 11.771, "D": 15.470, "E": 19.632}

IMAGE_224 = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)


def abstract_variables(model, images=IMAGE_224):
    return jax.eval_shape(model.init, jax.random.key(0), images)


def describe_layers(config: str) -> str:
    """The model's conv part in Table 1 notation, judged from its parameters and shapes."""
    model = vgg_jax.VGG(config=config)
    params = abstract_variables(model)["params"]
    rows = vgg_jax.layer_table(model, 224)
    tokens, channels, spatial = [], 3, (224, 224)
    for row in rows:
        if row.name in ("flatten", "fc6", "fc7", "fc8"):
            break
        if row.name in params:  # a conv: its kernel says its size and width
            kh, kw, cin, cout = params[row.name]["kernel"].shape
            assert kh == kw and cin == channels and row.output_shape == (*spatial, cout)
            tokens.append(f"c{kh}-{cout}")
            channels = cout
        elif row.output_shape[:2] == (spatial[0] // 2, spatial[1] // 2):
            assert row.params == 0 and row.output_shape[2] == channels
            tokens.append("M")
            spatial = row.output_shape[:2]
        else:  # neither a conv nor a pool: it must keep the shape and have no weights
            assert row.output_shape == (*spatial, channels) and row.params == 0
            assert row.name.startswith("lrn")
            tokens.append("LRN")
    return " ".join(tokens)


@pytest.mark.parametrize("config", list(TABLE_1))
def test_layer_list_matches_table_1(config):
    assert describe_layers(config) == TABLE_1[config]


def test_every_paper_configuration_is_in_the_table():
    assert set(vgg_jax.CONFIGS) == set(TABLE_1)


@pytest.mark.parametrize("name", list(PARAMETER_COUNTS))
def test_exact_parameter_counts(name):
    model = vgg_jax.create_model(name)
    variables = abstract_variables(model)
    assert vgg_jax.count_params(variables["params"]) == PARAMETER_COUNTS[name]
    # Running statistics are state, not parameters: two per BN channel, outside "params".
    if model.batch_norm:
        conv_widths = sum(
            spec.features for spec in vgg_jax.layer_specs(model.config) if spec.kind == "conv"
        )
        assert vgg_jax.count_params(variables["batch_stats"]) == 2 * conv_widths
    else:
        assert "batch_stats" not in variables


@pytest.mark.parametrize("config", list(GIGA_MACS))
def test_multiply_accumulates_at_224(config):
    rows = vgg_jax.layer_table(vgg_jax.VGG(config=config), 224)
    assert round(sum(row.macs for row in rows) / 1e9, 3) == GIGA_MACS[config]


def test_vgg16_dimension_walkthrough():
    """PAPER.md: 224x224x3 -> block1 224x224x64 -> pool 112x112x64 -> ... -> 1000."""
    model = vgg_jax.vgg16()
    names = [
        "conv1_2", "pool1", "conv2_2", "pool2", "conv3_3", "pool3",
        "conv4_3", "pool4", "conv5_3", "pool5", "flatten", "fc6", "fc7", "fc8",
    ]  # fmt: skip
    variables = abstract_variables(model)
    outputs = jax.eval_shape(
        lambda v, x: model.apply(v, x, layers=names, method="extract_features"),
        variables,
        IMAGE_224,
    )
    logits = jax.eval_shape(model.apply, variables, IMAGE_224)
    walkthrough = [tuple(outputs[name].shape[1:]) for name in names] + [logits.shape[1:]]
    assert walkthrough == [
        (224, 224, 64), (112, 112, 64), (112, 112, 128), (56, 56, 128),
        (56, 56, 256), (28, 28, 256), (28, 28, 512), (14, 14, 512),
        (14, 14, 512), (7, 7, 512), (25088,), (4096,), (4096,), (1000,), (1000,),
    ]  # fmt: skip


def test_classic_head_size_follows_the_init_input():
    """FC6 reads 7x7x512 = 25088 inputs at 224x224 and 512 at 32x32."""
    model = vgg_jax.vgg16()
    small = abstract_variables(model, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    assert small["params"]["fc6"]["kernel"].shape == (1, 1, 512, 4096)
    assert abstract_variables(model)["params"]["fc6"]["kernel"].shape == (7, 7, 512, 4096)


def test_named_constructors_and_letters_build_the_same_models():
    pairs = {
        vgg_jax.vgg11: ("A", False),
        vgg_jax.vgg11_bn: ("A", True),
        vgg_jax.vgg11_lrn: ("A-LRN", False),
        vgg_jax.vgg13: ("B", False),
        vgg_jax.vgg13_bn: ("B", True),
        vgg_jax.vgg16_1x1: ("C", False),
        vgg_jax.vgg16: ("D", False),
        vgg_jax.vgg16_bn: ("D", True),
        vgg_jax.vgg19: ("E", False),
        vgg_jax.vgg19_bn: ("E", True),
    }
    for builder, (config, batch_norm) in pairs.items():
        model = builder(num_classes=10)
        assert (model.config, model.batch_norm, model.num_classes) == (config, batch_norm, 10)
        assert vgg_jax.create_model(config, batch_norm=batch_norm, num_classes=10) == model
    assert vgg_jax.create_model("a-lrn").config == "A-LRN"


def test_width_multiplier_scales_every_conv():
    model = vgg_jax.vgg16(width=0.25)
    params = abstract_variables(model)["params"]
    widths = [params[f"conv{b}_1"]["kernel"].shape[-1] for b in range(1, 6)]
    assert widths == [16, 32, 64, 128, 128]
