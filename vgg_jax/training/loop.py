"""The training loop behind train.py: train_and_evaluate(config, workdir).

It resumes from the newest readable checkpoint in `workdir`, trains with the pmapped steps of
vgg_jax.training.steps, evaluates at the end of every epoch, and saves every
`checkpoint_every_steps` steps and after every evaluation. Ctrl-C or SIGTERM finish the
current step, save, and return; a loss or parameter that turns NaN stops the run before it can
reach a checkpoint.

The story, one function each: set up (data, model, state, resume: vgg_jax.training.start),
train an epoch, end the epoch (evaluate, plateau, best, report, save), finish (summary).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from vgg_jax.data import pipeline
from vgg_jax.parallel import prefetch_to_devices, replicate, unreplicate
from vgg_jax.training.checkpoints import (
    best_rank,
)
from vgg_jax.training.memory import DoesNotFit, check_step_memory
from vgg_jax.training.reports import (
    TrainingError,
    disk_full_message,
    is_disk_full,
    log_fatal,
    logger,
    nan_message,
    report_evaluation,
    report_skipped,
    run_logging,
    write_summary,
)
from vgg_jax.training.signals import INTERRUPTED_TWICE, InterruptedTwice, stop_requests
from vgg_jax.training.sections import TrainingConfig
from vgg_jax.training.start import Position, Run, set_up, validate_config
from vgg_jax.training.workdir import (
    WorkdirInUse,
    WorkdirUnusable,
    hold_workdir,
)

__all__ = ["TrainingError", "WorkdirInUse", "train_and_evaluate", "validate_config"]


def train_and_evaluate(config, workdir: str | pathlib.Path) -> dict:
    """Trains `config` (a ConfigDict, or the sections train.py read) in `workdir`, resuming
    from its checkpoints; returns a summary."""
    started = time.time()
    config = validate_config(config)
    workdir = pathlib.Path(workdir).absolute()
    with contextlib.ExitStack() as held:
        try:
            hold_workdir(held, workdir, jax.process_index() == 0)
        except WorkdirUnusable as error:
            raise TrainingError(str(error)) from None
        return train_in_held_workdir(config, workdir, started)


def train_in_held_workdir(config: TrainingConfig, workdir: pathlib.Path, started: float) -> dict:
    opened = {}  # what set_up opened, by name, for close() and the disk-full message
    with run_logging(workdir, jax.process_index() == 0):
        failed = False
        try:
            with stop_requests() as stop:  # from the start: a first Ctrl-C is never fatal
                run, state, at = set_up(config, workdir, started, opened)
                while at.step < run.plan.total_steps and stop["signal"] is None:
                    state, at = train_epoch(run, state, at, stop)
                return finish(run, at, stop["signal"])
        except Exception as error:
            failed = True
            if is_disk_full(error):
                message = disk_full_message(workdir, opened.get("checkpoints"), error)
                log_fatal(message, error)  # lost, quietly, if train.log cannot take it
                raise TrainingError(message) from None
            log_fatal(str(error), error)
            raise
        except InterruptedTwice as error:  # no waiting for a checkpoint
            failed = True
            log_fatal(INTERRUPTED_TWICE, error)
            raise
        finally:
            close(opened, failed)


def train_epoch(run: Run, state, at: Position, stop: dict) -> tuple[Any, Position]:
    """Trains from at.step to the end of its epoch (or of the run, or to a stop request),
    saving every checkpoint_every_steps; ends the epoch when it is complete."""
    config, data = run.config, run.config.data
    epoch, skip = divmod(at.step, run.plan.steps_per_epoch)
    epoch_end = min((epoch + 1) * run.plan.steps_per_epoch, run.plan.total_steps)
    batches = pipeline.train_batches(
        run.plan.builder, data.train_split, config.optimizer.batch_size, epoch, config.run.seed,
        skip_batches=skip, shuffle_buffer_size=data.shuffle_buffer_size,
        augmentation=run.plan.augmentation, skipped=run.skipped,
    )  # fmt: skip
    device_batches = prefetch_to_devices(itertools.islice(batches, epoch_end - at.step))
    bar = tqdm(
        total=run.plan.steps_per_epoch, initial=skip, unit="step", disable=not run.is_main,
        desc=f"epoch {epoch + 1}/{config.schedule.num_epochs}", dynamic_ncols=True,
    )  # fmt: skip
    run.train_log.restart_clock()
    with bar:
        for batch in device_batches:
            if not at.compiled:
                at = compile_train_step(run, state, at, batch)
            state, metrics = at.train_step(state, batch)
            at = dataclasses.replace(at, step=at.step + 1)
            run.train_log.add(metrics)
            bar.update()
            if itstime(at.step, config.run.log_every_steps, epoch_end):
                log_train_metrics(run, state, at, bar)
            if stop["signal"] is not None:
                break
            if itstime(at.step, config.run.checkpoint_every_steps, epoch_end, at_end=False):
                save(run, state, at)
    if at.step < epoch_end and stop["signal"] is None:
        report_skipped(run.skipped, f"epoch {epoch + 1} (training)")
        raise TrainingError(
            f"Epoch {epoch + 1} ended after step {at.step} of {epoch_end}: most of "
            f"{data.train_split!r} could not be read (see the skipped files above)."
        )
    if at.step % run.plan.steps_per_epoch == 0 and stop["signal"] is None:
        return end_epoch(run, state, at, epoch)
    if at.step == run.plan.total_steps or stop["signal"] is not None:
        save(run, state, at)
    return state, at


def itstime(step: int, every: int, end: int, at_end: bool = True) -> bool:
    """The one rule for periodic actions (as big_vision's itstime): after every `every`-th
    step, and after `end` (the epoch's or the run's last step) unless `at_end` is False,
    where the end's own action covers it."""
    if step == end:
        return at_end
    return step % every == 0


def host_plateau(state) -> Any:
    """The plateau decay's state, read from the train state (its one home)."""
    return unreplicate(state.plateau)


def compile_train_step(run: Run, state, at: Position, batch: dict) -> Position:
    """Compiles the train step for batches like `batch`, then logs and checks its memory
    before it first runs. In one process the executable serves every later step: called
    through pmap, the step compiles again at the second step, for its own outputs, whose
    sharding differs from replicate's. Across processes pmap must stay the caller: it makes
    each process's arrays global, which the executable does not."""
    compiled = at.train_step.lower(state, batch).compile()
    try:
        check_step_memory(run.setup, state, batch, compiled)
    except DoesNotFit as error:
        raise TrainingError(str(error)) from None
    train_step = compiled if jax.process_count() == 1 else at.train_step
    return dataclasses.replace(at, train_step=train_step, compiled=True)


def end_epoch(run: Run, state, at: Position, epoch: int) -> tuple[Any, Position]:
    """Evaluate, step the plateau rule, keep the best, report, save."""
    report_skipped(run.skipped, f"epoch {epoch + 1} (training)")
    metrics = evaluate_split(run, state, run.config.data.eval_split)
    report_skipped(run.skipped, f"epoch {epoch + 1} (evaluation)")
    # The paper's schedule: one plateau step per evaluation, fed the top-1 error.
    before = host_plateau(state)
    plateau = run.setup.learning_rate.after_evaluation(before, 1.0 - metrics["top1_accuracy"])
    if float(plateau.scale) < float(before.scale):
        logger.info("Validation accuracy stopped improving: learning rate divided by 10.")
    state = state.replace(plateau=replicate(plateau))
    best = at.best
    if best is None or best_rank(metrics, at.step) > best_rank(best, best["step"]):
        at = dataclasses.replace(at, best={**metrics, "step": at.step})
    report_evaluation(
        run.writer, at.step, epoch, metrics, run.setup.learning_rate.at(at.step, plateau)
    )
    save(run, state, at, metrics)
    return state, at


def evaluate_split(run: Run, state, split: str) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy over every readable example of `split`."""
    totals = None
    batches = pipeline.eval_batches(
        run.plan.builder, split, run.config.optimizer.batch_size, run.plan.eval_preprocessing,
        skipped=run.skipped, image_shape=run.plan.input_shape,
    )  # fmt: skip
    for batch in batches:
        sums = run.eval_step(state, batch)
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = unreplicate(totals)
    count = totals["count"]
    return {
        "loss": float(totals["loss"] / count),
        "top1_accuracy": float(totals["top1_correct"] / count),
        "top5_accuracy": float(totals["top5_correct"] / count),
    }


def log_train_metrics(run: Run, state, at: Position, bar: tqdm | None = None) -> None:
    learning_rate = run.setup.learning_rate.at(at.step - 1, host_plateau(state))
    averages = run.train_log.flush(at.step, learning_rate)
    if averages is not None and bar is not None:
        bar.set_postfix(
            loss=f"{averages['loss']:.4f}", img_s=f"{averages['images_per_second']:.0f}"
        )


def save(run: Run, state, at: Position, metrics: dict | None = None) -> None:
    """A checkpoint of the current state; refuses a NaN loss or parameter before writing."""
    log_train_metrics(run, state, at)
    host_state = unreplicate(state)
    if not all(np.all(np.isfinite(p)) for p in jax.tree.leaves(host_state.params)):
        raise TrainingError(nan_message(at.step, run.checkpoints))
    # Named in the log before the checkpoint counts them as reported (a resume will not).
    report_skipped(run.skipped, f"training up to step {at.step}")
    record = {
        "best": at.best, "config": run.config.as_dict(), "step": at.step, "metrics": metrics,
        "skipped_images": run.skipped.reported(),
    }  # fmt: skip
    run.checkpoints.save(at.step, host_state, record, metrics)
    run.train_log.restart_clock()


def finish(run: Run, at: Position, signal_name: str | None) -> dict:
    """summary.json, unless this process trained nothing since it was written: a rerun of a
    finished run keeps the timings of the run that did the work."""
    run.checkpoints.wait()
    report_skipped(run.skipped, "the last steps")
    written = run.workdir / "summary.json"
    if run.train_log.first_step_seconds is None and written.exists():
        try:
            summary = json.loads(written.read_text())
        except (OSError, ValueError):  # cut short by a full disk (versions that wrote it in
            # place, before write_atomically): written anew below
            summary = {}
        if summary.get("step") == at.step:
            logger.info("Nothing to train: the run finished at step %d before.", at.step)
            return summary
    return write_summary(
        at.best, at.step, run.plan.total_steps, signal_name, run.started, run.workdir,
        len(run.skipped.reported()), first_step_seconds=run.train_log.first_step_seconds,
    )  # fmt: skip


def close(opened: dict, failed: bool) -> None:
    """Closes the checkpoint manager and TensorBoard; after a failure, an error while closing
    (a full disk fails these too) is logged, not raised over the first one."""
    for closable in opened.values():
        try:
            closable.close()
        except Exception as error:
            if not failed:
                raise
            logger.warning(
                "While stopping: %s: %s", type(error).__name__, error, extra={"file_only": True}
            )
