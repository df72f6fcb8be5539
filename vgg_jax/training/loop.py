"""The training loop behind train.py: train_and_evaluate(config, workdir).

It resumes from the newest readable checkpoint in `workdir`, trains with the pmapped steps of
vgg_jax.training.steps, evaluates at the end of every epoch, and saves every
`checkpoint_every_steps` steps and after every evaluation. Ctrl-C or SIGTERM finish the
current step, save, and return; a loss or parameter that turns NaN stops the run before it can
reach a checkpoint.

The story, one function each: set up (data, model, state, resume), train an epoch, end the
epoch (evaluate, plateau, best, report, save), finish (summary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import pathlib
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vgg_jax.data import pipeline, sources
from vgg_jax.files import write_atomically
from vgg_jax.model.costs import training_flops_per_image
from vgg_jax.model.dtypes import dtype_choice
from vgg_jax.parallel import replicate, unreplicate
from vgg_jax.training import warm_start
from vgg_jax.training.checkpoints import (
    UNREADABLE_FOLDER,
    CheckpointNotFound,
    Checkpoints,
    best_rank,
    read_trained_variables,
)
from vgg_jax.training.memory import DoesNotFit, check_step_memory
from vgg_jax.training.reports import (
    TrainingError,
    TrainLog,
    disk_full_message,
    is_disk_full,
    log_fatal,
    logger,
    nan_message,
    peak_bf16_flops,
    report_evaluation,
    report_skipped,
    run_logging,
    write_summary,
)
from vgg_jax.training.sections import (
    ConfigError,
    RunSection,
    TrainingConfig,
    check_for_devices,
    read_config,
)
from vgg_jax.training.signals import INTERRUPTED_TWICE, InterruptedTwice, stop_requests
from vgg_jax.training.steps import init_training, pmapped_steps
from vgg_jax.training.workdir import (
    WorkdirInUse,
    WorkdirUnusable,
    finished_step,
    locked_workdir,
    refusal_to_forget_a_run,
)

__all__ = ["TrainingError", "WorkdirInUse", "train_and_evaluate", "validate_config"]

# A checkpoint can only be resumed by a run that builds the same network on the same data.
ARCHITECTURE_KEYS = ("model", "width", "fc_features", "init_scheme", "dataset", "crop_size")


def validate_config(config) -> TrainingConfig:
    """The config read into its sections (vgg_jax.training.sections), or a TrainingError before
    any data is read or anything compiled: for any field that cannot work, then for what
    depends on this run's devices: the batch's split over them and into micro-batches, and
    the dtype. A config read before (train.py's) is not checked field by field again."""
    try:
        config = read_config(config)
    except ConfigError as error:
        raise TrainingError(str(error)) from None
    try:
        pipeline.local_batch_size(config.optimizer.batch_size)
    except ValueError as error:
        raise TrainingError(f"config.{error}") from None
    try:
        check_for_devices(config, jax.device_count(), jax.default_backend())
    except ConfigError as error:
        raise TrainingError(str(error)) from None
    return config


@dataclasses.dataclass
class Run:
    """What one call of train_and_evaluate holds while it runs (host-side bookkeeping; the
    train state itself is the replicated pytree)."""

    config: TrainingConfig
    workdir: pathlib.Path
    started: float
    is_main: bool = dataclasses.field(default_factory=lambda: jax.process_index() == 0)
    checkpoints: Checkpoints | None = None
    writer: Any = None
    record: dict = dataclasses.field(default_factory=lambda: {"best": None})
    skipped: pipeline.SkippedImages = dataclasses.field(default_factory=pipeline.SkippedImages)
    progress: tqdm | None = None
    # Set by set_up:
    builder: Any = None
    info: sources.DatasetInfo | None = None
    input_shape: tuple[int, int, int] = (0, 0, 0)
    augmentation: Any = None  # preprocessing.TrainAugmentation
    eval_preprocessing: Any = None  # preprocessing.EvalPreprocessing
    steps_per_epoch: int = 0
    total_steps: int = 0
    setup: Any = None  # steps.TrainingSetup
    p_train_step: Any = None  # pmapped (in one process, the executable once compiled)
    train_step_compiled: bool = False
    p_eval_step: Any = None
    replicated: Any = None  # the train state on every local device
    plateau: Any = None  # a host copy of the learning rate's plateau state
    step: int = 0
    train_log: TrainLog | None = None


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict:
    """Trains `config` (a ConfigDict, or the sections train.py read) in `workdir`, resuming
    from its checkpoints; returns a summary."""
    started = time.time()
    run = Run(validate_config(config), pathlib.Path(workdir).absolute(), started)
    with contextlib.ExitStack() as held:
        hold_workdir(held, run.workdir, run.is_main)
        return train_in_held_workdir(run)


def hold_workdir(held: contextlib.ExitStack, workdir: pathlib.Path, is_main: bool) -> None:
    """Creates the work directory and locks it for this run (process 0; vgg_jax.training.
    workdir) in `held`. Another run holding it raises WorkdirInUse, before anything is read,
    compiled or written; in a multi-host run every process raises it, told by process 0."""
    failure = None
    try:
        held.enter_context(locked_workdir(workdir, take_lock=is_main))
    except (WorkdirInUse, WorkdirUnusable) as error:
        failure = error
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        held_by_0 = multihost_utils.broadcast_one_to_all(np.int32(failure is None))
        if not held_by_0 and failure is None:
            failure = WorkdirInUse(f"Process 0 could not take {workdir}: see its message.")
    if isinstance(failure, WorkdirUnusable):
        raise TrainingError(str(failure)) from None
    if failure is not None:
        raise failure


def train_in_held_workdir(run: Run) -> dict:
    with run_logging(run.workdir, run.is_main):
        failed = False
        try:
            with stop_requests() as stop:  # from the start: a first Ctrl-C is never fatal
                set_up(run)
                while run.step < run.total_steps and stop["signal"] is None:
                    train_epoch(run, stop)
                return finish(run, stop["signal"])
        except Exception as error:
            failed = True
            if is_disk_full(error):
                message = disk_full_message(run.workdir, run.checkpoints, error)
                log_fatal(message, error)  # lost, quietly, if train.log cannot take it
                raise TrainingError(message) from None
            log_fatal(str(error), error)
            raise
        except InterruptedTwice as error:  # no waiting for a checkpoint
            failed = True
            log_fatal(INTERRUPTED_TWICE, error)
            raise
        finally:
            close(run, failed)


def set_up(run: Run) -> None:
    """Data, model, optimiser and state; resumed from the newest readable checkpoint, or
    started from another run (config.init_from), or fresh."""
    config, data = run.config, run.config.data
    try:
        run.builder = sources.get_builder(data.dataset, data.data_dir or None)
        run.info = sources.describe(run.builder, data.train_split, data.eval_split)
        run.input_shape = pipeline.model_input_shape(data, run.info)
        run.augmentation = pipeline.augmentation_from_config(data)
        run.eval_preprocessing = pipeline.eval_preprocessing_from_config(data)
        run.steps_per_epoch = pipeline.steps_per_epoch(
            run.info.train_examples, config.optimizer.batch_size
        )
    except ValueError as error:  # the data set, as configured, cannot be read
        raise TrainingError(str(error)) from None
    run.total_steps = config.schedule.num_epochs * run.steps_per_epoch
    if config.schedule.max_steps:
        run.total_steps = min(run.total_steps, config.schedule.max_steps)

    model = config.model.build(run.info.num_classes)
    run.setup, state = init_training(config, model, run.input_shape, run.steps_per_epoch)
    state = jax.device_get(state)
    run.checkpoints = Checkpoints(run.workdir / "checkpoints", keep=config.run.keep_checkpoints)
    restored = run.checkpoints.restore_latest(
        state, lambda saved: check_same_architecture(run, saved)
    )
    if restored is not None:
        state, run.record = restored
        run.skipped = pipeline.SkippedImages(run.record.get("skipped_images", ()))
        logger.info("Resumed from step %d in %s.", int(state.step), run.checkpoints.directory)
    elif run.checkpoints.set_aside_steps():
        raise TrainingError(refusal_to_start_over(run.checkpoints))
    elif finished := finished_step(run.workdir):
        raise TrainingError(refusal_to_forget_a_run(run.workdir, finished))
    elif config.run.init_from:
        state = start_from_run(config.run, state)
    run.step, run.plateau = int(state.step), state.plateau
    if run.is_main:
        write_atomically(run.workdir / "config.json", config.to_json())
        from flax.metrics import tensorboard  # imports TensorBoard: only where it writes

        run.writer = tensorboard.SummaryWriter(str(run.workdir / "tensorboard"))
    logger.info(
        "%s on %s: %d train / %d eval examples, %d classes, %s images; %d steps per "
        "epoch, %d devices.",
        config.model.model, run.info.name, run.info.train_examples, run.info.eval_examples,
        run.info.num_classes, "x".join(map(str, run.input_shape)), run.steps_per_epoch,
        jax.device_count(),
    )  # fmt: skip
    logger.info("%s", dtype_choice(config.model.dtype))
    run.p_train_step, run.p_eval_step = pmapped_steps(run.setup)
    run.replicated = replicate(state)
    peak = peak_bf16_flops(jax.devices()[0].device_kind)
    run.train_log = TrainLog(
        run.writer, config.optimizer.batch_size, run.checkpoints,
        flops_per_image=training_flops_per_image(model, run.input_shape),
        peak_flops=peak * jax.device_count() if peak else None, started=run.started,
    )  # fmt: skip


def refusal_to_start_over(checkpoints: Checkpoints) -> str:
    aside = checkpoints.directory.parent / UNREADABLE_FOLDER
    steps = ", ".join(map(str, checkpoints.set_aside_steps()))
    return (
        f"No readable checkpoint in {checkpoints.directory}: the unreadable ones (steps "
        f"{steps}) are in {aside}. Training does not start over on its own; to start from "
        f"step 0 on purpose, delete {aside}, or use another --workdir."
    )


def check_same_architecture(run: Run, record: dict) -> None:
    saved, config = record.get("config", {}), run.config.fields
    differences = [
        f"{key}: checkpoint {saved.get(key)!r}, this run {config[key]!r}"
        for key in ARCHITECTURE_KEYS
        if saved.get(key) != config[key]
    ]
    if differences:
        raise TrainingError(
            f"{run.checkpoints.directory} holds checkpoints of another configuration ("
            + "; ".join(differences)
            + "). Use another --workdir, or delete that folder to start over."
        )


def start_from_run(config: RunSection, state):
    """`state` with layers of config.init_from's latest checkpoint copied in (warm_start):
    every layer for fine-tuning, or the paper's warm start from net A."""
    try:
        source, source_config, step = read_trained_variables(config.init_from)
        variables = {"params": state.params}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
        variables, layers = warm_start.initial_variables(
            variables, source, source_config.get("model", "?"), config.init_layers
        )
    except (CheckpointNotFound, ValueError) as error:
        raise TrainingError(
            f"config.init_from={config.init_from!r}: {error} (set --config.init_from='' to "
            f"start from random weights)."
        ) from None
    logger.info(
        "Initialised from %s (step %d, %s): copied %s; the other layers start random.",
        config.init_from, step, source_config.get("model"), ", ".join(layers),
    )  # fmt: skip
    return state.replace(params=variables["params"], batch_stats=variables.get("batch_stats", {}))


def train_epoch(run: Run, stop: dict) -> None:
    """Trains from run.step to the end of its epoch (or of the run, or to a stop request),
    saving every checkpoint_every_steps; ends the epoch when it is complete."""
    config, data = run.config, run.config.data
    epoch, skip = divmod(run.step, run.steps_per_epoch)
    epoch_end = min((epoch + 1) * run.steps_per_epoch, run.total_steps)
    batches = pipeline.train_batches(
        run.builder, data.train_split, config.optimizer.batch_size, epoch, config.run.seed,
        skip_batches=skip, shuffle_buffer_size=data.shuffle_buffer_size,
        augmentation=run.augmentation, skipped=run.skipped,
    )  # fmt: skip
    run.progress = tqdm(
        total=run.steps_per_epoch, initial=skip, unit="step", disable=not run.is_main,
        desc=f"epoch {epoch + 1}/{config.schedule.num_epochs}", dynamic_ncols=True,
    )  # fmt: skip
    device_batches = flax.jax_utils.prefetch_to_device(
        itertools.islice(batches, epoch_end - run.step), 2
    )
    run.train_log.restart_clock()
    for batch in device_batches:
        if not run.train_step_compiled:
            compile_train_step(run, batch)
        run.replicated, metrics = run.p_train_step(run.replicated, batch)
        run.step += 1
        run.train_log.add(metrics)
        run.progress.update()
        if run.step % config.run.log_every_steps == 0 or run.step == epoch_end:
            log_train_metrics(run)
        if stop["signal"] is not None:
            break
        if run.step % config.run.checkpoint_every_steps == 0 and run.step != epoch_end:
            save(run)
    run.progress.close()
    if run.step < epoch_end and stop["signal"] is None:
        report_skipped(run.skipped, f"epoch {epoch + 1} (training)")
        raise TrainingError(
            f"Epoch {epoch + 1} ended after step {run.step} of {epoch_end}: most of "
            f"{data.train_split!r} could not be read (see the skipped files above)."
        )
    if run.step % run.steps_per_epoch == 0 and stop["signal"] is None:
        end_epoch(run, epoch)
    elif run.step == run.total_steps or stop["signal"] is not None:
        save(run)


def compile_train_step(run: Run, batch: dict) -> None:
    """Compiles the train step for batches like `batch`, then logs and checks its memory
    before it first runs. In one process the executable serves every later step: called
    through pmap, the step compiles again at the second step, for its own outputs, whose
    sharding differs from replicate's. Across processes pmap must stay the caller: it makes
    each process's arrays global, which the executable does not."""
    compiled = run.p_train_step.lower(run.replicated, batch).compile()
    try:
        check_step_memory(run.setup, run.replicated, batch, compiled)
    except DoesNotFit as error:
        raise TrainingError(str(error)) from None
    if jax.process_count() == 1:
        run.p_train_step = compiled
    run.train_step_compiled = True


def end_epoch(run: Run, epoch: int) -> None:
    """Evaluate, step the plateau rule, keep the best, report, save."""
    report_skipped(run.skipped, f"epoch {epoch + 1} (training)")
    metrics = evaluate_split(run, run.config.data.eval_split)
    report_skipped(run.skipped, f"epoch {epoch + 1} (evaluation)")
    # The paper's schedule: one plateau step per evaluation, fed the top-1 error.
    plateau = run.setup.learning_rate.after_evaluation(run.plateau, 1.0 - metrics["top1_accuracy"])
    if float(plateau.scale) < float(run.plateau.scale):
        logger.info("Validation accuracy stopped improving: learning rate divided by 10.")
    run.plateau = plateau
    run.replicated = run.replicated.replace(plateau=replicate(plateau))
    best = run.record["best"]
    if best is None or best_rank(metrics, run.step) > best_rank(best, best["step"]):
        run.record["best"] = {**metrics, "step": run.step}
    report_evaluation(
        run.writer, run.step, epoch, metrics, run.setup.learning_rate.at(run.step, run.plateau)
    )
    save(run, metrics)


def evaluate_split(run: Run, split: str) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy over every readable example of `split`."""
    totals = None
    batches = pipeline.eval_batches(
        run.builder, split, run.config.optimizer.batch_size, run.eval_preprocessing,
        skipped=run.skipped, image_shape=run.input_shape,
    )  # fmt: skip
    for batch in batches:
        sums = run.p_eval_step(run.replicated, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = unreplicate(totals)
    count = totals["count"]
    return {
        "loss": float(totals["loss"] / count),
        "top1_accuracy": float(totals["top1_correct"] / count),
        "top5_accuracy": float(totals["top5_correct"] / count),
    }


def log_train_metrics(run: Run) -> None:
    learning_rate = run.setup.learning_rate.at(run.step - 1, run.plateau)
    averages = run.train_log.flush(run.step, learning_rate)
    if averages is not None and run.progress is not None:
        run.progress.set_postfix(
            loss=f"{averages['loss']:.4f}", img_s=f"{averages['images_per_second']:.0f}"
        )


def save(run: Run, metrics: dict | None = None) -> None:
    """A checkpoint of the current state; refuses a NaN loss or parameter before writing."""
    log_train_metrics(run)
    host_state = unreplicate(run.replicated)
    if not all(np.all(np.isfinite(p)) for p in jax.tree.leaves(host_state.params)):
        raise TrainingError(nan_message(run.step, run.checkpoints))
    # Named in the log before the checkpoint counts them as reported (a resume will not).
    report_skipped(run.skipped, f"training up to step {run.step}")
    run.record.update(
        config=run.config.as_dict(), step=run.step, metrics=metrics,
        skipped_images=run.skipped.reported(),
    )  # fmt: skip
    run.checkpoints.save(run.step, host_state, run.record, metrics)
    run.train_log.restart_clock()


def finish(run: Run, signal_name: str | None) -> dict:
    """summary.json, unless this process trained nothing since it was written: a rerun of a
    finished run keeps the timings of the run that did the work."""
    run.checkpoints.wait()
    report_skipped(run.skipped, "the last steps")
    written = run.workdir / "summary.json"
    if run.train_log.first_step_seconds is None and written.exists():
        try:
            summary = json.loads(written.read_text())
        except (OSError, ValueError):  # cut short (a full disk): written anew below
            summary = {}
        if summary.get("step") == run.step:
            logger.info("Nothing to train: the run finished at step %d before.", run.step)
            return summary
    return write_summary(
        run.record, run.step, run.total_steps, signal_name, run.started, run.workdir,
        len(run.skipped.reported()), first_step_seconds=run.train_log.first_step_seconds,
    )  # fmt: skip


def close(run: Run, failed: bool) -> None:
    """Closes the progress bar, the checkpoint manager and TensorBoard; after a failure, an
    error while closing (a full disk fails these too) is logged, not raised over the first one."""
    if run.progress is not None:
        run.progress.close()
    for closable in (run.checkpoints, run.writer):
        try:
            if closable is not None:
                closable.close()
        except Exception as error:
            if not failed:
                raise
            logger.warning(
                "While stopping: %s: %s", type(error).__name__, error, extra={"file_only": True}
            )
