"""The training loop and train.py on the embedded digits: the recorded evaluation, refused work
directories, learning, the compilation cache. Checkpoints kept: test_checkpoints.py; crashes,
signals, resuming and two processes: test_faults.py."""

import json
import os
import re
import types

import jax
import numpy as np
import pytest
from helpers import run_train_py, saved_state, tiny_config

from vgg_jax.training import reports
from vgg_jax.training.checkpoints import Checkpoints
from vgg_jax.training.loop import TrainingError, train_and_evaluate


def test_the_recorded_evaluation_is_the_mean_over_the_split_by_hand(uninterrupted_run, digits_dir):
    """The evaluation at step 22 recomputed from its checkpoint: every test image once through
    the model, then the loss (-log softmax at the label) and the top-1 and top-5 hits (classes
    scoring strictly higher than the label) in NumPy, averaged over the images."""
    from vgg_jax.data import pipeline, sources
    from vgg_jax.data.normalization import normalize
    from vgg_jax.training.sections import read_config

    workdir, _ = uninterrupted_run
    config = read_config(tiny_config(digits_dir))
    builder = sources.get_builder(config.data.dataset, digits_dir)
    model = config.model.build(builder.info.features["label"].num_classes)
    variables = {"params": saved_state(workdir, 22)["params"]}
    preprocessing = pipeline.eval_preprocessing_from_config(config.data)
    apply = jax.jit(lambda images: model.apply(variables, normalize(images)))
    logits, labels = [], []
    for batch in pipeline.eval_batches(builder, config.data.eval_split, 128, preprocessing):
        real = batch["mask"].reshape(-1) > 0  # every batch padded to one shape: one compile
        images = batch["image"].reshape(-1, *batch["image"].shape[-3:])
        logits.append(np.asarray(apply(images), np.float64)[real])
        labels.append(batch["label"].reshape(-1)[real])
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    at_label = logits[np.arange(len(labels)), labels]
    top = logits.max(axis=1)
    losses = np.log(np.exp(logits - top[:, None]).sum(axis=1)) + top - at_label
    rank = np.sum(logits > at_label[:, None], axis=1)
    store = Checkpoints(workdir / "checkpoints", read_only=True)
    recorded = store.record(22)["metrics"]
    store.close()
    assert len(labels) == builder.info.splits[config.data.eval_split].num_examples
    assert recorded["loss"] == pytest.approx(np.mean(losses), rel=1e-4)
    assert recorded["top1_accuracy"] == pytest.approx(np.mean(rank < 1))
    assert recorded["top5_accuracy"] == pytest.approx(np.mean(rank < 5))
    assert np.mean(rank < 1) < np.mean(rank < 5) < 1  # the three figures differ


def test_a_workdir_of_another_configuration_is_refused(uninterrupted_run, digits_dir):
    workdir, _ = uninterrupted_run
    before = sorted(os.listdir(workdir / "checkpoints"))
    with pytest.raises(TrainingError, match=r"another configuration \(width: checkpoint 0.0625"):
        train_and_evaluate(tiny_config(digits_dir, width=0.125), workdir)
    assert sorted(os.listdir(workdir / "checkpoints")) == before
    # The refusal is in train.log too, with the traceback for debugging.
    log = (workdir / "train.log").read_text()
    assert "ERROR Stopped: " in log and "holds checkpoints of another configuration" in log
    assert "Traceback (most recent call last)" in log


def test_batch_size_must_split_over_the_devices(digits_dir, tmp_path):
    assert jax.device_count() == 4
    with pytest.raises(TrainingError, match="batch_size=6 does not split evenly over the 4"):
        train_and_evaluate(tiny_config(digits_dir, batch_size=6), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


# ---------------------------------------------------------------- train.py


# train.py as a user runs it: one CPU device, XLA's normal optimisation. Runs of a tiny model
# keep LLVM optimisation off, as conftest.py does, since their time goes into compiling.
TRAIN_PY_ENV = {**os.environ, "XLA_FLAGS": ""}
TINY_TRAIN_PY_ENV = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}


def test_the_default_run_reaches_98_percent_without_collapsing(digits_dir, tmp_path):
    """`python train.py` as the README gives it (the digits built beforehand): the recipe
    must hold on any machine, so its bar is the lowest top-1 of the README's spread, not of
    one lucky run."""
    # The package's own defaults quiet TensorFlow and libtpu: nothing set from outside (JAX
    # then tries every backend it has, libtpu's too).
    unset = ("JAX_COMPILATION_CACHE_DIR", "TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS",
             "JAX_PLATFORMS")  # fmt: skip
    env = {k: v for k, v in TRAIN_PY_ENV.items() if k not in unset and not k.startswith("TPU_")}
    result = run_train_py(f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    log = (tmp_path / "train.log").read_text()
    evaluations = re.findall(r"epoch \d+, step \d+: eval loss [\d.]+, top-1 ([\d.]+)%", log)
    top1 = [float(t) for t in evaluations]
    assert len(top1) == 12 and summary["finished"]
    assert top1[-1] >= 98.0, top1  # the final model, not only the best epoch
    assert max(before - after for before, after in zip(top1, top1[1:])) <= 10.0, top1
    assert "Best evaluation" in result.stdout and "wall time" in result.stdout
    assert 0 < summary["seconds_to_first_step"] < summary["wall_time_seconds"]
    assert "(first step after" in result.stdout
    # The compiled steps are kept in the work directory for a rerun.
    assert any((tmp_path / "compilation_cache").iterdir())
    assert "epoch 12/12" in result.stderr  # the progress bar
    # Log lines start lines of their own, never glued to the end of a progress bar.
    assert not re.search(r"[^\n]step \d+: loss", result.stderr), result.stderr[-2000:]
    # No TensorFlow start-up lines (printed twice each before the package set its defaults).
    assert "oneDNN" not in result.stderr and "InitializeLog" not in result.stderr
    assert "TPU_ACCELERATOR_TYPE" not in result.stderr and "TPU_WORKER" not in result.stderr
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert "epoch 12, step 264: eval loss" in log
    assert re.search(r"first training step done [\d.]+ s after the start", log)
    assert re.search(
        r"step 260: loss [\d.]+, top-1 [\d.]+%, lr [\d.e-]+, \d+ images/s, [\d.e-]+ TFLOP/s", log
    )


@pytest.mark.parametrize("config", [[], ["--config=vgg_jax/configs/cifar10.py"]])
def test_train_py_rejects_an_unknown_config_key_in_one_line(config, tmp_path):
    result = run_train_py(
        f"--workdir={tmp_path}", *config, "--config.batch_size=8", "--config.lernin_rate=0.1",
        timeout=120, env=TINY_TRAIN_PY_ENV,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("error: unknown configuration field in --config.batch_size")
    assert 'Did you mean "learning_rate"' in result.stderr  # ml_collections' suggestion
    assert "Traceback" not in result.stderr
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--config.model=vgg17", "config.model: Unknown VGG configuration 'vgg17'"),
        ("--config.dropout_rate=1.5", "config.dropout_rate must be in [0, 1), got 1.5."),
        ("--config.width=0", "config.width must be a positive multiplier, got 0.0."),
        ("--config.keep_checkpoints=0", "config.keep_checkpoints must be a positive integer"),
        ("--config.crop_size=-8", "config.crop_size must be a non-negative integer"),
        ("--config.learning_rate=-0.1", "config.learning_rate must be a non-negative number"),
        ("--config.weight_decay=-1", "config.weight_decay must be a non-negative number"),
        ("--config.max_steps=-5", "config.max_steps must be a non-negative integer"),
        ("--config.train_scale=(40, 32)", "config.train_scale must be () or (S_min, S_max)"),
        ("--config=missing.py", "cannot read the configuration file missing.py: no such file."),
    ],
)
def test_train_py_refuses_a_bad_config_in_one_line_writing_nothing(flag, message, tmp_path):
    workdir = tmp_path / "run"
    result = run_train_py(f"--workdir={workdir}", flag, timeout=120, env=TINY_TRAIN_PY_ENV)
    assert result.returncode == 1
    noise = ("I0000", "WARNING: All log messages")  # TensorFlow's C++ start-up lines, if any
    errors = [line for line in result.stderr.splitlines() if not line.startswith(noise)]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors
    assert not workdir.exists()


def test_train_py_refuses_a_workdir_that_is_a_file(tmp_path):
    file = tmp_path / "a_file"
    file.write_text("")
    result = run_train_py(f"--workdir={file}", timeout=120, env=TINY_TRAIN_PY_ENV)
    assert result.returncode == 1
    assert f"error: --workdir={file} is a file; give a folder" in result.stderr


def test_train_py_says_batch_norm_is_chosen_by_the_model_name(tmp_path):
    result = run_train_py(
        f"--workdir={tmp_path}", "--config.batch_norm=True", timeout=120, env=TINY_TRAIN_PY_ENV
    )
    assert result.returncode == 1
    assert "--config.model=vgg16_bn" in result.stderr and "Traceback" not in result.stderr


def test_the_first_step_is_reported_alone_and_left_out_of_images_per_second(monkeypatch):
    clock = {"now": 100.0}
    now = lambda: clock["now"]  # noqa: E731
    monkeypatch.setattr(reports, "time", types.SimpleNamespace(perf_counter=now, time=now))
    log = reports.TrainLog(None, batch_size=8, checkpoints=None, started=90.0)
    metrics = {"loss": np.ones(1), "top1_accuracy": np.ones(1)}  # one device's
    clock["now"] = 130.0  # the first step compiles for 30 s
    log.add(metrics)
    assert log.first_step_seconds == 40.0  # from the start of the run
    for _ in range(4):
        clock["now"] += 0.5
        log.add(metrics)
    assert log.flush(step=5, learning_rate=0.1)["images_per_second"] == 4 * 8 / 2.0
    for _ in range(2):
        clock["now"] += 1.0
        log.add(metrics)
    assert log.flush(step=7, learning_rate=0.1)["images_per_second"] == 2 * 8 / 2.0
    assert log.first_step_seconds == 40.0

    alone = reports.TrainLog(None, batch_size=8, checkpoints=None, started=100.0)
    clock["now"] += 30.0
    alone.add(metrics)  # a flush after the first step only: it is all there is to time
    assert alone.flush(step=1, learning_rate=0.1)["images_per_second"] == 8 / 30.0


def test_a_resumed_run_takes_its_steps_from_the_compilation_cache(digits_dir, tmp_path):
    """train.py keeps JAX's compilation cache in the work directory: the rerun that resumes
    finds its train and eval steps there instead of compiling them (JAX logs each hit and
    miss with JAX_LOG_COMPILES)."""
    env = {k: v for k, v in TINY_TRAIN_PY_ENV.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    # JAX caches only what took over a second to compile; these steps take less.
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    flags = [f"--workdir={tmp_path}", f"--config.data_dir={digits_dir}", "--config.model=vgg11",
             "--config.width=0.0625", "--config.fc_features=32"]  # fmt: skip
    first = run_train_py(*flags, "--config.max_steps=23", env=env)  # past the first evaluation
    assert first.returncode == 0, first.stderr[-3000:]
    logged = {**env, "JAX_LOG_COMPILES": "1", "JAX_EXPLAIN_CACHE_MISSES": "1"}
    rerun = run_train_py(*flags, "--config.max_steps=26", env=logged)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "Resumed from step 23" in rerun.stderr
    hits = re.findall(r"Persistent compilation cache hit for '(\w+)'", rerun.stderr)
    misses = re.findall(r"PERSISTENT COMPILATION CACHE MISS for '(\w+)'", rerun.stderr)
    # Everything the rerun compiles, the train step (pmap's jit(_fun)) and init included,
    # comes from the cache; with the cache emptied, each of these is a logged miss instead.
    assert "jit_init" in hits and "jit__fun" in hits and not misses, (hits, misses)
