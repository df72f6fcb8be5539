"""The training library: pmapped steps, optimiser, schedules, checkpoints, the training loop."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    TESTS,
    flat_arrays,
    free_port,
    global_batches,
    python_env,
    relative_error,
    small_config,
    small_training_setup,
    tree_relative_error,
)

from vgg_jax.model.dtypes import compute_dtype
from vgg_jax.parallel import replicate, unreplicate
from vgg_jax.training import optim, steps
from vgg_jax.training.checkpoints import Checkpoints
from vgg_jax.training.sections import read_config


@functools.cache
def setup(batch_norm, dropout_rate=0.0):
    return small_training_setup(batch_norm=batch_norm, dropout_rate=dropout_rate)


def one_step_on(devices, batch_norm, dropout_rate=0.0, same_data_everywhere=False):
    """One library train step on the first `devices` CPU devices, the same global batch."""
    training_setup, state = setup(batch_norm, dropout_rate)
    p_train_step = jax.pmap(
        lambda s, b: steps.train_step(s, b, setup=training_setup),
        axis_name=steps.AXIS_NAME,
        devices=jax.devices()[:devices],
    )
    images, labels = next(global_batches())
    if same_data_everywhere:  # every device gets the first quarter of the batch
        images, labels = np.tile(images[:2], (devices, 1, 1, 1)), np.tile(labels[:2], devices)
    batch = {
        "image": images.reshape(devices, -1, *images.shape[1:]),
        "label": labels.reshape(devices, -1),
    }
    replicated = jax.tree.map(lambda x: np.stack([x] * devices), jax.device_get(state))
    new_state, metrics = p_train_step(replicated, batch)
    return jax.device_get(jax.tree.map(lambda x: x[0], new_state)), jax.device_get(metrics)


@pytest.mark.parametrize("batch_norm", [False, True])
def test_pmap_step_on_four_devices_equals_one_device(batch_norm):
    four, four_metrics = one_step_on(4, batch_norm)
    one, one_metrics = one_step_on(1, batch_norm)
    assert int(four.step) == int(one.step) == 1
    assert tree_relative_error(four.params, one.params) < 1e-6
    if batch_norm:
        assert tree_relative_error(four.batch_stats, one.batch_stats) < 1e-6
    assert abs(float(four_metrics["loss"][0]) - float(one_metrics["loss"][0])) < 1e-5
    # The step really moved the parameters, far beyond the tolerance above.
    _, start = setup(batch_norm)
    assert tree_relative_error(one.params, start.params) > 1e-4


def test_dropout_masks_differ_between_devices_and_steps():
    """Devices given the same data still drop different units, so they do not average to one
    device's step; and a second step draws new masks."""
    training_setup, state = setup(False, 0.5)
    four, _ = one_step_on(4, False, dropout_rate=0.5, same_data_everywhere=True)
    one, _ = one_step_on(1, False, dropout_rate=0.5, same_data_everywhere=True)
    assert tree_relative_error(four.params, one.params) > 1e-4
    # The same state and batch at another step number gives another update.
    images, labels = next(global_batches())
    batch = {"image": images[None, :2], "label": labels[None, :2]}
    step = jax.pmap(lambda s, b: steps.train_step(s, b, setup=training_setup),
                    axis_name=steps.AXIS_NAME, devices=jax.devices()[:1])  # fmt: skip
    replicated = jax.tree.map(lambda x: np.stack([x]), jax.device_get(state))
    at_0, _ = step(replicated, batch)
    at_7, _ = step(replicated.replace(step=replicated.step + 7), batch)
    assert tree_relative_error(at_0.params, at_7.params) > 1e-6


def test_two_processes_equal_one_process_with_four_devices(tmp_path):
    """Two processes x 2 CPU devices (gloo on 127.0.0.1) train like one with 4 devices."""
    port, out = str(free_port()), tmp_path / "params.npz"
    env = python_env(None, TESTS)
    workers = [
        subprocess.Popen(
            [sys.executable, str(TESTS / "distributed_worker.py"), str(i), port, str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    outputs = [worker.communicate(timeout=240)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], "\n".join(outputs)

    training_setup, state = small_training_setup(batch_norm=True)
    p_train_step, _ = steps.pmapped_steps(training_setup)
    replicated = replicate(state)
    for images, labels in global_batches():
        batch = {"image": images.reshape(4, -1, *images.shape[1:]), "label": labels.reshape(4, -1)}
        replicated, _ = p_train_step(replicated, batch)
    final = unreplicate(replicated)
    expected = flat_arrays({"params": final.params, "stats": final.batch_stats})
    saved = np.load(out)
    assert len(saved.files) == len(expected) > 0
    for key, value in expected.items():
        assert relative_error(saved[key], value) < 1e-5 or np.abs(saved[key] - value).max() < 1e-7
    moved = tree_relative_error(final.params, state.params)
    assert moved > 1e-3, "three steps should move the parameters"


def test_weight_decay_touches_kernels_only():
    config = small_config(learning_rate=0.256, batch_size=256, momentum=0.0)  # rate 0.256
    params = {
        "conv1_1": {"kernel": jnp.full((3, 3, 3, 4), 2.0), "bias": jnp.full((4,), 2.0)},
        "conv1_1_bn": {"scale": jnp.full((4,), 2.0), "bias": jnp.full((4,), 2.0)},
        "fc8": {"kernel": jnp.full((16, 10), 2.0), "bias": jnp.full((10,), 2.0)},
    }
    sections = read_config(config)
    tx = optim.make_optimizer(
        sections.optimizer, optim.LearningRate.from_config(sections, steps_per_epoch=10)
    )
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    for layer, leaves in updates.items():
        for name, update in leaves.items():
            expected = -0.256 * 5e-4 * 2.0 if name == "kernel" else 0.0
            np.testing.assert_allclose(update, expected, rtol=1e-6, err_msg=f"{layer}/{name}")


def test_learning_rate_is_scaled_by_batch_over_256_and_scheduled():
    assert optim.scaled_learning_rate(0.01, 512) == pytest.approx(0.02)
    config = small_config(learning_rate=0.1, batch_size=128, lr_schedule="step",
                          lr_step_epochs=(2, 3), lr_step_factor=0.1)  # fmt: skip
    step = optim.learning_rate_schedule(read_config(config), steps_per_epoch=10)
    assert [float(step(s)) for s in (0, 19, 20, 30)] == pytest.approx([0.05, 0.05, 0.005, 0.0005])
    config.update(lr_schedule="cosine", warmup_epochs=1, num_epochs=4)
    cosine = optim.learning_rate_schedule(read_config(config), steps_per_epoch=10)
    assert float(cosine(0)) == 0.0 and float(cosine(10)) == pytest.approx(0.05)
    assert float(cosine(40)) == pytest.approx(0.0, abs=1e-9)
    config.update(lr_schedule="paper")
    assert float(optim.learning_rate_schedule(read_config(config), 10)(1000)) == pytest.approx(0.05)


def test_paper_schedule_divides_by_10_on_plateau_three_times_and_survives_restart(tmp_path):
    config = small_config(lr_schedule="paper", lr_plateau_patience=2)
    errors = [0.5, 0.4, 0.3] + [0.3] * 20  # improves, then stalls for good

    learning_rate = optim.LearningRate.from_config(read_config(config), steps_per_epoch=10)

    def run(plateau, values):
        scales = []
        for value in values:
            plateau = learning_rate.after_evaluation(plateau, value)
            scales.append(float(plateau.scale))
        return plateau, scales

    _, uninterrupted = run(learning_rate.init_plateau(), errors)
    # Divided by 10 after each 2 evaluations without improvement, then never below 1e-3.
    assert uninterrupted[:3] == [1.0, 1.0, 1.0]
    assert uninterrupted[4] == pytest.approx(0.1) and uninterrupted[3] == 1.0
    assert uninterrupted[6] == pytest.approx(0.01) and uninterrupted[8] == pytest.approx(1e-3)
    assert all(scale == pytest.approx(1e-3) for scale in uninterrupted[8:])
    assert len({round(scale, 6) for scale in uninterrupted}) == 4  # 1, 0.1, 0.01, 0.001

    # Stop after 5 evaluations, checkpoint the rule's state, restore it, go on.
    plateau, first = run(learning_rate.init_plateau(), errors[:5])
    store = Checkpoints(tmp_path / "ckpt")
    store.save(5, jax.device_get(plateau), {"step": 5})
    store.wait()
    restored, _ = store.restore(5, jax.device_get(learning_rate.init_plateau()))
    store.close()
    _, rest = run(restored, errors[5:])
    assert first + rest == uninterrupted


def test_auto_dtype_is_float32_on_cpu():
    assert compute_dtype("auto") == jnp.float32
    assert compute_dtype("bfloat16") == jnp.bfloat16
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        compute_dtype("float8")
