"""The VGG module: every configuration of the paper, built from the configuration table."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from vgg_jax.model.architectures import (
    HEAD_FEATURE_NAMES,
    LayerSpec,
    conv_blocks,
    downsampling_factor,
    feature_names,
    layer_specs,
    resolve_config,
    resolve_model_name,
    weight_layer_names,
)
from vgg_jax.model.initializers import InitScheme, init_scheme
from vgg_jax.model.layers import (
    POOLINGS,
    SlidingFullyConnected,
    avg_pool_2x2,
    dense_shaped_init,
    l2_pool_hann,
    local_response_norm,
    max_pool_2x2,
    relu,
)
from vgg_jax.model.rules import MODEL_RULES, first_problem, one_of


class VGG(nn.Module):
    """VGGNet (Simonyan & Zisserman, 2014) on NHWC images.

    Attributes:
      config: the paper's configuration, "A", "A-LRN", "B", "C", "D" (VGG16) or "E" (VGG19).
      num_classes: size of the last layer (FC8).
      dropout_rate: dropout after the ReLUs of FC6 and FC7 while training.
      width: multiplier on every convolution's width (0.25 gives 16, 32, 64, 128, 128).
      fc_features: width of FC6 and FC7.
      batch_norm: BatchNorm between every conv and its ReLU, as torchvision's *_bn models;
        running statistics live in the "batch_stats" collection.
      bn_momentum, bn_epsilon: Flax conventions (decay of the running average); the defaults
        are torchvision's momentum 0.1 and eps 1e-5.
      axis_name: the pmap axis over which BatchNorm averages its batch statistics.
      init_scheme: "kaiming" (torchvision's, default), "paper" (N(0, 0.01)) or "glorot".
      in_channels: channels the input must have.
      dtype: computation dtype (e.g. jnp.bfloat16); logits are returned in float32.
      param_dtype: storage dtype of the parameters.
      pooling: "max" (the paper's), "avg" (Gatys et al.'s, for image synthesis) or "l2"
        (DISTS's Hann-window L2 pooling, l2_pool_hann, which halves each side rounding up);
        the parameters are the same whichever.
      remat: recompute each conv block's activations in the backward pass instead of keeping
        them (REMAT_POLICY), to lower training's peak memory; one more forward pass of the
        convs. The parameters and the results are the same either way; extract_features
        does not rematerialise.
      trainable_from: "" (every layer trains), or the lowest layer that trains ("fc8" for a
        linear probe on fc7's features, "fc6", "conv5_1"): nothing below it is differentiated
        (its output is a stop_gradient), and its BatchNorm layers normalise with their
        running statistics, which stay as they are, in training too.

    Calling the module returns logits through the classic head (pool5 flattened into FC6), or
    with dense=True through the dense-evaluation head (FC6 slid over the pool5 map as a
    convolution, FC7/FC8 applied at every position, the class-score map averaged). Both
    heads use the same parameters. FC6's window is the pool5 size of the input the model is
    initialised with: 7x7 for 224x224, 1x1 for 32x32.
    """

    config: str = "D"
    num_classes: int = 1000
    dropout_rate: float = 0.5
    width: float = 1.0
    fc_features: int = 4096
    batch_norm: bool = False
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    axis_name: str | None = None
    init_scheme: str = "kaiming"
    in_channels: int = 3
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    pooling: str = "max"
    remat: bool = False
    trainable_from: str = ""

    def __post_init__(self):
        resolve_config(self.config)
        layers = weight_layer_names(self.config)
        if self.trainable_from and self.trainable_from not in layers:
            raise ValueError(
                f"trainable_from={self.trainable_from!r} names no layer with weights of "
                f"configuration {self.config!r}; choose one of {', '.join(layers)} (or '' "
                f"for all)."
            )
        problem = one_of(POOLINGS).problem("pooling", self.pooling)
        if problem is None:
            init_scheme(self.init_scheme)  # raises, naming the schemes
            fields = {field: getattr(self, field) for field in MODEL_RULES}
            problem = first_problem(fields, MODEL_RULES)
        if problem is not None:
            raise ValueError(problem)
        super().__post_init__()

    def trains(self, layer: str) -> bool:
        """Whether the layer with weights `layer` (or its BatchNorm) trains."""
        if not self.trainable_from:
            return True
        layers = weight_layer_names(self.config)
        return layers.index(layer.removesuffix("_bn")) >= layers.index(self.trainable_from)

    def __call__(self, x: jax.Array, train: bool = False, dense: bool = False) -> jax.Array:
        """Class logits, shape (N, num_classes), float32."""
        logits, _ = self._forward(x, train, dense, wanted=())
        return logits

    def extract_features(
        self,
        x: jax.Array,
        layers: Sequence[str],
        train: bool = False,
        dense: bool = False,
    ) -> dict[str, jax.Array]:
        """Activations of the named layers, computing no further than the deepest one.

        Names are those of `vgg_jax.feature_names(config)`: conv1_1 ... (after BatchNorm and
        ReLU), lrn1, pool1 ... pool5, flatten (classic head only), fc6 and fc7 (after ReLU,
        before dropout) and fc8 (class scores; a score map in the dense head). Use with
        `model.apply(variables, x, layers=[...], method="extract_features")`.
        """
        layers = (layers,) if isinstance(layers, str) else tuple(layers)
        valid = feature_names(self.config)
        unknown = [name for name in layers if name not in valid]
        if not layers:
            raise ValueError(f"Ask for at least one layer: {', '.join(valid)}.")
        if unknown:
            raise ValueError(
                f"Unknown layer names {unknown} for configuration {self.config!r}; "
                f"choose one or more of {', '.join(valid)}."
            )
        if dense and "flatten" in layers:
            raise ValueError("'flatten' exists only in the classic head; ask without dense=True.")
        return self._forward(x, train, dense, wanted=layers)[1]

    @nn.compact
    def _forward(self, x, train: bool, dense: bool, wanted: tuple[str, ...]):
        reaches_head = not wanted or any(name in HEAD_FEATURE_NAMES for name in wanted)
        self._check_call(x, train, dense, wanted, reaches_head)
        scheme = init_scheme(self.init_scheme)
        features: dict[str, jax.Array] = {}

        def record(name: str, value: jax.Array) -> bool:
            """Keeps a wanted activation; True once every wanted one is kept."""
            if name in wanted:
                features[name] = value
            return bool(wanted) and len(features) == len(wanted)

        x = jnp.asarray(x, self.dtype)
        for block in conv_blocks(self.config):
            if self.remat and not wanted:
                x = nn.remat(conv_layers, static_argnums=(2, 3), policy=REMAT_POLICY)(
                    self, x, block, train
                )
                continue
            for spec in block:
                x = conv_layers(self, x, (spec,), train)
                if record(spec.name, x):
                    return None, features

        if not dense and record("flatten", x.reshape(x.shape[0], -1)):
            return None, features
        x = self._frozen_below("fc6", x)
        x = SlidingFullyConnected(
            self.fc_features,
            kernel_init=dense_shaped_init(scheme.fc_kernel),
            bias_init=scheme.bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name="fc6",
        )(x, dense)
        x = relu(x)
        if record("fc6", x):
            return None, features
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = self._fc(self.fc_features, scheme, "fc7")(self._frozen_below("fc7", x))
        x = relu(x)
        if record("fc7", x):
            return None, features
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = self._fc(self.num_classes, scheme, "fc8")(self._frozen_below("fc8", x))
        if record("fc8", x):
            return None, features
        if dense:
            x = jnp.mean(x, axis=(1, 2))
        return jnp.asarray(x, jnp.float32), features

    def _frozen_below(self, layer: str, x: jax.Array) -> jax.Array:
        """`x`, the input of `layer`, cut from the gradient where `layer` is the lowest that
        trains: the frozen layers below are then not differentiated at all."""
        return jax.lax.stop_gradient(x) if layer == self.trainable_from else x

    def _fc(self, features: int, scheme: InitScheme, name: str) -> nn.Dense:
        # On the dense head's (N, h, w, C) maps a Dense is exactly a 1x1 convolution.
        return nn.Dense(
            features,
            kernel_init=scheme.fc_kernel,
            bias_init=scheme.bias,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            name=name,
        )

    def _check_call(self, x, train: bool, dense: bool, wanted, reaches_head: bool) -> None:
        """Rejects a bad input or call before any computation, saying what was expected."""
        shape = tuple(jnp.shape(x))
        if len(shape) != 4:
            hint = " For one image, add a batch axis: x[None]." if len(shape) == 3 else ""
            raise ValueError(
                f"VGG expects a batch of images shaped (N, H, W, C) (NHWC); got an array of "
                f"shape {shape}.{hint}"
            )
        _, height, width, channels = shape
        if channels != self.in_channels:
            hint = (
                " It looks like NCHW: transpose with x.transpose(0, 2, 3, 1)."
                if shape[1] == self.in_channels
                else ""
            )
            raise ValueError(
                f"VGG expects {self.in_channels} channels in the last axis (NHWC); got input "
                f"of shape {shape}.{hint}"
            )
        least, deepest = _smallest_side(self.config, wanted, reaches_head)
        if self.pooling != "l2" and (height < least or width < least):  # l2 rounds up
            raise ValueError(
                f"Input {height}x{width} is too small: VGG's poolings shrink each side "
                f"{least}-fold by {deepest}, so anything under {least}x{least} leaves an "
                f"empty {deepest} map."
            )
        if train and self.batch_norm and not self.is_mutable_collection("batch_stats"):
            raise ValueError(
                "train=True updates the BatchNorm statistics: call "
                "model.apply(variables, x, train=True, mutable=['batch_stats'], rngs=...)."
            )
        if not reaches_head:
            return
        if train and self.dropout_rate > 0 and not self.has_rng("dropout"):
            raise ValueError(
                "train=True applies dropout, which needs a random key: call "
                "model.apply(..., rngs={'dropout': key}) with a new key each step."
            )
        fc6 = self.variables.get("params", {}).get("fc6")
        if fc6 is None:  # initialising: FC6's window is taken from this input
            return
        window = tuple(fc6["kernel"].shape[:2])
        factor = downsampling_factor(self.config)
        rounding = 0 if self.pooling != "l2" else factor - 1  # l2 pooling rounds up
        pool5 = ((height + rounding) // factor, (width + rounding) // factor)
        if dense and (pool5[0] < window[0] or pool5[1] < window[1]):
            raise ValueError(
                f"The dense head slides FC6's {window[0]}x{window[1]} window over the pool5 "
                f"map, so it needs an input of at least {window[0] * factor}x"
                f"{window[1] * factor}; got {height}x{width} (pool5 {pool5[0]}x{pool5[1]})."
            )
        if not dense and pool5 != window:
            raise ValueError(
                f"The classic head's FC6 was built for a {window[0]}x{window[1]} pool5 map "
                f"({window[0] * factor}x{window[1] * factor} input), but this "
                f"{height}x{width} input gives a {pool5[0]}x{pool5[1]} map. Use the dense head "
                f"(model.apply(..., dense=True)) for other sizes, or initialise the model at "
                f"this size."
            )


# Inside a rematerialised block nothing is kept: the backward pass recomputes the block from
# its input, one block at a time, so only the five block inputs need outlive the forward pass.
# A policy that kept the conv outputs would keep most of the memory (VGG's activations are its
# conv outputs); keeping nothing costs one more forward pass of the convs (33% more FLOPs for
# a VGG16 step, in XLA's cost analysis). Whether the peak falls is up to XLA's scheduler.
REMAT_POLICY = jax.checkpoint_policies.nothing_saveable


def conv_layers(module: VGG, x: jax.Array, specs: tuple[LayerSpec, ...], train: bool):
    """Applies `specs` (each conv with its BatchNorm and ReLU, LRN, pool) in `module`'s scope,
    so the parameters are named after the layers whether or not the block is rematerialised."""
    scheme = init_scheme(module.init_scheme)
    for spec in specs:
        if spec.kind == "conv":
            x = module._frozen_below(spec.name, x)
            x = nn.Conv(
                max(1, round(spec.features * module.width)),
                (spec.kernel_size, spec.kernel_size),
                padding="SAME",
                kernel_init=scheme.conv_kernel,
                bias_init=scheme.bias,
                dtype=module.dtype,
                param_dtype=module.param_dtype,
                name=spec.name,
            )(x)
            if module.batch_norm:
                x = nn.BatchNorm(
                    use_running_average=not (train and module.trains(spec.name)),
                    momentum=module.bn_momentum,
                    epsilon=module.bn_epsilon,
                    axis_name=module.axis_name,
                    dtype=module.dtype,
                    param_dtype=module.param_dtype,
                    name=f"{spec.name}_bn",
                )(x)
            x = relu(x)
        elif spec.kind == "lrn":
            x = local_response_norm(x)
        elif module.pooling == "max":  # (looked up by name here, so variants can swap it)
            x = max_pool_2x2(x)
        else:
            x = avg_pool_2x2(x) if module.pooling == "avg" else l2_pool_hann(x)
    return x


def _smallest_side(config: str, wanted, reaches_head: bool) -> tuple[int, str]:
    """The side under which max or average pooling empties the deepest layer computed, and
    that layer's name: 32 for pool5 and the head; 16 for features up to conv5_3 (LPIPS's)."""
    specs = layer_specs(config)
    if reaches_head or not wanted:
        return downsampling_factor(config), specs[-1].name
    last = max(index for index, spec in enumerate(specs) if spec.name in wanted)
    return 2 ** sum(spec.kind == "pool" for spec in specs[: last + 1]), specs[last].name


def create_model(name: str, **kwargs: Any) -> VGG:
    """Builds a model by familiar name ("vgg16", "vgg16_bn") or paper letter ("D", "A-LRN")."""
    config, batch_norm = resolve_model_name(name)
    # A name that fixes batch_norm ("vgg16_bn") and a batch_norm= argument are a TypeError.
    fixed = {"batch_norm": True} if batch_norm else {}
    return VGG(config=config, **fixed, **kwargs)


def vgg11(**kwargs: Any) -> VGG:
    """Configuration A: 8 convs + 3 FC."""
    return create_model("vgg11", **kwargs)


def vgg11_bn(**kwargs: Any) -> VGG:
    """Configuration A with BatchNorm after every conv."""
    return create_model("vgg11_bn", **kwargs)


def vgg11_lrn(**kwargs: Any) -> VGG:
    """Configuration A-LRN: A with local response normalisation after conv1_1."""
    return create_model("vgg11_lrn", **kwargs)


def vgg13(**kwargs: Any) -> VGG:
    """Configuration B: 10 convs + 3 FC."""
    return create_model("vgg13", **kwargs)


def vgg13_bn(**kwargs: Any) -> VGG:
    """Configuration B with BatchNorm after every conv."""
    return create_model("vgg13_bn", **kwargs)


def vgg16_1x1(**kwargs: Any) -> VGG:
    """Configuration C: 16 weight layers, the last conv of blocks 3-5 a 1x1 conv."""
    return create_model("vgg16_1x1", **kwargs)


def vgg16(**kwargs: Any) -> VGG:
    """Configuration D (VGG16): 13 convs + 3 FC."""
    return create_model("vgg16", **kwargs)


def vgg16_bn(**kwargs: Any) -> VGG:
    """Configuration D with BatchNorm after every conv."""
    return create_model("vgg16_bn", **kwargs)


def vgg19(**kwargs: Any) -> VGG:
    """Configuration E (VGG19): 16 convs + 3 FC."""
    return create_model("vgg19", **kwargs)


def vgg19_bn(**kwargs: Any) -> VGG:
    """Configuration E with BatchNorm after every conv."""
    return create_model("vgg19_bn", **kwargs)
