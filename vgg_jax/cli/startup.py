"""What every command does before its work: the training libraries checked, log lines plain,
and failures printed as one line. Kept apart from the commands so that --help and argument
errors answer before jax or TensorFlow is imported."""

from __future__ import annotations

import logging
import sys

from vgg_jax.environment import MissingTrainingLibraries, require_training_libraries


def start_command(log_level: int) -> bool:
    """True when the command can go on; otherwise the missing library is named on stderr."""
    try:
        require_training_libraries()
    except MissingTrainingLibraries as error:
        report_failure(error)
        return False
    from absl import logging as absl_logging

    # force: importing TensorFlow's stack has already given the root logger a handler.
    logging.basicConfig(level=log_level, format="%(message)s", force=True)
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax reports every read at WARNING
    return True


def report_failure(error: Exception) -> int:
    """The error as one line on stderr; the command's exit status."""
    print(f"error: {error}", file=sys.stderr)
    return 1
