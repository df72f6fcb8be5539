"""Checkpoints (vgg_jax.training.checkpoints) through the training loop: the latest and the
best kept, "best" across resumes and ties, orbax's metrics files rewritten, and the one private
orbax method the module relies on."""

import json
import shutil

import numpy as np
import pytest
from helpers import saved_state, tiny_config

from vgg_jax.training.checkpoints import Checkpoints
from vgg_jax.training.loop import train_and_evaluate


def test_checkpoints_keep_the_latest_and_the_best(uninterrupted_run):
    """One evaluation here; several, with ties and resumes: the test after next."""
    workdir, summary = uninterrupted_run
    store = Checkpoints(workdir / "checkpoints")
    # Saved at 10, 20, 22 (epoch end, evaluated) and 30; keep_checkpoints=1 keeps the latest,
    # and the best by evaluation is kept as well.
    assert store.steps() == [22, 30]
    assert store.best_step() == 22
    record = store.record(22)
    store.close()
    assert record["step"] == 22 and summary["best_step"] == 22
    assert record["metrics"]["top1_accuracy"] == summary["best_top1_accuracy"]
    assert record["config"]["width"] == 1 / 16


@pytest.mark.parametrize("metrics_file", ["missing", "damaged"])
def test_the_best_checkpoint_survives_a_resume_whatever_its_metrics_file(
    metrics_file, uninterrupted_run, digits_dir, tmp_path
):
    """Orbax keeps "best" by each checkpoint's metrics file: missing (saved before they were
    kept, until 2026-11-28) or damaged, it is written again from the checkpoint's record."""
    shutil.copytree(uninterrupted_run[0] / "checkpoints", tmp_path / "checkpoints")
    metrics = tmp_path / "checkpoints" / "22" / "metrics"
    if metrics_file == "missing":
        shutil.rmtree(metrics)
    else:
        (metrics / "metrics").write_text('{"loss": 2.3, "top1_acc')  # cut short
    assert train_and_evaluate(tiny_config(digits_dir, max_steps=33), tmp_path)["step"] == 33
    store = Checkpoints(tmp_path / "checkpoints", read_only=True)
    assert store.steps() == [22, 33]  # the best (22, the only evaluated one) and the latest
    store.close()
    rewritten = json.loads((metrics / "metrics").read_text())
    assert rewritten["top1_accuracy"] == uninterrupted_run[1]["best_top1_accuracy"]


def test_the_best_checkpoint_is_the_latest_of_equals_and_stays_on_disk(
    digits_dir, tmp_path, monkeypatch
):
    """Top-1 ties over several epochs while mid-epoch saves push old
    checkpoints out, and the run is resumed in between. The summary's best, the one kept on
    disk and --checkpoint=best must be one step: the latest of the equals."""
    from vgg_jax.training import loop
    from vgg_jax.training.checkpoints import read_trained_variables

    scripted = iter([0.5, 0.9, 0.7, 0.8, 0.9, 0.6])  # epochs 2 and 5 tie for best

    def evaluate_split(run, state, split):
        return {"loss": 1.0, "top1_accuracy": next(scripted), "top5_accuracy": 1.0}

    monkeypatch.setattr(loop, "evaluate_split", evaluate_split)
    config = tiny_config(
        digits_dir, batch_size=256, num_epochs=6, checkpoint_every_steps=2, keep_checkpoints=1
    )
    steps_per_epoch = 1438 // 256  # 5: saves at 2, 4, 5 (evaluated), 6, 8, 10 (evaluated), ...

    def kept_and_best():
        store = Checkpoints(tmp_path / "checkpoints", read_only=True)
        try:
            return store.steps(), store.best_step()
        finally:
            store.close()

    for stop in (3, 4):  # stopped mid-epoch 4, then mid-epoch 5, each time resumed
        config.max_steps = stop * steps_per_epoch + 2
        summary = train_and_evaluate(config, tmp_path)
        assert summary["best_step"] == 2 * steps_per_epoch
        # Epoch 2's checkpoint outlives the resumed run's saves, epoch 4's evaluation included.
        assert kept_and_best() == ([2 * steps_per_epoch, config.max_steps], summary["best_step"])
    config.max_steps = 0
    summary = train_and_evaluate(config, tmp_path)
    assert summary["best_step"] == 5 * steps_per_epoch and summary["best_top1_accuracy"] == 0.9
    kept, best = kept_and_best()
    assert best == summary["best_step"] in kept and kept[-1] == 6 * steps_per_epoch
    assert read_trained_variables(tmp_path, "best")[2] == summary["best_step"]
    # A rerun of the finished run trains and evaluates nothing (the script is used up) and
    # leaves the summary, timings included, as the run that did the work wrote it.
    written = (tmp_path / "summary.json").read_text()
    assert train_and_evaluate(config, tmp_path) == json.loads(written)
    assert (tmp_path / "summary.json").read_text() == written
    # The paper's decay, fed the scripted errors (0.5, 0.1, 0.3, 0.2, 0.1, 0.4) with patience
    # 2: the rate (0.4) divided by 10 at the 4th and the 6th evaluation, logged there, and in
    # the state the devices trained with (the checkpoint's).
    rates = logged_scalars(tmp_path / "tensorboard", "train/learning_rate")
    at_evaluations = [rates[epoch * steps_per_epoch] for epoch in range(1, 7)]
    np.testing.assert_allclose(at_evaluations, [0.4, 0.4, 0.4, 0.04, 0.04, 0.004], rtol=1e-6)
    assert saved_state(tmp_path)["plateau"]["scale"] == pytest.approx(0.01)


def logged_scalars(folder, tag) -> dict[int, float]:
    """{step: value} of a TensorBoard tag over a run's event files, the last write winning."""
    import tensorflow as tf

    values = {}
    for events in sorted(folder.glob("events.*")):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                if value.tag == tag:
                    values[event.step] = float(tf.make_ndarray(value.tensor))
    return values


def test_the_one_private_orbax_method_checkpoints_use_still_exists(tmp_path):
    """checkpoints.await_tmp_cleanup calls a private orbax method (no public one waits for the
    clean-up of half-written folders): an orbax that renames or drops it must fail here."""
    import orbax.checkpoint as ocp

    from vgg_jax.training import checkpoints

    assert callable(getattr(ocp.CheckpointManager, checkpoints.PRIVATE_TMP_CLEANUP, None)), (
        f"orbax {ocp.__version__} has no CheckpointManager.{checkpoints.PRIVATE_TMP_CLEANUP}: "
        "find its replacement for vgg_jax.training.checkpoints.await_tmp_cleanup"
    )
    store = checkpoints.Checkpoints(tmp_path / "checkpoints")
    checkpoints.await_tmp_cleanup(store.manager)  # returns once the clean-up has finished
    store.close()
