"""Every field of a training config checked at once, before TensorFlow is imported, any data is
read or anything is written: one line naming the field, what it holds and what it may hold.

It imports no TensorFlow and starts no JAX backend, so train.py runs it before
jax.distributed.initialize; what needs the devices (check_for_devices) the loop checks later.
"""

from __future__ import annotations

from vgg_jax.model.architectures import resolve_model_name
from vgg_jax.model.dtypes import COMPUTE_DTYPES
from vgg_jax.model.initializers import INIT_SCHEMES
from vgg_jax.model.vgg import model_from_config
from vgg_jax.training.optim import SCHEDULES
from vgg_jax.training.warm_start import INIT_LAYERS


class ConfigError(ValueError):
    """A config field that cannot work; the message names it."""


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# field -> (test, what it must be)
RULES = {
    "batch_size": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "grad_accum_steps": (lambda v: _integer(v) and v >= 1, "a positive integer (1: none)"),
    "remat": (lambda v: isinstance(v, bool), "True or False"),
    "num_epochs": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "log_every_steps": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "checkpoint_every_steps": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "keep_checkpoints": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "shuffle_buffer_size": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "max_steps": (lambda v: _integer(v) and v >= 0, "a non-negative integer (0: no limit)"),
    "seed": (lambda v: _integer(v) and v >= 0, "a non-negative integer"),
    "crop_size": (lambda v: _integer(v) and v >= 0, "a non-negative integer (0: no crop)"),
    "eval_scale": (lambda v: _integer(v) and v >= 0, "a non-negative integer (0: as stored)"),
    "lr_plateau_patience": (lambda v: _integer(v) and v >= 0, "a non-negative integer"),
    "width": (lambda v: _number(v) and v > 0, "a positive multiplier"),
    "fc_features": (lambda v: _integer(v) and v >= 1, "a positive integer"),
    "dropout_rate": (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    "learning_rate": (lambda v: _number(v) and v >= 0, "a non-negative number (0: frozen)"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "in [0, 1)"),
    "warmup_epochs": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "lr_step_factor": (lambda v: _number(v) and v > 0, "a positive number"),
    "grad_clip_norm": (lambda v: _number(v) and v >= 0, "a non-negative number (0: no clipping)"),
    "pca_lighting": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "train_scale": (
        lambda v: (
            len(v) == 0 or (len(v) == 2 and all(_integer(s) for s in v) and 1 <= v[0] <= v[1])
        ),
        "() or (S_min, S_max) with 1 <= S_min <= S_max",
    ),
    "lr_step_epochs": (
        lambda v: all(_number(e) and e >= 0 for e in v),
        "a tuple of non-negative epochs",
    ),
}
CHOICES = {
    "lr_schedule": SCHEDULES,
    "init_scheme": tuple(INIT_SCHEMES),
    "dtype": ("auto", *COMPUTE_DTYPES),
    "init_layers": INIT_LAYERS,
}


def check_config(config) -> None:
    """Raises ConfigError for the first field that cannot work."""
    if "batch_norm" in config:
        _build(config)  # its message says what to write instead
    for field, choices in CHOICES.items():
        if config[field] not in choices:
            raise ConfigError(
                f"config.{field} must be one of {', '.join(choices)}; got {config[field]!r}."
            )
    try:
        resolve_model_name(config.model)
    except ValueError as error:
        raise ConfigError(f"config.model: {error}") from None
    for field, (test, expected) in RULES.items():
        try:
            valid = bool(test(config[field]))
        except TypeError:
            valid = False
        if not valid:
            raise ConfigError(f"config.{field} must be {expected}, got {config[field]!r}.")
    for field in ("dataset", "train_split", "eval_split"):
        if not isinstance(config[field], str) or not config[field]:
            raise ConfigError(f"config.{field} must name one; got {config[field]!r}.")
    _build(config)  # anything the model itself refuses


def check_for_devices(config, device_count: int, backend: str) -> None:
    """Raises ConfigError where the batch does not split over `device_count` devices into
    grad_accum_steps whole micro-batches each, or float16 is asked of a TPU."""
    per_device = config.batch_size // device_count
    if per_device % config.grad_accum_steps:
        raise ConfigError(
            f"config.grad_accum_steps={config.grad_accum_steps} does not split the "
            f"{per_device} examples each of the {device_count} devices gets "
            f"(batch_size={config.batch_size}) into whole micro-batches; use a divisor of "
            f"{per_device}, or a batch_size that is a multiple of "
            f"{device_count * config.grad_accum_steps}."
        )
    if config.dtype == "float16" and backend == "tpu":
        raise ConfigError(
            "config.dtype='float16' has no fast path on TPUs, whose matrix units take "
            "bfloat16: use config.dtype='bfloat16' (or 'auto')."
        )


def _build(config) -> None:
    # "auto" would ask JAX for its backend, which must not start before jax.distributed does.
    config = config.copy_and_resolve_references()
    if config.get("dtype") == "auto":
        config.dtype = "float32"
    try:
        model_from_config(config, num_classes=1)
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None
