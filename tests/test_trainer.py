"""The training loop and train.py on the embedded digits: resume, errors, signals, learning."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from vgg_jax.checkpoints import Checkpoints
from vgg_jax.configs import get_config
from vgg_jax.trainer import TrainingError, train_and_evaluate

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(digits_dir, **overrides):
    """The default config, shrunk: 22 steps per epoch of a 1/16-width VGG-A, with the paper's
    augmentation (scale jitter, random crop, flip, PCA lighting) so resuming must replay it."""
    config = get_config()
    config.update(
        data_dir=digits_dir, width=1 / 16, fc_features=32, num_epochs=2, lr_schedule="paper",
        learning_rate=0.4, log_every_steps=5, checkpoint_every_steps=10, keep_checkpoints=1,
        train_scale=(32, 40), crop_size=32, random_flip=True, pca_lighting=0.1,
    )  # fmt: skip
    config.update(overrides)
    return config


def saved_state(workdir, step=None):
    store = Checkpoints(pathlib.Path(workdir) / "checkpoints")
    step = step if step is not None else store.steps()[-1]
    restored = store.manager.restore(step)
    store.close()
    return restored["state"]


@pytest.fixture(scope="module")
def uninterrupted_run(digits_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    summary = train_and_evaluate(tiny_config(digits_dir, max_steps=30), workdir)
    return workdir, summary


def test_resume_mid_epoch_equals_an_uninterrupted_run(uninterrupted_run, digits_dir, tmp_path):
    workdir, summary = uninterrupted_run
    assert summary["step"] == 30 and summary["finished"]
    first = train_and_evaluate(tiny_config(digits_dir, max_steps=15), tmp_path)
    assert first["step"] == 15
    second = train_and_evaluate(tiny_config(digits_dir, max_steps=30), tmp_path)
    assert second["step"] == 30
    assert "Resumed from step 15" in (tmp_path / "train.log").read_text()
    expected, resumed = saved_state(workdir), saved_state(tmp_path)
    assert jax.tree.structure(expected) == jax.tree.structure(resumed)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(resumed["step"]) == 30
    # The epoch-end evaluation at step 22 happened in both, and gave the same result.
    assert second["best_top1_accuracy"] == summary["best_top1_accuracy"]


def test_checkpoints_keep_the_latest_and_the_best(uninterrupted_run):
    workdir, _ = uninterrupted_run
    store = Checkpoints(workdir / "checkpoints")
    # Saved at 10, 20, 22 (epoch end, evaluated) and 30; keep_checkpoints=1 keeps the latest,
    # and the best by evaluation is kept as well.
    assert store.steps() == [22, 30]
    assert store.best_step() == 22
    record = store.record(22)
    store.close()
    assert record["step"] == 22 and 0.0 <= record["metrics"]["top1_accuracy"] <= 1.0
    assert record["config"]["width"] == 1 / 16


def test_a_workdir_of_another_configuration_is_refused(uninterrupted_run, digits_dir):
    workdir, _ = uninterrupted_run
    before = sorted(os.listdir(workdir / "checkpoints"))
    with pytest.raises(TrainingError, match=r"another configuration \(width: checkpoint 0.0625"):
        train_and_evaluate(tiny_config(digits_dir, width=0.125), workdir)
    assert sorted(os.listdir(workdir / "checkpoints")) == before


def test_batch_size_must_split_over_the_devices(digits_dir, tmp_path):
    assert jax.device_count() == 4
    with pytest.raises(TrainingError, match="batch_size=6 does not split evenly over the 4"):
        train_and_evaluate(tiny_config(digits_dir, batch_size=6), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(digits_dir, tmp_path):
    train_and_evaluate(tiny_config(digits_dir, max_steps=10), tmp_path)
    exploding = tiny_config(
        digits_dir, max_steps=40, learning_rate=1e5, lr_schedule="step", checkpoint_every_steps=1
    )
    with pytest.raises(TrainingError, match=r"NaN or infinite at step \d+.*last good checkpoint"):
        train_and_evaluate(exploding, tmp_path)
    store = Checkpoints(tmp_path / "checkpoints")
    steps = store.steps()
    store.close()
    assert steps and steps[-1] >= 10
    state = saved_state(tmp_path)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(state["params"]))


# ---------------------------------------------------------------- train.py


# train.py as a user runs it: one CPU device, XLA's normal optimisation. Runs of a tiny model
# keep LLVM optimisation off, as conftest.py does, since their time goes into compiling.
TRAIN_PY_ENV = {**os.environ, "XLA_FLAGS": ""}
TINY_TRAIN_PY_ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def run_train_py(*args, timeout=300, env=TRAIN_PY_ENV):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env,
    )  # fmt: skip


def test_train_py_learns_the_digits(digits_dir, tmp_path):
    result = run_train_py(
        f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.num_epochs=3"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["finished"] and summary["best_top1_accuracy"] > 0.5  # chance is 0.1
    assert "Best evaluation" in result.stdout and "wall time" in result.stdout
    assert "epoch 3/3" in result.stderr  # the progress bar
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    log = (tmp_path / "train.log").read_text()
    assert "epoch 3, step 66: eval loss" in log
    assert re.search(
        r"step 60: loss [\d.]+, top-1 [\d.]+%, lr [\d.e-]+, \d+ images/s, [\d.e-]+ TFLOP/s", log
    )


def test_train_py_rejects_an_unknown_config_key(tmp_path):
    result = run_train_py(
        f"--workdir={tmp_path}", "--config.no_such_key=3", timeout=120, env=TINY_TRAIN_PY_ENV
    )
    assert result.returncode != 0
    assert "no_such_key" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_ctrl_c_saves_a_checkpoint_and_the_rerun_resumes(digits_dir, tmp_path):
    args = [
        f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.width=0.0625",
        "--config.num_epochs=100", "--config.checkpoint_every_steps=1000",
    ]  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=TINY_TRAIN_PY_ENV,
    )  # fmt: skip
    log = tmp_path / "train.log"
    deadline = time.time() + 240
    while time.time() < deadline and "epoch 1, step 22" not in (
        log.read_text() if log.exists() else ""
    ):
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGINT, err[-3000:]
    assert "Traceback" not in err
    stopped_at = int(re.search(r"Stopped by SIGINT at step (\d+); a checkpoint is saved", out)[1])
    assert stopped_at >= 22
    store = Checkpoints(tmp_path / "checkpoints")
    assert store.steps()[-1] == stopped_at
    store.close()
    rerun = run_train_py(*args, f"--config.max_steps={stopped_at + 3}", env=TINY_TRAIN_PY_ENV)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from step {stopped_at}" in log.read_text()


def test_train_py_on_two_processes(digits_dir, tmp_path):
    """Two processes x 2 CPU devices: per-process data, one log, collective checkpoints."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**TINY_TRAIN_PY_ENV, "XLA_FLAGS": TINY_TRAIN_PY_ENV["XLA_FLAGS"]
           + " --xla_force_host_platform_device_count=2"}  # fmt: skip
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                "--distributed",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                f"--workdir={tmp_path}",
                f"--config.data_dir={digits_dir}",
                "--config.width=0.0625",
                "--config.fc_features=32",
                "--config.max_steps=25",
                "--config.keep_checkpoints=5",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=env,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][-3000:]
    log = (tmp_path / "train.log").read_text()
    # 1,438 examples: 719 per process, 22 batches of 32 each per epoch, on 4 devices in all.
    assert "22 steps per epoch, 4 devices" in log and "epoch 1, step 22: eval" in log
    assert "Best evaluation" in outputs[0] and "Best evaluation" not in outputs[1]
    store = Checkpoints(tmp_path / "checkpoints")
    assert store.steps() == [22, 25]
    store.close()
    assert int(saved_state(tmp_path)["step"]) == 25
