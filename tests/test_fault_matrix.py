"""The fault matrix: each failure a user can meet around a finished run, through the real
command (train.py, python -m vgg_jax.evaluate or .predict) in a process. Every case asserts
the exit code, the one message on the console (and no traceback there), and that no completed
work was lost: every checkpoint that was not damaged still restores and matches its digest,
and a damaged one is kept (moved aside), never deleted.

Other failures are tested where their machinery lives: a bad config value
(test_train_loop.py, parametrised), bad images, a full disk, a NaN loss, kill -9 and SIGTERM
(test_faults.py), the best checkpoint kept (test_train_loop.py), an unwritable evaluation
output (test_evaluate.py).
"""

import pathlib
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, start_train_py
from test_faults import tiny_flags, wait_until

from vgg_jax.training.checkpoints import UNREADABLE_FOLDER, Checkpoints
from vgg_jax.training.signals import INTERRUPTED_TWICE

SAVED = (22, 30)  # the uninterrupted run's checkpoints


def largest_data_file(workdir, step) -> pathlib.Path:
    files = (workdir / "checkpoints" / str(step) / "state").rglob("d/*")
    return max((f for f in files if f.is_file()), key=lambda f: f.stat().st_size)


def overwrite_4kb(workdir, step):
    """The issue's damage: random bytes over the middle of a data file, its size kept."""
    file = largest_data_file(workdir, step)
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = np.random.default_rng(0).bytes(len(data[middle : middle + 4096]))
    file.write_bytes(bytes(data))


def truncate_data(workdir, step):
    file = largest_data_file(workdir, step)
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def truncate_everything(workdir, step):
    for file in (workdir / "checkpoints" / str(step) / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def python_module(module, *args):
    return [sys.executable, "-m", module, *args]


def run(command, timeout=300):
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def assert_nothing_lost(workdir, damaged=(), moved=False):
    """The undamaged checkpoints restore and pass their digest; the damaged ones are kept:
    moved to unreadable_checkpoints/ by training (`moved`), left in place by readers."""
    store = Checkpoints(workdir / "checkpoints", read_only=True)
    try:
        for step in SAVED:
            if step in damaged and moved:
                aside = workdir / UNREADABLE_FOLDER
                assert any(p.name.startswith(f"{step}-") for p in aside.iterdir()), step
            elif step in damaged:
                assert step in store.steps(), f"checkpoint {step} is gone"
            else:
                found = store.first_readable([step], store.restore_arrays)
                assert found is not None and found[0] == step, f"checkpoint {step} was lost"
    finally:
        store.close()


@pytest.fixture
def finished(uninterrupted_run, tmp_path):
    """A copy of a finished 30-step run: checkpoints at steps 22 (evaluated) and 30."""
    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted_run[0], workdir, ignore=shutil.ignore_patterns("tensorboard"))
    return workdir


def an_image(tmp_path) -> pathlib.Path:
    path = tmp_path / "digit.png"
    path.write_bytes(tf.io.encode_png(np.full((32, 32, 3), 200, np.uint8)).numpy())
    return path


EVALUATE = ("vgg_jax.evaluate", "--split=test[:32]", "--batch_size=8")

# (damage, command, exit code, the message, damaged steps). Commands get the workdir as {w},
# the digits folder as {d} and an image as {image}.
CASES = {
    "values changed: evaluate refuses the step asked for": (
        overwrite_4kb, [*EVALUATE, "--workdir={w}", "--checkpoint=30"], 1,
        "error: The checkpoint at step 30 in {w}/checkpoints is unreadable", (30,),
    ),
    "values changed: evaluate falls back from latest": (
        overwrite_4kb, [*EVALUATE, "--workdir={w}"], 0,
        "Checkpoint at step 30 in {w}/checkpoints is unreadable", (30,),
    ),
    "truncated data: predict falls back, no event-loop tracebacks": (
        truncate_data, ["vgg_jax.predict", "--workdir={w}", "{image}"], 0,
        "Checkpoint at step 30 in {w}/checkpoints is unreadable", (30,),
    ),
    "values changed: training resumes from the one before": (
        overwrite_4kb, ["train.py", "--workdir={w}", "--config.max_steps=30"], 0,
        "Checkpoint at step 30 in {w}/checkpoints is unreadable", (30,),
    ),
    "every checkpoint unreadable: training refuses to start over": (
        lambda w, step: [truncate_everything(w, s) for s in SAVED],
        ["train.py", "--workdir={w}", "--config.max_steps=30"], 1,
        "Training does not start over on its own", SAVED,
    ),
    "another configuration in the workdir: refused": (
        None, ["train.py", "--workdir={w}", "--config.width=0.125"], 1,
        "error: {w}/checkpoints holds checkpoints of another configuration", (),
    ),
    "another data set in the workdir: refused": (
        None, ["train.py", "--workdir={w}", "--config.dataset={folder}", "--config.eval_split=val",
               "--config.batch_size=4"],
        1, "error: {w}/checkpoints holds checkpoints of another configuration (dataset: "
        "checkpoint 'digits', this run '{folder}')", (),
    ),
    "init_from with no run there: one line, no shutdown traceback": (
        None, ["train.py", "--workdir={w}/../other", "--config.init_from={w}/../nowhere"], 1,
        "error: config.init_from='{w}/../nowhere': No checkpoints in", (),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_fault_matrix(case, finished, digits_dir, tmp_path):
    damage, command, exit_code, message, damaged = CASES[case]
    if damage is not None:
        damage(finished, 30)
    fill = {"w": str(finished), "image": str(an_image(tmp_path))}
    if any("{folder}" in arg for arg in command):
        from test_image_folder import make_folder

        fill["folder"] = str(make_folder(tmp_path / "pets"))
    args = [arg.format(**fill) for arg in command]
    if args[0] == "train.py":
        run_flags = tiny_flags(finished, digits_dir)[1:]  # the finished run's config
        overridden = {arg.split("=")[0] for arg in args[1:]}
        args = [*args, *(flag for flag in run_flags if flag.split("=")[0] not in overridden)]
        result = run([sys.executable, str(ROOT / "train.py"), *args[1:]])
    else:
        result = run(python_module(*args))
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert message.format(**fill) in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Given directory is read only" not in result.stderr
    if exit_code == 1:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr[-3000:]
    if args[0] == "train.py" and (finished / "train.log").exists() and exit_code == 1:
        log = (finished / "train.log").read_text()
        stopped_here = "another configuration" in message or "start over" in message
        assert not stopped_here or "ERROR Stopped: " in log  # with its traceback, for debugging
    assert_nothing_lost(finished, damaged, moved=args[0] == "train.py")


def test_a_second_ctrl_c_stops_at_once_in_one_line(finished, digits_dir, tmp_path):
    """The first SIGINT asks for a checkpoint after this step; the second, sent while that
    checkpoint is being saved (fault_injection.py makes each save take 3 s), stops the run
    at once: one line, exit 130, and the saves already made are intact."""
    flags = tiny_flags(finished, digits_dir, max_steps=400, num_epochs=20, log_every_steps=1)
    process = start_train_py(*flags, fault="delay_save:3", marker=tmp_path / "saving")
    log = finished / "train.log"
    wait_until(lambda: "step 32: loss" in log.read_text(), process, what="training past step 31")
    process.send_signal(signal.SIGINT)
    wait_until(lambda: "SIGINT received" in log.read_text(), process, what="the first SIGINT")
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err[-3000:]
    assert INTERRUPTED_TWICE in err and "Traceback" not in err, err[-3000:]
    assert f"ERROR Stopped: {INTERRUPTED_TWICE}" in log.read_text()
    assert_nothing_lost(finished)
