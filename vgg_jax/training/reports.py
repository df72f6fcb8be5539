"""What a training run tells its user: messages on the console and in workdir/train.log,
train metrics (loss, accuracy, images/s, TFLOP/s, model FLOP utilisation) and evaluations in
TensorBoard, skipped files, and the closing summary.json."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import pathlib
import sys
import time

import jax
import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from vgg_jax.files import write_atomically
from vgg_jax.parallel import unreplicate
from vgg_jax.training.checkpoints import Checkpoints

logger = logging.getLogger("vgg_jax")


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


@contextlib.contextmanager
def run_logging(workdir: pathlib.Path, is_main: bool):
    """While a run lasts: our messages to the console and workdir/train.log, from the main
    process only; orbax's error reports to train.log only (below)."""
    logger.setLevel(logging.INFO)
    logger.propagate = False  # absl's root handler would print them twice
    handlers: list[logging.Handler] = []
    if is_main:
        to_file = _TrainLogFile(workdir / "train.log")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        to_console = logging.StreamHandler()
        to_console.setFormatter(logging.Formatter("%(message)s"))
        to_console.addFilter(lambda record: not getattr(record, "file_only", False))
        handlers = [to_file, to_console]
    for handler in handlers:
        logger.addHandler(handler)
    orbax_errors = _OrbaxErrorsToFile(handlers[0] if handlers else None)
    absl_logger = logging.getLogger("absl")
    absl_logger.addFilter(orbax_errors)
    # Console lines go through tqdm.write, which clears the progress bar first and redraws it
    # after, instead of landing inside it.
    redirect = logging_redirect_tqdm([logger]) if is_main else contextlib.nullcontext()
    try:
        with redirect:
            yield
    finally:
        absl_logger.removeFilter(orbax_errors)
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()


class _TrainLogFile(logging.FileHandler):
    """train.log. A line that cannot be written because the disk is full is lost quietly: the
    run stops saying so on the console, and logging's own traceback would bury that."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not is_disk_full(sys.exc_info()[1]):
            super().handleError(record)

    def close(self) -> None:
        try:
            super().close()
        except OSError as error:  # the last lines did not fit
            if not is_disk_full(error):
                raise


class _OrbaxErrorsToFile(logging.Filter):
    """A failed background save is reported by each of orbax's threads with its traceback (500
    lines for one full disk), then raised in the run, which stops with one message saying
    what happened. On the main process those reports (orbax errors with a traceback) go to
    train.log only, for debugging; other processes, which have no train.log, print them."""

    def __init__(self, to_file: logging.Handler | None):
        super().__init__()
        self.to_file = to_file

    def filter(self, record: logging.LogRecord) -> bool:
        if self.to_file is None or not record.exc_info or "orbax" not in record.pathname:
            return True
        self.to_file.handle(record)
        return False


def log_fatal(message: str, error: BaseException) -> None:
    """The message a run stops with, and the traceback behind it, into train.log only: the
    console gets the message once, from train.py, without the traceback."""
    logger.error("Stopped: %s", message, exc_info=error, extra={"file_only": True})


class TrainLog:
    """Train metrics between log points: NaN check, averages, images/s, TensorBoard.

    Metrics stay on the devices until flushed, so logging does not stall every step, except
    the first step's: it includes compilation, so it is reported on its own ("first training
    step ... s after the start") and left out of images/s.
    """

    def __init__(
        self,
        writer,
        batch_size: int,
        checkpoints: Checkpoints,
        flops_per_image: int = 0,
        peak_flops: float | None = None,
        started: float | None = None,
    ):
        """started: time.time() at the start of the run, for the first step's report."""
        self.writer, self.batch_size, self.checkpoints = writer, batch_size, checkpoints
        self.flops_per_image, self.peak_flops = flops_per_image, peak_flops
        self.started = time.time() if started is None else started
        self.first_step_seconds: float | None = None
        self.pending: list[dict] = []
        self.restart_clock()

    def restart_clock(self) -> None:
        """Images/s counts training steps only: restarted after evaluating or saving."""
        self.clock_started = time.perf_counter()
        self.untimed_steps, self.untimed_seconds = 0, 0.0

    def add(self, metrics: dict) -> None:
        self.pending.append(metrics)
        if self.first_step_seconds is None:
            jax.block_until_ready(metrics)
            self.first_step_seconds = time.time() - self.started
            self.untimed_steps = len(self.pending)
            self.untimed_seconds = time.perf_counter() - self.clock_started
            logger.info(
                "first training step done %.1f s after the start (compilation included)",
                self.first_step_seconds,
            )

    def flush(self, step: int, learning_rate: float) -> dict | None:
        """Averages of the steps since the last flush, ending at `step`; None if none."""
        if not self.pending:
            return None
        fetched = unreplicate(self.pending)
        first_step = step - len(fetched) + 1
        for offset, metrics in enumerate(fetched):
            if not np.isfinite(metrics["loss"]):
                raise TrainingError(nan_message(first_step + offset, self.checkpoints))
        timed_steps = len(fetched) - self.untimed_steps
        elapsed = time.perf_counter() - self.clock_started - self.untimed_seconds
        if timed_steps == 0:  # only the compiling step since the last flush
            timed_steps, elapsed = len(fetched), elapsed + self.untimed_seconds
        averages = {key: float(np.mean([m[key] for m in fetched])) for key in fetched[0]}
        averages["learning_rate"] = learning_rate
        averages["images_per_second"] = timed_steps * self.batch_size / elapsed
        averages["tflops"] = averages["images_per_second"] * self.flops_per_image / 1e12
        if self.peak_flops:
            averages["model_flops_utilization"] = averages["tflops"] * 1e12 / self.peak_flops
        scaling = ""
        if "loss_scale" in fetched[0]:  # float16: steps whose gradients overflowed were skipped
            skipped = int(sum(m["skipped"] for m in fetched))
            scaling = f", loss scale {fetched[-1]['loss_scale']:g} ({skipped} skipped)"
        logger.info(
            "step %d: loss %.4f, top-1 %.2f%%, lr %.3g, %.0f images/s, %.3g TFLOP/s%s%s",
            step, averages["loss"], 100 * averages["top1_accuracy"], learning_rate,
            averages["images_per_second"], averages["tflops"],
            f", MFU {averages['model_flops_utilization']:.1%}" if self.peak_flops else "",
            scaling,
        )  # fmt: skip
        if self.writer is not None:
            for key, value in averages.items():
                self.writer.scalar(f"train/{key}", value, step)
        self.pending = []
        self.restart_clock()
        return averages


def report_evaluation(writer, step: int, epoch: int, metrics: dict, learning_rate: float):
    logger.info(
        "epoch %d, step %d: eval loss %.4f, top-1 %.2f%%, top-5 %.2f%%",
        epoch + 1, step, metrics["loss"],
        100 * metrics["top1_accuracy"], 100 * metrics["top5_accuracy"],
    )  # fmt: skip
    if writer is not None:
        for key, value in metrics.items():
            writer.scalar(f"eval/{key}", value, step)
        writer.scalar("train/learning_rate", learning_rate, step)
        writer.flush()


def nan_message(step: int, checkpoints: Checkpoints) -> str:
    steps = checkpoints.steps()
    kept = (
        f"the last checkpoint, saved at step {steps[-1]} in {checkpoints.directory}, holds "
        f"finite values (saves refuse NaN) and is checked against its digest when read"
        if steps
        else "no checkpoint had been written yet"
    )
    return (
        f"The loss became NaN or infinite at step {step}: training stopped, and {kept}. "
        f"Lower config.learning_rate or set config.grad_clip_norm, then rerun."
    )


def is_disk_full(error: BaseException | None) -> bool:
    """True when `error`, or one it came from, is a write that found the disk full (orbax,
    TensorBoard and TensorFlow each wrap the OSError their own way)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(error):
            return True
        error = error.__cause__ or error.__context__
    return False


def disk_full_message(workdir: pathlib.Path, checkpoints: Checkpoints | None, error) -> str:
    steps = []
    if checkpoints is not None:
        checkpoints.manager.reload()  # what is committed on disk now, not what was started
        steps = checkpoints.steps()
    kept = (
        f"the last complete checkpoint, at step {steps[-1]}, is intact"
        if steps
        else "no checkpoint was complete yet"
    )
    detail = " ".join(str(error).split())[:300]
    return (
        f"No space left on device while writing to {workdir} ({type(error).__name__}: "
        f"{detail}). Training stopped; {kept}: free some space and rerun the same command to "
        f"resume."
    )


def report_skipped(skipped, when: str) -> int:
    """Logs the images first skipped since the last report, by file name; returns how many."""
    names = skipped.take()
    if names:
        logger.warning(
            "Skipped %d images in %s that are not whole JPEG/PNG files or do not decode "
            "(each file is named once per run): %s",
            len(names), when, ", ".join(names),
        )  # fmt: skip
    return len(names)


def write_summary(
    best: dict | None,
    step,
    total_steps,
    signal_name,
    started,
    workdir,
    skipped_images,
    first_step_seconds: float | None = None,
) -> dict:
    """summary.json; first_step_seconds: from the start to the end of the first training step
    of this process's run (compilation included), None if it trained no step. `best`: the
    best evaluation's metrics and step, None before the first."""
    best = best or {}
    summary = {
        "step": step,
        "finished": step >= total_steps,
        "interrupted_by": signal_name,
        "best_top1_accuracy": best.get("top1_accuracy"),
        "best_top5_accuracy": best.get("top5_accuracy"),
        "best_step": best.get("step"),
        "wall_time_seconds": time.time() - started,
        "seconds_to_first_step": first_step_seconds,
        "skipped_images": skipped_images,
        "workdir": str(workdir),
    }
    if jax.process_index() == 0:
        write_atomically(workdir / "summary.json", json.dumps(summary, indent=2))
    return summary
