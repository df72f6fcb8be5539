"""Reliability: the real train.py, as a subprocess on the embedded digits, survives kill -9,
a kill in the middle of a save, preemption by SIGTERM, a corrupted checkpoint, a full disk, a
NaN loss, bad data, a dead peer process, and does not leak memory.

The runs use the test session's 4 fake CPU devices and compilation cache (conftest.py), so a
subprocess computes bit for bit what the in-process `uninterrupted_run` fixture computes. The
crashes happen to train.py; the reruns after them are `train_and_evaluate` in this process
(what train.py runs, without paying for a new Python and TensorFlow).
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from helpers import (
    assert_same_params,
    committed_steps,
    flat_arrays,
    free_port,
    logged_steps,
    run_train_py,
    saved_state,
    start_train_py,
    tiny_config,
    tiny_flags,
    wait_until,
)

from vgg_jax.training.checkpoints import (
    UNREADABLE_FOLDER,
    CheckpointNotFound,
    read_trained_variables,
)
from vgg_jax.training.loop import TrainingError, train_and_evaluate
from vgg_jax.training.workdir import LOCK_FILE, in_use_message


def test_kill_9_mid_training_resumes_losing_at_most_one_checkpoint_interval(
    uninterrupted_run, digits_dir, tmp_path
):
    flags = tiny_flags(tmp_path, digits_dir)
    process = start_train_py(*flags)
    wait_until(lambda: 10 in committed_steps(tmp_path) and max(logged_steps(tmp_path) or [0]) >= 13,
               process, what="step 13 after the step-10 checkpoint")  # fmt: skip
    process.kill()  # SIGKILL: no handler runs, nothing is flushed
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    # The killed run held the work directory's lock: the OS let it go with the process.
    assert (tmp_path / LOCK_FILE).exists() and in_use_message(tmp_path) is None
    reached, resumable = max(logged_steps(tmp_path)), committed_steps(tmp_path)[-1]
    # The rerun: what the same command runs (tiny_flags gives this config), in this process.
    summary = train_and_evaluate(tiny_config(digits_dir, max_steps=30, log_every_steps=1), tmp_path)
    assert summary["finished"]
    assert f"Resumed from step {resumable}" in (tmp_path / "train.log").read_text()
    assert reached - resumable <= 10  # at most one checkpoint interval of steps lost
    assert_same_params(tmp_path, uninterrupted_run[0])  # as if nothing had happened


def test_kill_9_during_a_save_keeps_the_previous_checkpoint(
    uninterrupted_run, digits_dir, tmp_path
):
    marker = tmp_path / "saving"
    process = start_train_py(*tiny_flags(tmp_path, digits_dir), fault="slow_save:1", marker=marker)
    wait_until(marker.exists, process, what="the second save")  # the one at step 20
    process.kill()
    process.communicate()
    half_written = pathlib.Path(marker.read_text())
    assert half_written.is_dir() and half_written.parent == tmp_path / "checkpoints"
    assert half_written.name.startswith("20.") and committed_steps(tmp_path) == [10]
    summary = train_and_evaluate(tiny_config(digits_dir, max_steps=30), tmp_path)
    assert summary["finished"]
    assert "Resumed from step 10" in (tmp_path / "train.log").read_text()
    assert not half_written.exists()  # cleaned up
    assert_same_params(tmp_path, uninterrupted_run[0])


def test_sigterm_saves_a_checkpoint_and_exits_for_a_retry(
    uninterrupted_run, digits_dir, tmp_path
):
    # Long enough that the signal always comes first; the "paper" schedule does not depend on
    # the run's length, so steps 1-30 are those of the 30-step reference run.
    process = start_train_py(*tiny_flags(tmp_path, digits_dir, max_steps=10_000))
    wait_until(lambda: max(logged_steps(tmp_path) or [0]) >= 12, process, what="step 12")
    process.send_signal(signal.SIGTERM)  # how clusters preempt
    out, err = process.communicate(timeout=120)
    # 143 (128 + SIGTERM): schedulers read a signal's exit code as "preempted, retry".
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    stopped_at = int(re.search(r"Stopped by SIGTERM at step (\d+); a checkpoint is saved", out)[1])
    assert 12 <= stopped_at < 30 and committed_steps(tmp_path)[-1] == stopped_at
    summary = train_and_evaluate(tiny_config(digits_dir, max_steps=30), tmp_path)
    assert summary["finished"]
    assert f"Resumed from step {stopped_at}" in (tmp_path / "train.log").read_text()
    assert_same_params(tmp_path, uninterrupted_run[0])  # the preemption changed nothing


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(
    uninterrupted_run, digits_dir, tmp_path
):
    reference = uninterrupted_run[0]
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    assert committed_steps(tmp_path) == [22, 30]
    for file in (tmp_path / "checkpoints" / "30" / "state").rglob("*"):
        if file.is_file() and file.stat().st_size > 0:
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # truncated
    summary = train_and_evaluate(tiny_config(digits_dir, max_steps=30), tmp_path)
    assert summary["finished"]
    log = (tmp_path / "train.log").read_text()
    assert "Checkpoint at step 30" in log and "is unreadable" in log
    assert "Resumed from step 22" in log
    assert [p.name.split("-")[0] for p in (tmp_path / UNREADABLE_FOLDER).iterdir()] == ["30"]
    assert_same_params(tmp_path, reference)  # steps 23-30 replayed exactly


def test_a_full_disk_stops_with_a_clear_error_and_keeps_the_previous_checkpoint(
    digits_dir, tmp_path
):
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        workdir = disk / "run"
        process = start_train_py(*tiny_flags(workdir, digits_dir))
        wait_until(lambda: 10 in committed_steps(workdir), process, what="the first checkpoint")
        process.send_signal(signal.SIGSTOP)  # fill the disk between two saves
        filler = disk / "filler"
        with open(filler, "wb", buffering=0) as file:  # unbuffered: nothing left to flush
            try:
                while True:
                    file.write(b"\0" * (1 << 16))
            except OSError:
                pass
        # Room for the log and TensorBoard's lines, not for a checkpoint (~380 KB).
        os.truncate(filler, filler.stat().st_size - (128 << 10))
        process.send_signal(signal.SIGCONT)
        out, err = process.communicate(timeout=180)
        assert process.returncode == 1, err[-3000:]
        assert "error: No space left on device while writing to" in err, err[-3000:]
        assert "the last complete checkpoint, at step 10, is intact" in err
        assert "Traceback" not in err, err[-3000:]  # orbax's own reports went to train.log
        assert "RESOURCE_EXHAUSTED" in (workdir / "train.log").read_text()
        assert committed_steps(workdir) == [10]
        state = saved_state(workdir)  # restorable
        assert int(state["step"]) == 10
        assert all(np.all(np.isfinite(a)) for a in flat_arrays(state["params"]).values())
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_nan_loss_stops_the_run_naming_the_step_and_keeps_a_good_checkpoint(
    uninterrupted_run, digits_dir, tmp_path
):
    shutil.copytree(uninterrupted_run[0] / "checkpoints", tmp_path / "checkpoints")
    exploding = run_train_py(*tiny_flags(tmp_path, digits_dir, learning_rate=1e5,
                                         lr_schedule="step",
                               checkpoint_every_steps=1, max_steps=60))  # fmt: skip
    assert exploding.returncode == 1
    message = re.search(r"error: The loss became NaN or infinite at step (\d+).*", exploding.stderr)
    assert message, exploding.stderr[-3000:]
    assert "the last checkpoint, saved at step" in message[0]
    assert f"ERROR Stopped: {message[0].removeprefix('error: ')}" in (
        tmp_path / "train.log"
    ).read_text()  # in the log as well, which the console's one line does not repeat
    assert "Traceback" not in exploding.stderr
    state = saved_state(tmp_path)
    assert 30 <= int(state["step"]) < int(message[1])
    assert all(np.all(np.isfinite(a)) for a in flat_arrays(state["params"]).values())


def test_bad_images_mid_epoch_are_skipped_named_counted_once_and_training_goes_on(tmp_path):
    from image_folders import BAD_FILES, make_folder

    folder = make_folder(tmp_path / "pets")  # 3 bad files among 23
    config = tiny_config(
        "", dataset=str(folder), eval_split="val", train_scale=(), batch_size=4,
        log_every_steps=2, pca_lighting=0.0,
    )  # fmt: skip
    summary = train_and_evaluate(config, tmp_path / "run")
    assert summary["finished"] and summary["step"] == 2 * (23 // 4)
    assert summary["skipped_images"] == len(BAD_FILES)  # met in both epochs, counted once
    log = (tmp_path / "run" / "train.log").read_text()
    assert "Skipped 3 images in epoch 1 (training)" in log
    assert all(name in log for name in BAD_FILES) and "epoch 2 (training)" not in log
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_images"] == 3


def rss_bytes(pid: int) -> int | None:
    """Resident memory of a running process; None once it has exited."""
    try:
        found = re.search(r"VmRSS:\s+(\d+) kB", pathlib.Path(f"/proc/{pid}/status").read_text())
    except FileNotFoundError:
        return None
    return int(found[1]) * 1024 if found else None


def test_host_memory_stays_flat_over_500_steps(digits_dir, tmp_path):
    flags = tiny_flags(tmp_path, digits_dir, max_steps=520, num_epochs=100, batch_size=8,
                       checkpoint_every_steps=100, log_every_steps=10)  # fmt: skip
    one_device = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
    process = start_train_py(*flags, env=one_device)
    samples = {}
    while process.poll() is None:
        steps, rss = logged_steps(tmp_path), rss_bytes(process.pid)
        if steps and rss:
            samples.setdefault(steps[-1], rss)
        time.sleep(0.05)
    assert process.returncode == 0, process.stderr.read()[-3000:]
    # Warm-up ends after the first evaluation (step 179), whose compilation and pipeline cost
    # a one-time 30-80 MB here; two more evaluations and four checkpoints follow it.
    after_warm_up = np.median([rss for step, rss in samples.items() if 190 <= step <= 250])
    at_end = np.median([rss for step, rss in samples.items() if step >= 470])
    growth = at_end / after_warm_up - 1
    print(f"RSS {after_warm_up / 2**20:.0f} MiB at steps 190-250, {at_end / 2**20:.0f} MiB at 470+")
    assert growth < 0.03, f"RSS grew {100 * growth:.1f}% from step ~200 to ~500: {samples}"


def test_two_processes_train_together_and_a_killed_one_stops_the_other(digits_dir, tmp_path):
    """Two processes x 2 CPU devices share the data and write one log and joint checkpoints;
    when one is killed, the other stops with JAX's message instead of hanging."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2 "
           "--xla_backend_optimization_level=0"}  # fmt: skip
    flags = tiny_flags(tmp_path, digits_dir, max_steps=100_000, num_epochs=1000,
                       checkpoint_every_steps=5, keep_checkpoints=5)  # fmt: skip
    peers = ["--distributed", f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
             "--heartbeat_timeout_seconds=5"]  # fmt: skip
    processes = [start_train_py(*flags, *peers, f"--process_id={i}", env=env) for i in range(2)]
    wait_until(lambda: 5 in committed_steps(tmp_path) and max(logged_steps(tmp_path)) >= 7,
               processes[0], what="the first checkpoint")  # fmt: skip
    # 1,438 examples: 719 per process, 22 batches of 32 each per epoch, on 4 devices in all.
    log = (tmp_path / "train.log").read_text()
    assert "22 steps per epoch, 4 devices" in log
    # Only process 0 writes logs: each line once, one TensorBoard file.
    assert log.count("steps per epoch") == 1 and log.count("step 5: loss") == 1
    assert len(list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))) == 1
    processes[1].kill()
    killed_at = time.time()
    try:
        _, err = processes[0].communicate(timeout=90)
    except subprocess.TimeoutExpired:
        processes[0].kill()
        pytest.fail("the surviving process still hangs 90 s after its peer was killed")
    # Within the heartbeat timeout (5 s) and the time to notice; the default timeout is 100 s.
    noticed_after = time.time() - killed_at
    print(f"the surviving process stopped {noticed_after:.1f} s after its peer was killed")
    assert noticed_after < 30
    assert processes[0].returncode != 0
    assert "This most likely indicates that another task died" in err, err[-3000:]
    assert int(saved_state(tmp_path, 5)["step"]) == 5  # the joint checkpoint is whole


def test_with_every_checkpoint_unreadable_training_refuses_to_start_over(
    uninterrupted_run, digits_dir, tmp_path
):
    shutil.copytree(uninterrupted_run[0] / "checkpoints", tmp_path / "checkpoints")
    for file in (tmp_path / "checkpoints").rglob("*"):
        if file.is_file() and file.stat().st_size > 0 and file.parent.name != "record":
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # truncated
    config = tiny_config(digits_dir, max_steps=30)
    for attempt in range(2):  # and again on the rerun, when checkpoints/ is empty
        with pytest.raises(TrainingError) as refused:
            train_and_evaluate(config, tmp_path)
        assert f"the unreadable ones (steps 22, 30) are in {tmp_path / UNREADABLE_FOLDER}" in str(
            refused.value
        )
        assert "Training does not start over on its own" in str(refused.value)
    assert sorted(p.name.split("-")[0] for p in (tmp_path / UNREADABLE_FOLDER).iterdir()) == [
        "22", "30",
    ]  # fmt: skip
    shutil.rmtree(tmp_path / UNREADABLE_FOLDER)  # starting over on purpose
    assert train_and_evaluate(config, tmp_path)["finished"]


def test_a_checkpoint_whose_values_changed_is_found_and_the_previous_one_used(
    uninterrupted_run, digits_dir, tmp_path
):
    """Files that still decode but hold other values (step 22's arrays under step 30's record:
    what silent damage looks like to orbax) fail the record's digest, for readers and for
    training alike."""
    reference = uninterrupted_run[0]
    shutil.copytree(reference / "checkpoints", tmp_path / "checkpoints")
    damaged = tmp_path / "checkpoints" / "30" / "state"
    shutil.rmtree(damaged)
    shutil.copytree(tmp_path / "checkpoints" / "22" / "state", damaged)
    with pytest.raises(CheckpointNotFound, match="at step 30 .* differ from what was saved"):
        read_trained_variables(tmp_path, 30)
    _, _, step = read_trained_variables(tmp_path)  # "latest" falls back, with a warning
    assert step == 22
    summary = train_and_evaluate(tiny_config(digits_dir, max_steps=30), tmp_path)
    assert summary["finished"]
    log = (tmp_path / "train.log").read_text()
    assert "Checkpoint at step 30" in log and "CorruptCheckpoint" in log
    assert "Resumed from step 22" in log
    assert_same_params(tmp_path, reference)  # steps 23-30 replayed exactly
