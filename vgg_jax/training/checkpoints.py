"""Checkpoints with orbax-checkpoint: the last K, plus the best by validation accuracy.

Orbax writes each checkpoint into a temporary folder and renames it into place when
complete, so a crash during a save never leaves the latest checkpoint half-written. A
checkpoint holds the train state (host NumPy arrays, written by the primary process of a
multi-host run, every process taking part) and a JSON record: the config, the epoch and the
validation metrics.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
import shutil
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import AnyPreservationPolicy, BestN, LatestN

from vgg_jax.files import write_atomically
from vgg_jax.training.integrity import state_digest, verify
from vgg_jax.training.noise import (
    AbandonedReadsQuieted,
    a_missing_metric_warning,
    absl_level,
    absl_records_dropped,
)
from vgg_jax.training.sections import upgraded_saved_config
from vgg_jax.training.workdir import checkpoint_choice

BEST_METRIC = "top1_accuracy"
UNREADABLE_FOLDER = "unreadable_checkpoints"  # beside checkpoints/: what could not be restored
_logger = logging.getLogger("vgg_jax")


def _best_metric(metrics: dict) -> float:
    return metrics[BEST_METRIC]


def best_rank(metrics: dict, step: int) -> tuple[float, int]:
    """What "best" means everywhere (the run's summary, --checkpoint=best and which
    checkpoint is kept): the highest validation top-1, and of equals the latest step. Orbax's
    BestN keeps that one too: it sorts by the metric alone, stably, in step order."""
    return (_best_metric(metrics), step)


def upgraded_record(record: dict) -> dict:
    """A checkpoint's record, its config in today's terms (sections.upgraded_saved_config)."""
    return {**record, "config": upgraded_saved_config(record.get("config") or {})}


def _json_or_none(path: pathlib.Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"


class CheckpointNotFound(ValueError):
    """No checkpoint to read where one was asked for, with what was there instead."""


class Checkpoints:
    """A training run's checkpoint folder; `read_only` for readers (evaluation, prediction,
    warm starts), which must not clean up after a run that may still be saving."""

    def __init__(self, directory: str | pathlib.Path, keep: int = 3, read_only: bool = False):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be at least 1, got {keep}.")
        self.directory = pathlib.Path(directory).absolute()
        self.unreadable: dict[int, Exception] = {}  # step -> why, as found by first_readable
        self._quieted = contextlib.ExitStack()  # abandoned reads' noise (see close)
        self._quieting = False
        if not read_only:
            self._metrics_from_records()
        options = ocp.CheckpointManagerOptions(
            read_only=read_only,
            create=not read_only,
            save_interval_steps=0 if read_only else 1,
            preservation_policy=AnyPreservationPolicy(
                [
                    LatestN(n=keep),
                    BestN(
                        get_metric_fn=_best_metric,
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    ),
                ]
            ),
            # best_fn only makes orbax write each checkpoint's metrics to disk (which policy
            # keeps what is the preservation_policy's). Without it they live in memory only,
            # and a resumed run's manager, seeing no metrics, let its first save delete the
            # best checkpoint.
            best_fn=_best_metric,
            cleanup_tmp_directories=not read_only,  # what a crash mid-save left behind
            lightweight_initialize=read_only,  # "best" is ours (best_step), from the records
        )
        # Orbax warns (through absl) that a read-only folder is read-only: that is the point.
        with absl_level(logging.ERROR) if read_only else contextlib.nullcontext():
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, record: dict, metrics: dict | None = None) -> None:
        """Saves `state` (host arrays) at `step`, its digest in the record; `metrics` rank it
        for 'best'."""
        record = {**record, "state_digest": state_digest(state)}
        with absl_records_dropped(a_missing_metric_warning):
            self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)
                ),
                metrics=metrics,
                force=True,
            )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def best_step(self) -> int | None:
        """The kept checkpoint with the best validation accuracy (None if none was evaluated).
        A checkpoint whose record cannot be read is left out, with a warning naming it: the
        best one may well be intact."""
        ranks = []
        for step in self.steps():
            try:
                metrics = self.record(step).get("metrics")
            except Exception as error:  # orbax raises many types for a damaged record
                self.unreadable[step] = error
                _logger.warning(
                    "Checkpoint at step %d in %s has an unreadable record (%s); it is left out "
                    "of the choice of the best.", step, self.directory, _first_line(error),
                )  # fmt: skip
                continue
            if metrics:
                ranks.append(best_rank(metrics, step))
        return max(ranks)[1] if ranks else None

    def restore(self, step: int, target: Any) -> tuple[Any, dict]:
        """The state saved at `step`, shaped like `target`, and its JSON record."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore()
            ),
        )
        return restored.state, upgraded_record(restored.record)

    def restore_latest(
        self, target: Any, check_record: Callable[[dict], None] = lambda record: None
    ) -> tuple[Any, dict] | None:
        """The newest readable checkpoint, falling back past unreadable ones; None if none.

        An unreadable checkpoint is moved to ../unreadable_checkpoints/ (kept for a post-mortem,
        and out of the way of the run that saves that step again). `check_record` sees each
        checkpoint's record before its arrays are read, and may raise to refuse it (a
        checkpoint of another configuration is refused, not skipped).
        """
        found = self.first_readable(
            reversed(self.steps()),
            lambda step: self.saved_fields(step, target),
            check_record,
            set_aside=True,
        )
        if found is None:
            return None
        _, fields, record = found
        return target.replace(**fields), record

    def saved_fields(self, step: int, target: Any) -> dict:
        """The fields of the dataclass `target` (a train state) that checkpoint `step` holds,
        shaped like target's. A checkpoint saved before a field was added lacks it, and the
        run keeps target's fresh value; checked against the digest, these are what was saved."""
        # The manager knows no handler for "state" until it has saved one: read it directly,
        # through the handler (a Checkpointer would look for step metadata in the item's
        # folder, and warn on every resume that it is missing).
        handler = ocp.StandardCheckpointHandler()
        try:
            saved = set(handler.metadata(self.directory / str(step) / "state").keys())
        finally:
            handler.close()
        fields = {
            field.name: getattr(target, field.name)
            for field in dataclasses.fields(target)
            if field.name in saved
        }
        return self.restore_arrays(step, fields)

    def first_readable(
        self,
        steps,
        read: Callable[[int], Any],
        check_record: Callable[[dict], None] = lambda record: None,
        set_aside: bool = False,
    ) -> tuple[int, Any, dict] | None:
        """(step, read(step), record) of the first of `steps` whose record and arrays can be
        read; None if none can. Each unreadable one is reported, and with `set_aside` moved to
        ../unreadable_checkpoints/. Errors of `check_record` are not caught."""
        steps = list(steps)
        if not self._quieting:
            self._quieted.enter_context(AbandonedReadsQuieted())
            self._quieting = True
        for index, step in enumerate(steps):
            last = index == len(steps) - 1
            try:
                record = self.record(step)
            except Exception as error:  # orbax raises many types for a damaged checkpoint
                self._unreadable(step, error, set_aside, last)
                continue
            check_record(record)
            try:
                state = read(step)
                verify(state, record, step)
                return step, state, record
            except Exception as error:
                self._unreadable(step, error, set_aside, last)
        return None

    def set_aside_steps(self) -> list[int]:
        """Steps of the checkpoints moved to ../unreadable_checkpoints/, by this run or before."""
        aside = self.directory.parent / UNREADABLE_FOLDER
        names = [path.name for path in aside.iterdir()] if aside.is_dir() else []
        steps = {int(name.split("-")[0]) for name in names if name.split("-")[0].isdigit()}
        # Those this process found itself count even before process 0 has moved them.
        return sorted(steps | set(self.unreadable))

    def _unreadable(self, step: int, error: Exception, set_aside: bool, last: bool) -> None:
        self.unreadable[step] = error
        detail = _first_line(error)
        if not set_aside and last:
            return  # nothing before it to try: the caller says what went wrong
        if not set_aside:
            _logger.warning(
                "Checkpoint at step %d in %s is unreadable (%s); trying the one before.",
                step, self.directory, detail,
            )  # fmt: skip
            return
        self._move_aside(step, detail, " and falling back to the one before")
        self.manager.reload()

    def _move_aside(self, step: int, detail: str, then: str) -> None:
        aside = (
            self.directory.parent / UNREADABLE_FOLDER / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        )
        _logger.warning(
            "Checkpoint at step %d in %s is unreadable (%s); moved it to %s%s.",
            step, self.directory, detail, aside, then,
        )  # fmt: skip
        if jax.process_index() == 0:
            aside.parent.mkdir(exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(aside))

    def _metrics_from_records(self) -> None:
        """Orbax ranks checkpoints for "best" by a metrics file in each, read when the folder
        is opened for writing: a damaged one stops it there, and checkpoints saved before
        these files were kept have none, so the first save would delete the best of them.
        Each record holds the same metrics: the file is written from it where it is missing
        or unreadable. A checkpoint whose record is unreadable too is set aside."""
        if jax.process_index() == 0:
            steps = [p for p in self.directory.glob("*") if p.name.isdigit() and p.is_dir()]
            for folder in sorted(steps, key=lambda p: int(p.name)):
                self._metrics_from_record(folder)
        if jax.process_count() > 1:  # the others open the folder once it is consistent
            ocp.multihost.sync_global_processes("vgg_jax_metrics_from_records")

    def _metrics_from_record(self, folder: pathlib.Path) -> None:
        metrics_file = folder / "metrics" / "metrics"
        readable = _json_or_none(metrics_file) is not None
        record = _json_or_none(folder / "record" / "metadata")
        if record is None:
            if metrics_file.exists() and not readable:
                self._move_aside(int(folder.name), "its record and metrics files", "")
            return  # otherwise found (and set aside) when it is read, as any unreadable one
        wanted = record.get("metrics")
        if wanted and not readable:
            metrics_file.parent.mkdir(exist_ok=True)
            write_atomically(metrics_file, json.dumps(wanted))
        elif not wanted and metrics_file.exists() and not readable:
            metrics_file.unlink()  # a mid-epoch checkpoint: it has no metrics

    def restore_arrays(self, step: int, target: Any = None) -> Any:
        """The state saved at `step`, without its record: shaped like `target`, or without one
        as nested dicts of NumPy arrays, whatever its shapes."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
        )
        return restored.state

    def record(self, step: int) -> dict:
        """The JSON record of a checkpoint, without reading its arrays."""
        restored = self.manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
        )
        return upgraded_record(restored.record)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Closes the manager. The quieting of abandoned reads ends here unless a read failed:
        then the reads orbax abandoned still end later, as late as the interpreter's shutdown
        (seen: a command that stops at an unreadable checkpoint printed their tracebacks
        after its one-line error), orbax offers no way to wait for them, and the quieting
        stays for the rest of the process."""
        try:
            await_tmp_cleanup(self.manager)
            self.manager.close()
        finally:
            if self.unreadable:
                self._quieted.pop_all()  # left in place, on purpose (above)
            else:
                self._quieted.close()


# The one use of orbax's private API. Its close does not wait for the clean-up of half-written
# folders that opening the manager started, and offers no public way to; a process exiting soon
# after (a refused init_from) would have that thread fail at interpreter shutdown, printing a
# traceback after the run's one message. tests/training/test_checkpoints.py fails loudly when orbax
# renames or drops the method, rather than letting this quietly do nothing.
PRIVATE_TMP_CLEANUP = "_maybe_await_cleanup_tmp_directory"


def await_tmp_cleanup(manager: ocp.CheckpointManager) -> None:
    getattr(manager, PRIVATE_TMP_CLEANUP)()


def read_trained_variables(workdir: str | pathlib.Path, which: str | int = "latest"):
    """(variables, config, step) from a train.py work directory: the model variables ("params"
    and, with BatchNorm, "batch_stats") as NumPy arrays and the run's config as a dict.

    `which` is "latest" (the newest readable checkpoint), "best" (by validation top-1) or a
    step number.
    """
    which = checkpoint_choice(which)
    workdir = pathlib.Path(workdir).expanduser()
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        raise CheckpointNotFound(
            f"No checkpoints in {workdir}: expected the --workdir of a train.py run, holding "
            f"{directory}."
        )
    store = Checkpoints(directory, read_only=True)
    try:
        steps = store.steps()
        if not steps:
            raise CheckpointNotFound(f"{directory} holds no checkpoint yet.")
        if which == "latest":
            candidates = list(reversed(steps))
        elif which == "best":
            best = store.best_step()
            if best is None:
                raise CheckpointNotFound(
                    f"No checkpoint in {directory} has validation metrics (the run never "
                    f"finished an epoch): use the latest one."
                )
            candidates = [best]
        else:
            step = which
            if step not in steps:
                raise CheckpointNotFound(
                    f"No checkpoint at step {step} in {directory}; it has steps "
                    f"{', '.join(map(str, steps))}."
                )
            candidates = [step]
        found = store.first_readable(candidates, store.restore_arrays)
        if found is None:
            step = candidates[-1]
            error = store.unreadable[step]
            raise CheckpointNotFound(
                f"The checkpoint at step {step} in {directory} is unreadable "
                f"({type(error).__name__}: {error})."
            ) from error
        step, state, record = found
        variables = {"params": state["params"]}
        if state.get("batch_stats"):
            variables["batch_stats"] = state["batch_stats"]
        return variables, record.get("config", {}), step
    finally:
        store.close()
