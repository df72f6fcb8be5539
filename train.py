"""Train a VGG. `python train.py` trains the offline default, a narrow VGG-A on scikit-learn's
digits, on this machine; `--config=FILE` picks another configuration and `--config.KEY=VALUE`
overrides any of its fields. Rerunning the same command resumes from the work directory.

Several hosts: start one process per host with --distributed (coordinator, process count and id
from --coordinator_address/--num_processes/--process_id, or from the cluster's environment).
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

from vgg_jax.environment import MissingTrainingLibraries, require_training_libraries

try:  # before absl and ml_collections, which the base install (no [train] extra) leaves out
    require_training_libraries()
except MissingTrainingLibraries as error:
    sys.exit(f"error: {error}")

from absl import app, flags, logging

from vgg_jax.cli.config_file import (
    checked_config,
    define_config_flag,
    exit_on_unknown_config_field,
)

# Another run holds the work directory (sysexits' EX_TEMPFAIL: try again once it has finished).
EXIT_WORKDIR_IN_USE = 75

define_config_flag()
flags.DEFINE_string("workdir", "runs/default", "Folder for checkpoints, logs and TensorBoard.")
flags.DEFINE_bool("distributed", False, "Join a multi-host run with jax.distributed.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (with --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --distributed).")
flags.DEFINE_integer("process_id", None, "This process's index (with --distributed).")
flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100,
    "With --distributed: a process silent this long is taken as dead, and the others stop.",
)  # fmt: skip
flags.DEFINE_string(
    "compilation_cache_dir", None,
    "Where compiled steps are kept so that a rerun (a resume) does not compile them again: "
    "$JAX_COMPILATION_CACHE_DIR where set, else WORKDIR/compilation_cache; 'none' turns it off.",
)  # fmt: skip
FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    config = checked_config_or_exit(FLAGS.workdir)
    # Imported once the config is checked: TensorFlow (under the input pipeline) takes ~10 s to
    # import, and a mistyped flag or config value should not wait for it.
    import jax

    from vgg_jax.training.loop import TrainingError, WorkdirInUse, train_and_evaluate
    from vgg_jax.training.signals import INTERRUPTED_TWICE, InterruptedTwice

    use_compilation_cache(FLAGS.compilation_cache_dir, FLAGS.workdir)
    logging.set_verbosity(logging.WARNING)  # orbax and tfds report every file at INFO
    if FLAGS.distributed:
        # CPU-only runs (tests, laptops) need a collectives backend across processes.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
            heartbeat_timeout_seconds=FLAGS.heartbeat_timeout_seconds,
        )
    try:
        summary = train_and_evaluate(config, FLAGS.workdir)
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    except WorkdirInUse as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_WORKDIR_IN_USE)
    except InterruptedTwice as error:
        print(f"\n{INTERRUPTED_TWICE}", file=sys.stderr)
        sys.exit(128 + signal.Signals[error.signal_name].value)
    except KeyboardInterrupt:  # before the run took over the signals: nothing was changed
        print("\nInterrupted before training started.", file=sys.stderr)
        sys.exit(128 + signal.SIGINT.value)
    if jax.process_index() == 0:
        print(format_summary(summary))
    if summary["interrupted_by"]:
        sys.exit(128 + signal.Signals[summary["interrupted_by"]].value)


def checked_config_or_exit(workdir: str):
    """The configuration read into its sections, every field checked (vgg_jax.training.
    sections), and a workdir that can be one; otherwise a one-line error, with nothing
    imported or written yet."""
    config = checked_config(FLAGS["config"])
    from vgg_jax.training.workdir import WorkdirUnusable, check_workdir_path, in_use_message

    try:
        check_workdir_path(workdir)
    except WorkdirUnusable as error:
        sys.exit(f"error: {error}")
    busy = in_use_message(workdir)
    if busy:
        print(f"error: {busy}", file=sys.stderr)
        sys.exit(EXIT_WORKDIR_IN_USE)
    return config


def use_compilation_cache(directory: str | None, workdir: str) -> None:
    """JAX's persistent compilation cache: a resumed run starts training without compiling
    (only process 0 writes to it)."""
    import jax

    if directory == "none":
        jax.config.update("jax_enable_compilation_cache", False)
    elif directory or not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        directory = directory or str(pathlib.Path(workdir).absolute() / "compilation_cache")
        jax.config.update("jax_compilation_cache_dir", directory)


def format_summary(summary: dict) -> str:
    minutes, seconds = divmod(summary["wall_time_seconds"], 60)
    lines = []
    if summary["interrupted_by"] and summary["step"] == 0:
        lines.append(f"Stopped by {summary['interrupted_by']} before the first step.")
    elif summary["interrupted_by"]:
        lines.append(
            f"Stopped by {summary['interrupted_by']} at step {summary['step']}; a checkpoint is "
            f"saved: rerun the same command to resume."
        )
    if summary["best_top1_accuracy"] is not None:
        top1, top5 = summary["best_top1_accuracy"], summary["best_top5_accuracy"]
        lines.append(
            f"Best evaluation (step {summary['best_step']}): top-1 accuracy {100 * top1:.2f}% "
            f"(error {100 * (1 - top1):.2f}%), top-5 accuracy {100 * top5:.2f}% "
            f"(error {100 * (1 - top5):.2f}%)."
        )
    first_step = summary.get("seconds_to_first_step")
    lines.append(
        f"{summary['step']} steps, wall time {int(minutes)}m{seconds:04.1f}s"
        + (f" (first step after {first_step:.1f} s)" if first_step is not None else "")
        + f"; checkpoints, logs and TensorBoard in {summary['workdir']}."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(
        main,
        flags_parser=lambda argv: exit_on_unknown_config_field(app.parse_flags_with_usage, argv),
    )
