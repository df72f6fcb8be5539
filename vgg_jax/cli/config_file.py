"""The training config as the commands that take one read it (train.py, the TPU plan):
`--config=FILE` (vgg_jax/configs/default.py by default) and `--config.KEY=VALUE` overrides, by
ml_collections' config_flags; a file that does not load, an unknown field or a value that
cannot work is one line on stderr and an exit, before anything heavy is imported."""

from __future__ import annotations

import os
import pathlib
import sys

DEFAULT_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def _exit(message: str, status: int):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(status)


def exit_on_unknown_config_field(parse, *args, status: int = 1):
    """Runs parse(*args), turning ml_collections' chained traceback for an override of a
    field the configuration lacks (--config.KEY=VALUE) into one line naming the overrides."""
    overrides = [arg.split("=")[0] for arg in sys.argv[1:] if arg.startswith("--config.")]
    try:
        return parse(*args)
    except (AttributeError, KeyError, TypeError) as error:
        if not overrides:
            raise
        while error.args and isinstance(error.args[0], Exception):
            error = error.args[0]  # the KeyError inside, with ml_collections' suggestion
        detail = str(error.args[0] if error.args else error).replace("\n", ". ")
        from vgg_jax.training.sections import RETIRED_FIELDS

        for field, message in RETIRED_FIELDS.items():
            if f"--config.{field}" in overrides:
                detail += f". {message}"
        _exit(
            f"unknown configuration field in {', '.join(overrides)}: {detail} (the fields "
            f"and their meaning: vgg_jax/configs/default.py)",
            status,
        )


def define_config_flag(status: int = 1) -> None:
    """--config, with ml_collections applying the overrides to the default file's config
    here, and to another file's when the flags are parsed."""
    from ml_collections import config_flags

    exit_on_unknown_config_field(
        config_flags.DEFINE_config_file, "config", str(DEFAULT_CONFIG), "Training configuration.",
        status=status,
    )  # fmt: skip


def checked_config(config_flag, status: int = 1):
    """The --config flag's value read into its sections (vgg_jax.training.sections), every
    field checked; otherwise one line and an exit with `status`."""
    try:
        config = config_flag.value
        "model" in config  # noqa: B015 (ml_collections defers a file's load error to a read)
    except OSError:
        files = [arg.split("=", 1)[1] for arg in sys.argv[1:] if arg.startswith("--config=")]
        path = files[-1].split(":")[0] if files else str(DEFAULT_CONFIG)
        why = "no such file" if not os.path.isfile(path) else "it failed to load (see above)"
        _exit(f"cannot read the configuration file {path}: {why}.", status)
    from vgg_jax.training.sections import ConfigError, read_config

    try:
        return read_config(config)
    except ConfigError as error:
        _exit(str(error), status)
