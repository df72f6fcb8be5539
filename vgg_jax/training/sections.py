"""The configuration boundary: a training config (an ml_collections ConfigDict, or the dict a
checkpoint saved) is read here, once, into typed and frozen sections. Every field is checked
against one table of rules (RULES), and configs of older versions are upgraded here; below
this module nothing reads a ConfigDict or restates a default.

It imports no TensorFlow and starts no JAX backend, so train.py reads the config before
jax.distributed.initialize; what needs the devices (check_for_devices) the loop checks later.
The fields, their defaults and their meaning: vgg_jax/configs/default.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from vgg_jax.data.normalization import NORMALIZATIONS
from vgg_jax.model.architectures import (
    BATCH_NORM_SUFFIX,
    resolve_model_name,
    weight_layer_names,
)
from vgg_jax.model.dtypes import COMPUTE_DTYPES, compute_dtype
from vgg_jax.model.initializers import INIT_SCHEMES
from vgg_jax.model.rules import (
    MODEL_RULES,
    POSITIVE_INTEGER,
    Rule,
    at_least,
    first_problem,
    is_integer,
    is_number,
    one_of,
)
from vgg_jax.model.vgg import VGG, create_model
from vgg_jax.training.optim import SCHEDULES
from vgg_jax.training.warm_start import (
    CLASSIFIER,
    HEAD_LAYERS,
    INIT_LAYERS,
    expected_normalization,
)


class ConfigError(ValueError):
    """A config field that cannot work; the message names it."""


@dataclasses.dataclass(frozen=True)
class ModelSection:
    """The network: `model` names it, batch norm included ("vgg16_bn"); the rest shape it."""

    model: str
    width: float
    fc_features: int
    dropout_rate: float
    init_scheme: str
    dtype: str  # "auto", or one of COMPUTE_DTYPES
    remat: bool
    trainable: str  # "all", "classifier", "head", or the lowest layer that trains

    @property
    def trainable_from(self) -> str:
        """The lowest layer that trains ("" for all): VGG.trainable_from."""
        return TRAINABLE_PARTS.get(self.trainable, self.trainable)

    def build(self, num_classes: int, dtype: Any = None) -> VGG:
        """The VGG this section describes; `dtype` overrides the computation dtype ("auto"
        asks JAX for its backend, which a check before jax.distributed must not)."""
        return create_model(
            self.model,
            num_classes=num_classes,
            width=self.width,
            fc_features=self.fc_features,
            dropout_rate=self.dropout_rate,
            init_scheme=self.init_scheme,
            dtype=dtype if dtype is not None else compute_dtype(self.dtype),
            remat=self.remat,
            trainable_from=self.trainable_from,
        )


@dataclasses.dataclass(frozen=True)
class DataSection:
    """Where the examples come from and how they are preprocessed (Sections 3.1-3.2)."""

    dataset: str
    data_dir: str
    train_split: str
    eval_split: str
    shuffle_buffer_size: int
    train_scale: tuple
    crop_size: int
    random_flip: bool
    pca_lighting: float
    normalization: str  # a name of NORMALIZATIONS ("auto" is resolved by read_config)
    inception_crop: bool
    eval_scale: int

    @property
    def test_scale(self) -> int:
        """Q, the smaller side evaluation rescales to: eval_scale, else the crop's (0: as
        stored)."""
        return self.eval_scale or self.crop_size or 0


@dataclasses.dataclass(frozen=True)
class OptimizerSection:
    """One SGD step: the global batch, its micro-batches, the base rate and the update."""

    batch_size: int
    grad_accum_steps: int
    learning_rate: float  # for a batch of 256
    momentum: float
    nesterov: bool
    weight_decay: float
    grad_clip_norm: float
    copied_lr_multiplier: float  # every trained layer's rate but the classifier's, against it


@dataclasses.dataclass(frozen=True)
class ScheduleSection:
    """How long the run is, and how the learning rate moves over it."""

    num_epochs: int
    max_steps: int
    lr_schedule: str
    warmup_epochs: float
    lr_step_epochs: tuple
    lr_step_factor: float
    lr_plateau_patience: int


@dataclasses.dataclass(frozen=True)
class RunSection:
    """Seed, starting point and bookkeeping."""

    seed: int
    init_from: str
    init_layers: str
    log_every_steps: int
    checkpoint_every_steps: int
    keep_checkpoints: int


SECTIONS = {
    "model": ModelSection,
    "data": DataSection,
    "optimizer": OptimizerSection,
    "schedule": ScheduleSection,
    "run": RunSection,
}


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """A checked training config, by section; `fields` are the values as given (written to
    config.json and into each checkpoint's record)."""

    model: ModelSection
    data: DataSection
    optimizer: OptimizerSection
    schedule: ScheduleSection
    run: RunSection
    fields: Mapping[str, Any] = dataclasses.field(repr=False, compare=False)

    def as_dict(self) -> dict:
        return dict(self.fields)

    def to_json(self) -> str:
        return json.dumps(dict(self.fields), indent=2)


# config.trainable's names for parts of the network, by the lowest layer that trains.
TRAINABLE_PARTS = {"all": "", "classifier": CLASSIFIER, "head": HEAD_LAYERS[0]}

NON_NEGATIVE_NUMBER = Rule(lambda v: is_number(v) and v >= 0, "be a non-negative number")
NAMED = Rule(lambda v: isinstance(v, str) and bool(v), "name one", ";")
FLAG = Rule(lambda v: isinstance(v, bool), "be True or False")
# Every field with a rule, in the order they are checked. The model name is resolved instead
# (resolve_model_name says what it accepts).
RULES: dict[str, Rule] = {
    "lr_schedule": one_of(SCHEDULES),
    "init_scheme": one_of(INIT_SCHEMES),
    "dtype": one_of(("auto", *COMPUTE_DTYPES)),
    "init_layers": one_of(INIT_LAYERS),
    "normalization": one_of(("auto", *NORMALIZATIONS)),
    "batch_size": POSITIVE_INTEGER,
    "grad_accum_steps": at_least(1, "a positive integer (1: none)"),
    "remat": FLAG,
    "num_epochs": POSITIVE_INTEGER,
    "log_every_steps": POSITIVE_INTEGER,
    "checkpoint_every_steps": POSITIVE_INTEGER,
    "keep_checkpoints": POSITIVE_INTEGER,
    "shuffle_buffer_size": POSITIVE_INTEGER,
    "max_steps": at_least(0, "a non-negative integer (0: no limit)"),
    "seed": at_least(0, "a non-negative integer"),
    "crop_size": at_least(0, "a non-negative integer (0: no crop)"),
    "eval_scale": at_least(0, "a non-negative integer (0: as stored)"),
    "lr_plateau_patience": at_least(0, "a non-negative integer"),
    "width": MODEL_RULES["width"],
    "fc_features": MODEL_RULES["fc_features"],
    "dropout_rate": MODEL_RULES["dropout_rate"],
    "learning_rate": Rule(NON_NEGATIVE_NUMBER.test, "be a non-negative number (0: frozen)"),
    "weight_decay": NON_NEGATIVE_NUMBER,
    "momentum": Rule(lambda v: is_number(v) and 0 <= v < 1, "be in [0, 1)"),
    "warmup_epochs": NON_NEGATIVE_NUMBER,
    "lr_step_factor": Rule(lambda v: is_number(v) and v > 0, "be a positive number"),
    "grad_clip_norm": Rule(NON_NEGATIVE_NUMBER.test, "be a non-negative number (0: no clipping)"),
    "copied_lr_multiplier": Rule(lambda v: is_number(v) and v > 0, "be a positive number"),
    "pca_lighting": NON_NEGATIVE_NUMBER,
    "train_scale": Rule(
        lambda v: len(v) == 0 or (len(v) == 2 and all(map(is_integer, v)) and 1 <= v[0] <= v[1]),
        "be () or (S_min, S_max) with 1 <= S_min <= S_max",
    ),
    "lr_step_epochs": Rule(
        lambda v: all(is_number(e) and e >= 0 for e in v), "be a tuple of non-negative epochs"
    ),
    "dataset": NAMED,
    "train_split": NAMED,
    "eval_split": NAMED,
}

# Fields that are gone, and what to write instead. A checkpoint saved with one is upgraded
# (upgraded_saved_config); a config given to train with one is refused with this message.
RETIRED_FIELDS = {
    "batch_norm": (
        "batch_norm is no longer a field: batch norm is chosen by the model name alone. Drop "
        "batch_norm and name the model with it, e.g. --config.model=vgg16_bn (any name or "
        "paper letter + '_bn')"
    ),
}


def read_config(config) -> TrainingConfig:
    """The config (a ConfigDict or a dict), every field checked, and normalization "auto"
    resolved to the one the starting weights expect; raises ConfigError naming the first field
    that cannot work."""
    if isinstance(config, TrainingConfig):
        return config
    fields = _flat(config)
    for field, message in RETIRED_FIELDS.items():
        if field in fields:
            raise ConfigError(f"config.{message}.")
    missing = [name for cls in SECTIONS.values() for name in _names(cls) if name not in fields]
    if missing:
        raise ConfigError(
            f"config lacks {', '.join(missing)} (every field, with its default: "
            f"vgg_jax/configs/default.py)."
        )
    problem = _first_problem(fields)
    if problem is not None:
        raise ConfigError(problem)
    normalization, problem = _normalization(fields)
    if problem is not None:
        raise ConfigError(problem)
    return _sections({**fields, "normalization": normalization})


def read_saved_config(saved: Mapping[str, Any]) -> TrainingConfig:
    """The config a checkpoint saved, upgraded to today's fields; fields added since it was
    saved take their defaults, but a run that names no normalization trained with ImageNet's.
    Not checked again: it trained."""
    from vgg_jax.configs.default import get_config

    defaults = {**_flat(get_config()), "normalization": "imagenet"}
    fields = {**defaults, **upgraded_saved_config(saved)}
    return _sections(fields)


def upgraded_saved_config(saved: Mapping[str, Any]) -> dict:
    """A saved config in today's terms: config.batch_norm (runs saved before batch norm was
    chosen by the model name alone) becomes the name's "_bn"."""
    config = dict(saved)
    if "batch_norm" in config:
        batch_norm = config.pop("batch_norm")
        if batch_norm and not resolve_model_name(config.get("model", "?"))[1]:
            config["model"] = f"{config['model']}{BATCH_NORM_SUFFIX}"
    return config


def check_for_devices(config: TrainingConfig, device_count: int, backend: str) -> None:
    """Raises ConfigError where the batch does not split over `device_count` devices into
    grad_accum_steps whole micro-batches each, or float16 is asked of a TPU."""
    batch_size, micro = config.optimizer.batch_size, config.optimizer.grad_accum_steps
    per_device = batch_size // device_count
    if per_device % micro:
        raise ConfigError(
            f"config.grad_accum_steps={micro} does not split the {per_device} examples each "
            f"of the {device_count} devices gets (batch_size={batch_size}) into whole "
            f"micro-batches; use a divisor of {per_device}, or a batch_size that is a "
            f"multiple of {device_count * micro}."
        )
    if config.model.dtype == "float16" and backend == "tpu":
        raise ConfigError(
            "config.dtype='float16' has no fast path on TPUs, whose matrix units take "
            "bfloat16: use config.dtype='bfloat16' (or 'auto')."
        )


def _flat(config) -> dict:
    """The fields in the config's order, a ConfigDict's references resolved."""
    if hasattr(config, "to_json"):  # a ConfigDict: its own order (to_dict sorts)
        return {name: config[name] for name in json.loads(config.to_json())}
    return dict(config)


def _names(cls) -> list[str]:
    return [field.name for field in dataclasses.fields(cls)]


def _first_problem(fields: dict) -> str | None:
    choices = ("lr_schedule", "init_scheme", "dtype", "init_layers", "normalization")
    problem = first_problem(fields, {name: RULES[name] for name in choices}, "config.")
    if problem is not None:
        return problem
    try:
        config_letter, _ = resolve_model_name(fields["model"])
    except ValueError as error:
        return f"config.model: {error}"
    trainable, layers = fields["trainable"], weight_layer_names(config_letter)
    if trainable not in TRAINABLE_PARTS and trainable not in layers:
        return (
            f"config.trainable={trainable!r} names no part or layer of {fields['model']}; "
            f"choose {', '.join(TRAINABLE_PARTS)}, or the lowest layer that trains, one of "
            f"{', '.join(layers)}."
        )
    rest = {name: rule for name, rule in RULES.items() if name not in choices}
    return first_problem(fields, rest, "config.") or _augmentation_problem(fields)


def _normalization(fields: dict) -> tuple[str, str | None]:
    """(config.normalization as given, or for "auto" what config.init_from's weights expect,
    ImageNet's where it names none; the problem where one is given against theirs)."""
    given, init_from = fields["normalization"], fields["init_from"]
    expected = expected_normalization(init_from)  # a work directory's config.json, read once
    if given == "auto":
        return expected or "imagenet", None
    if expected is None or given == expected:
        return given, None
    return given, (
        f"config.normalization={given!r} is not the normalisation the weights of "
        f"config.init_from={init_from!r} expect ({expected!r}): leave it 'auto' to use theirs."
    )


def _augmentation_problem(fields: dict) -> str | None:
    """What the fields of the training augmentation cannot do together (TrainAugmentation
    refuses the same, later: here train.py says it before any data is read)."""
    scale, crop = tuple(fields["train_scale"]), fields["crop_size"]
    if scale and crop and crop > scale[0]:
        return (
            f"config.crop_size={crop} is larger than the smallest training scale "
            f"(config.train_scale={scale}): use S_min >= {crop}, or a smaller crop."
        )
    if fields["inception_crop"] and (not crop or scale):
        return (
            "config.inception_crop replaces scale jittering: give config.crop_size (e.g. "
            "224) and config.train_scale=()."
        )
    return None


def _sections(fields: dict) -> TrainingConfig:
    def section(cls):
        values = {name: fields[name] for name in _names(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})

    return TrainingConfig(**{name: section(cls) for name, cls in SECTIONS.items()}, fields=fields)
