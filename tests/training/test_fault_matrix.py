"""The fault matrix: each failure a user can meet around a finished run, through the real
command (train.py, python -m vgg_jax.cli.evaluate or .predict) in a process. Every case asserts
the exit code, the one message on the console (and no traceback there), and that no completed
work was lost: every checkpoint that was not damaged still restores and matches its digest,
and a damaged one is kept (moved aside), never deleted.

Other failures are tested where their machinery lives: a bad config value
(test_loop.py, parametrised), bad images, a full disk, a NaN loss, kill -9 and SIGTERM
(test_faults.py), the best checkpoint kept (test_loop.py), an unwritable evaluation
output (test_evaluate.py).
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from helpers import ROOT, run_python, start_train_py, tiny_flags, wait_until

from vgg_jax.training.checkpoints import UNREADABLE_FOLDER, Checkpoints
from vgg_jax.training.signals import INTERRUPTED_TWICE

SAVED = (22, 30)  # the uninterrupted run's checkpoints


def largest_data_file(workdir, step) -> pathlib.Path:
    files = (workdir / "checkpoints" / str(step) / "state").rglob("d/*")
    return max((f for f in files if f.is_file()), key=lambda f: f.stat().st_size)


def overwrite_4kb(workdir, step):
    """Silent damage: random bytes over the middle of a data file, its size kept."""
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


EVALUATE = ("vgg_jax.cli.evaluate", "--split=test[:32]", "--batch_size=8")


def damage_a_record(workdir, step):
    """Bytes that are not UTF-8 over the JSON record of checkpoint `step` (not the best)."""
    (workdir / "checkpoints" / str(step) / "record" / "metadata").write_bytes(b'{"best": \xe9\xff')


def move_checkpoints_away(workdir, step):
    shutil.move(workdir / "checkpoints", workdir.parent / "checkpoints-elsewhere")


def summary_kept(workdir):
    """The finished run's summary.json is as it was, and no new checkpoint was started."""
    assert json.loads((workdir / "summary.json").read_text())["step"] == SAVED[-1]
    assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())


def read_only(workdir, step):
    """The finished run, copied onto a file system that is then made read-only (a tmpfs,
    as root; elsewhere the folder's write permission is taken away). Returns the undo."""
    mount = workdir.parent / "read-only"
    mount.mkdir()
    if os.geteuid() != 0:
        shutil.copytree(workdir, mount / "run")
        for folder in [mount / "run", *(p for p in (mount / "run").rglob("*") if p.is_dir())]:
            folder.chmod(0o555)
        return lambda: [p.chmod(0o755) for p in [mount / "run", *(mount / "run").rglob("*")]
                        if p.is_dir()]  # fmt: skip
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mount)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    shutil.copytree(workdir, mount / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    return lambda: subprocess.run(["umount", "-l", str(mount)], check=False)


def with_a_name_not_utf8(folder):
    """An image whose file name is Latin-1 (caf\xe9.jpg) among the folder's images."""
    good = (folder / "train" / "cat" / "0.jpg").read_bytes()
    with open(os.path.join(os.fsencode(folder / "train" / "cat"), b"caf\xe9.jpg"), "wb") as file:
        file.write(good)
    return folder

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
        truncate_data, ["vgg_jax.cli.predict", "--workdir={w}", "{image}"], 0,
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
    "read-only work directory: one line": (
        read_only, ["train.py", "--workdir={w}/../read-only/run"], 1,
        "error: Cannot write to the work directory {w}/../read-only/run: ", (),
    ),
    "work directory below a file: one line, at once": (
        None, ["train.py", "--workdir={w}/summary.json/run1"], 1,
        "error: --workdir={w}/summary.json/run1 is below the file {w}/summary.json; give a "
        "folder", (),
    ),
    "a file name that is not UTF-8 in the image folder: refused, named": (
        None, ["train.py", "--workdir={w}/../other", "--config.dataset={folder_not_utf8}",
               "--config.eval_split=val", "--config.batch_size=4"],
        1, "error: The file name {folder_not_utf8}/train/cat/caf\\xe9.jpg is not UTF-8", (),
    ),
    "a damaged record in a checkpoint that is not the best: evaluate's best still loads": (
        damage_a_record, [*EVALUATE, "--workdir={w}", "--checkpoint=best"], 0,
        "Checkpoint at step 30 in {w}/checkpoints has an unreadable record (UnicodeDecodeError",
        (30,),
    ),
    "a damaged record in a checkpoint that is not the best: predict's best still loads": (
        damage_a_record,
        ["vgg_jax.cli.predict", "--workdir={w}", "--checkpoint=best", "{image}"], 0,
        "Checkpoint at step 30 in {w}/checkpoints has an unreadable record (UnicodeDecodeError",
        (30,),
    ),
    "an unknown --checkpoint: says what is accepted (evaluate)": (
        None, [*EVALUATE, "--workdir={w}", "--checkpoint=lastest"], 2,
        "error: argument --checkpoint: 'lastest' is not a checkpoint: give latest (the newest "
        "readable), best (by validation top-1) or a step number.", (),
    ),
    "an unknown --checkpoint: says what is accepted (predict)": (
        None, ["vgg_jax.cli.predict", "--workdir={w}", "--checkpoint=lastest", "{image}"], 2,
        "error: argument --checkpoint: 'lastest' is not a checkpoint", (),
    ),
    "a finished summary without checkpoints: refuses to start over": (
        move_checkpoints_away, ["train.py", "--workdir={w}", "--config.max_steps=30"], 1,
        "error: {w}/summary.json says a run trained to step 30 here, but {w}/checkpoints holds "
        "no checkpoint of it (deleted or moved?). Training does not start over on its own; to "
        "start from step 0 on purpose, delete {w}/summary.json", None, summary_kept,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_fault_matrix(case, finished, digits_dir, tmp_path, request):
    damage, command, exit_code, message, damaged, *check = CASES[case]
    undo = damage(finished, 30) if damage is not None else None
    if callable(undo):
        request.addfinalizer(undo)
    fill = {"w": str(finished), "image": str(an_image(tmp_path))}
    if any("{folder" in arg for arg in command):
        from image_folders import make_folder

        fill["folder"] = str(make_folder(tmp_path / "pets"))
        fill["folder_not_utf8"] = str(with_a_name_not_utf8(make_folder(tmp_path / "cafe")))
    args = [arg.format(**fill) for arg in command]
    if args[0] == "train.py":
        run_flags = tiny_flags(finished, digits_dir)[1:]  # the finished run's config
        overridden = {arg.split("=")[0] for arg in args[1:]}
        args = [*args, *(flag for flag in run_flags if flag.split("=")[0] not in overridden)]
        result = run_python(ROOT / "train.py", *args[1:])
    else:
        result = run_python("-m", *args)
    assert result.returncode == exit_code, result.stderr[-3000:]
    assert message.format(**fill) in result.stderr, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "Given directory is read only" not in result.stderr
    assert "Metadata file does not exist" not in result.stderr  # a resume is quiet
    if exit_code in (1, 2):
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, result.stderr[-3000:]
    if args[0] == "train.py" and (finished / "train.log").exists() and exit_code == 1:
        log = (finished / "train.log").read_text()
        stopped_here = "another configuration" in message or "start over" in message
        assert not stopped_here or "ERROR Stopped: " in log  # with its traceback, for debugging
    for extra_check in check:
        extra_check(finished)
    if damaged is not None:
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


def test_a_second_run_on_a_work_directory_is_refused_and_the_first_keeps_its_work(
    uninterrupted_run, digits_dir, tmp_path
):
    """A requeued job started while the first still runs (another seed):
    the second exits at once with 75, naming the first; the first finishes with the result
    of an uninterrupted run, its checkpoints, config.json and summary.json its own."""
    first = start_train_py(*tiny_flags(tmp_path, digits_dir), fault="delay_save:2",
                           marker=tmp_path.parent / f"{tmp_path.name}-saving")  # fmt: skip
    wait_until(lambda: (tmp_path / "train.log").exists(), first, what="the first run's log")
    second = run_python(ROOT / "train.py", *tiny_flags(tmp_path, digits_dir, seed=1), timeout=120)
    assert second.returncode == 75, second.stderr[-3000:]
    assert f"error: Another training run is using {tmp_path} (process {first.pid} on " in (
        second.stderr
    )
    assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for key in ("step", "best_step", "best_top1_accuracy"):
        assert summary[key] == uninterrupted_run[1][key], key
    from helpers import assert_same_params

    assert_same_params(tmp_path, uninterrupted_run[0])


def test_the_lock_itself_refuses_a_run_that_passed_train_py_s_first_look(digits_dir, tmp_path):
    """train.py looks at the lock before importing anything; two runs starting together can
    both pass that look, and then the lock that train_and_evaluate takes decides."""
    from helpers import tiny_config

    from vgg_jax.training.loop import WorkdirInUse, train_and_evaluate
    from vgg_jax.training.workdir import locked_workdir

    with locked_workdir(tmp_path):
        with pytest.raises(WorkdirInUse, match=f"process {os.getpid()} on "):
            train_and_evaluate(tiny_config(digits_dir, max_steps=2), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.lock"]  # nothing else written


def test_read_trained_variables_says_which_checkpoints_it_accepts(finished):
    from vgg_jax.training.checkpoints import read_trained_variables

    with pytest.raises(ValueError, match=r"^'lastest' is not a checkpoint: give latest"):
        read_trained_variables(finished, "lastest")
    assert read_trained_variables(finished, "22")[2] == 22  # a step, as a command passes it
