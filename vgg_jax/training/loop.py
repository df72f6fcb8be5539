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

from vgg_jax.data import pipeline
from vgg_jax.parallel import replicate, unreplicate
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
from vgg_jax.training.start import Run, set_up, validate_config
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
    run = Run(validate_config(config), pathlib.Path(workdir).absolute(), started)
    with contextlib.ExitStack() as held:
        try:
            hold_workdir(held, run.workdir, run.is_main)
        except WorkdirUnusable as error:
            raise TrainingError(str(error)) from None
        return train_in_held_workdir(run)


def train_in_held_workdir(run: Run) -> dict:
    with run_logging(run.workdir, run.is_main):
        failed = False
        try:
            with stop_requests() as stop:  # from the start: a first Ctrl-C is never fatal
                set_up(run)
                while run.step < run.plan.total_steps and stop["signal"] is None:
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


def train_epoch(run: Run, stop: dict) -> None:
    """Trains from run.step to the end of its epoch (or of the run, or to a stop request),
    saving every checkpoint_every_steps; ends the epoch when it is complete."""
    config, data = run.config, run.config.data
    epoch, skip = divmod(run.step, run.plan.steps_per_epoch)
    epoch_end = min((epoch + 1) * run.plan.steps_per_epoch, run.plan.total_steps)
    batches = pipeline.train_batches(
        run.plan.builder, data.train_split, config.optimizer.batch_size, epoch, config.run.seed,
        skip_batches=skip, shuffle_buffer_size=data.shuffle_buffer_size,
        augmentation=run.plan.augmentation, skipped=run.skipped,
    )  # fmt: skip
    run.progress = tqdm(
        total=run.plan.steps_per_epoch, initial=skip, unit="step", disable=not run.is_main,
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
        if itstime(run.step, config.run.log_every_steps, epoch_end):
            log_train_metrics(run)
        if stop["signal"] is not None:
            break
        if itstime(run.step, config.run.checkpoint_every_steps, epoch_end, at_end=False):
            save(run)
    run.progress.close()
    if run.step < epoch_end and stop["signal"] is None:
        report_skipped(run.skipped, f"epoch {epoch + 1} (training)")
        raise TrainingError(
            f"Epoch {epoch + 1} ended after step {run.step} of {epoch_end}: most of "
            f"{data.train_split!r} could not be read (see the skipped files above)."
        )
    if run.step % run.plan.steps_per_epoch == 0 and stop["signal"] is None:
        end_epoch(run, epoch)
    elif run.step == run.plan.total_steps or stop["signal"] is not None:
        save(run)


def itstime(step: int, every: int, end: int, at_end: bool = True) -> bool:
    """The one rule for periodic actions (as big_vision's itstime): after every `every`-th
    step, and after `end` (the epoch's or the run's last step) unless `at_end` is False,
    where the end's own action covers it."""
    if step == end:
        return at_end
    return step % every == 0


def host_plateau(run: Run) -> Any:
    """The plateau decay's state, read from the train state (its one home)."""
    return unreplicate(run.replicated.plateau)


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
    before = host_plateau(run)
    plateau = run.setup.learning_rate.after_evaluation(before, 1.0 - metrics["top1_accuracy"])
    if float(plateau.scale) < float(before.scale):
        logger.info("Validation accuracy stopped improving: learning rate divided by 10.")
    run.replicated = run.replicated.replace(plateau=replicate(plateau))
    best = run.record["best"]
    if best is None or best_rank(metrics, run.step) > best_rank(best, best["step"]):
        run.record["best"] = {**metrics, "step": run.step}
    report_evaluation(
        run.writer, run.step, epoch, metrics, run.setup.learning_rate.at(run.step, plateau)
    )
    save(run, metrics)


def evaluate_split(run: Run, split: str) -> dict[str, float]:
    """Loss and top-1/top-5 accuracy over every readable example of `split`."""
    totals = None
    batches = pipeline.eval_batches(
        run.plan.builder, split, run.config.optimizer.batch_size, run.plan.eval_preprocessing,
        skipped=run.skipped, image_shape=run.plan.input_shape,
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
    learning_rate = run.setup.learning_rate.at(run.step - 1, host_plateau(run))
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
        except (OSError, ValueError):  # cut short by a full disk (versions that wrote it in
            # place, before write_atomically): written anew below
            summary = {}
        if summary.get("step") == run.step:
            logger.info("Nothing to train: the run finished at step %d before.", run.step)
            return summary
    return write_summary(
        run.record, run.step, run.plan.total_steps, signal_name, run.started, run.workdir,
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
