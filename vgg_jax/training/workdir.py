"""A training run's work directory: created, checked writable, held by one run at a time, and
what it says about runs before (summary.json) and which checkpoint a reader asks for.

Two runs on one work directory would each save over the other's checkpoints, config.json and
summary.json (a cluster requeueing a job whose first attempt still lives does this). The run
holds an exclusive lock on WORKDIR/run.lock for as long as it lasts: the platform's file lock
(flock), which the operating system releases when the process ends, however it ends, so a run
killed with kill -9 never leaves a lock behind. The file itself stays, holding the last
holder's pid, host and start time, which is what a refused run names.

Readers (evaluate, predict, warm starts) take no lock: they only read, and keep working while
a run trains.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pathlib
import socket
import time

LOCK_FILE = "run.lock"


class WorkdirUnusable(RuntimeError):
    """The work directory cannot be created or written to; the message says why."""


class WorkdirInUse(RuntimeError):
    """Another process holds the work directory's lock; the message names it."""


def check_workdir_path(workdir: str | pathlib.Path) -> None:
    """Raises WorkdirUnusable if `workdir` is a file or lies below one: what can be told
    without creating anything (train.py asks before it imports anything heavy)."""
    workdir = pathlib.Path(workdir)
    blocking_file = next((p for p in [workdir, *workdir.parents] if p.is_file()), None)
    if blocking_file is not None:
        where = "is a file" if blocking_file == workdir else f"is below the file {blocking_file}"
        raise WorkdirUnusable(
            f"--workdir={workdir} {where}; give a folder (it is created if missing)."
        )


def create_workdir(workdir: pathlib.Path) -> None:
    """Makes `workdir` (and its parents), or says in one sentence why it cannot be one."""
    check_workdir_path(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise WorkdirUnusable(_cannot_write(workdir, error)) from None


def _cannot_write(workdir: pathlib.Path, error: OSError) -> str:
    reason = error.strerror or str(error)
    if error.errno == errno.EROFS:
        reason = "it is on a read-only file system"
    elif error.errno == errno.EACCES:
        reason = "permission denied"
    return (
        f"Cannot write to the work directory {workdir}: {reason}. Training writes its "
        f"checkpoints and logs there: give a writable --workdir (evaluate and predict read a "
        f"finished run without writing to it)."
    )


@contextlib.contextmanager
def locked_workdir(workdir: pathlib.Path, take_lock: bool = True):
    """Creates `workdir` and, with `take_lock`, holds its lock while the block runs.

    Raises WorkdirInUse at once if another process holds it, and WorkdirUnusable if the
    folder cannot be created or written to. Without `take_lock` (the processes other than 0
    of a multi-host run, which write nothing there) it only checks the folder exists.
    """
    create_workdir(workdir)
    if not take_lock:
        yield
        return
    path = workdir / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise WorkdirUnusable(_cannot_write(workdir, error)) from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirInUse(_in_use_message(workdir, _read_holder(descriptor))) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(holder).encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def in_use_message(workdir: str | pathlib.Path) -> str | None:
    """What WorkdirInUse would say if another process holds `workdir`'s lock now, else None:
    a look without taking it (a shared lock, let go at once), so that train.py can refuse
    before it imports anything heavy. The run still takes the lock itself."""
    workdir = pathlib.Path(workdir)
    try:
        descriptor = os.open(workdir / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file (no run yet), or one that cannot be read: the run will say
        return None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _in_use_message(workdir, _read_holder(descriptor))
    finally:
        os.close(descriptor)
    return None


def _read_holder(descriptor: int) -> dict:
    try:
        return json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except ValueError:  # caught between the holder's truncate and write
        return {}


def _in_use_message(workdir: pathlib.Path, holder: dict) -> str:
    if "pid" in holder:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
        who = f"process {holder['pid']} on {holder.get('host', '?')}, started {started}"
    else:
        who = "a process that is still starting"
    return (
        f"Another training run is using {workdir} ({who}); nothing was changed. Wait for it "
        f"to finish (rerunning this command then resumes it), stop it, or use another --workdir."
    )


def finished_step(workdir: pathlib.Path) -> int:
    """The step summary.json says a run in `workdir` reached (0 if none did)."""
    try:
        return int(json.loads((workdir / "summary.json").read_text()).get("step") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def refusal_to_forget_a_run(workdir: pathlib.Path, step: int) -> str:
    return (
        f"{workdir / 'summary.json'} says a run trained to step {step} here, but "
        f"{workdir / 'checkpoints'} holds no checkpoint of it (deleted or moved?). Training "
        f"does not start over on its own; to start from step 0 on purpose, delete "
        f"{workdir / 'summary.json'}, or use another --workdir."
    )


def checkpoint_choice(which: str | int) -> str | int:
    """`which` checkpoint to read, checked: "latest", "best" or a step number (an int, or a
    string of digits); anything else is a ValueError saying what is accepted."""
    if which in ("latest", "best") or (isinstance(which, int) and which >= 0):
        return which
    if isinstance(which, str) and which.strip().isdigit():
        return int(which)
    raise ValueError(
        f"{which!r} is not a checkpoint: give latest (the newest readable), best (by "
        f"validation top-1) or a step number."
    )


def checkpoint_argument(text: str) -> str | int:
    """checkpoint_choice for argparse, which shows the reason only of an ArgumentTypeError."""
    import argparse

    try:
        return checkpoint_choice(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def hold_workdir(held: contextlib.ExitStack, workdir: pathlib.Path, is_main: bool) -> None:
    """Creates the work directory and locks it for this run (process 0; vgg_jax.training.
    workdir) in `held`. Another run holding it raises WorkdirInUse, before anything is read,
    compiled or written; in a multi-host run every process raises it, told by process 0.
    A work directory that cannot be one raises WorkdirUnusable."""
    import jax  # here: `python -m vgg_jax.cli.evaluate --help` reads this module, and is quick
    import numpy as np

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
    if failure is not None:
        raise failure
