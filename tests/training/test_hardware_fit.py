"""Training on less hardware: gradient accumulation, float16 with dynamic loss scaling, remat,
and the train step's memory known (and checked) before it runs."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from flax.training.dynamic_scale import DynamicScale
from helpers import (
    IMAGE_SHAPE,
    run_python,
    saved_state,
    small_config,
    tiny_config,
    tree_relative_error,
)
from optax import microbatching

from vgg_jax.configs import imagenet_vgg16
from vgg_jax.model.dtypes import auto_dtype
from vgg_jax.training import memory, steps
from vgg_jax.training.checkpoints import Checkpoints
from vgg_jax.training.loop import TrainingError, train_and_evaluate
from vgg_jax.training.sections import read_config


def setup_and_state(**overrides):
    config = small_config(init_scheme="glorot", **overrides)
    model = read_config(config).model.build(10)
    return steps.init_training(read_config(config), model, IMAGE_SHAPE, steps_per_epoch=10)


def batch_of(size: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, size=(1, size, *IMAGE_SHAPE), dtype=np.uint8),
        "label": rng.integers(0, 10, size=(1, size)).astype(np.int32),
    }


def each_step(setup, state, batches):
    """The library's pmapped step on one device, compiled once: the state and the metrics
    after each batch."""
    p_train_step = jax.pmap(
        lambda s, b: steps.train_step(s, b, setup=setup),
        axis_name=steps.AXIS_NAME,
        devices=jax.devices()[:1],
    )
    replicated = jax.tree.map(lambda x: np.stack([x]), jax.device_get(state))
    for batch in batches:
        replicated, metrics = p_train_step(replicated, batch)
        unreplicated = jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(replicated))
        yield unreplicated, jax.tree.map(lambda x: np.asarray(x)[0], jax.device_get(metrics))


def run_steps(setup, state, batches):
    """each_step to the end: the final state and each step's metrics."""
    history = []
    for state, metrics in each_step(setup, state, batches):
        history.append(metrics)
    return state, history


def test_four_micro_batches_of_16_equal_one_batch_of_64():
    batches = [batch_of(64, seed) for seed in range(2)]
    _, start = setup_and_state(batch_size=64)
    whole, whole_metrics = run_steps(setup_and_state(batch_size=64)[0], start, batches)
    accumulated, accumulated_metrics = run_steps(
        setup_and_state(batch_size=64, grad_accum_steps=4)[0], start, batches
    )
    assert tree_relative_error(accumulated.params, whole.params) < 1e-5
    assert tree_relative_error(accumulated.opt_state, whole.opt_state) < 1e-5
    for ours, theirs in zip(accumulated_metrics, whole_metrics):
        assert abs(float(ours["loss"]) - float(theirs["loss"])) < 1e-5
        assert float(ours["top1_accuracy"]) == float(theirs["top1_accuracy"])
    # Two steps moved the parameters far beyond that tolerance; a sum of the micro-batches'
    # gradients instead of their mean would be 4x off.
    assert tree_relative_error(whole.params, start.params) > 1e-3


def test_accumulation_with_batch_norm_keeps_the_batch_mean_of_the_first_layer():
    """Micro-batches are normalised by their own statistics, so batch norm's step differs. But
    conv1_1's BatchNorm sees the input alone, and the mean of the micro-batches' means is the
    batch mean: its running mean equals the whole batch's. Its running variance is lower: the
    batch's (biased) variance is the micro-batches' mean variance plus that of their means."""
    batches = [batch_of(64)]
    setup, start = setup_and_state(model="vgg11_bn", batch_size=64)
    whole, _ = run_steps(setup, start, batches)
    setup4, _ = setup_and_state(model="vgg11_bn", batch_size=64, grad_accum_steps=4)
    accumulated, metrics = run_steps(setup4, start, batches)
    ours, theirs = accumulated.batch_stats["conv1_1_bn"], whole.batch_stats["conv1_1_bn"]
    assert np.allclose(ours["mean"], theirs["mean"], rtol=1e-5, atol=1e-7)
    assert np.all(ours["var"] < theirs["var"])
    assert np.isfinite(metrics[0]["loss"])
    assert tree_relative_error(accumulated.params, start.params) > 1e-3


@pytest.mark.parametrize("grad_accum_steps", [1, 2])
def test_float16_skips_overflowing_steps_and_moves_its_loss_scale_down_and_up(grad_accum_steps):
    setup, state = setup_and_state(
        dtype="float16", batch_size=16, grad_accum_steps=grad_accum_steps
    )
    assert setup.loss_scaling
    # A scale of 2^40 overflows float16's backward pass; growth after 2 finite steps.
    state = state.replace(
        loss_scale=DynamicScale(
            growth_interval=2, fin_steps=jnp.zeros((), jnp.int32), scale=jnp.float32(2.0**40)
        )
    )
    scales, skipped, params = [float(state.loss_scale.scale)], [], [state.params]
    for state, metrics in each_step(setup, state, [batch_of(16, seed) for seed in range(30)]):
        scales.append(float(state.loss_scale.scale))
        skipped.append(bool(metrics["skipped"]))
        params.append(state.params)
        assert float(metrics["loss_scale"]) == scales[-1]
    assert int(state.step) == 30  # skipped steps consume their batch too
    first_finite = skipped.index(False)
    assert first_finite >= 1 and all(skipped[:first_finite])
    for i in range(first_finite):  # each overflow halved the scale and changed nothing else
        assert scales[i + 1] == scales[i] / 2
        assert tree_relative_error(params[i + 1], params[i]) == 0
    assert tree_relative_error(params[first_finite + 1], params[first_finite]) > 1e-4
    grown = [i for i in range(len(scales) - 1) if scales[i + 1] == 2 * scales[i]]
    assert grown, f"the scale never grew: {scales}"
    assert not skipped[grown[0]]


def test_the_loss_scale_and_the_finite_flag_take_the_minimum_over_micro_batches():
    """One overflowing micro-batch among four skips the step and lowers the scale."""

    def micro_step(values):
        scale = DynamicScale(fin_steps=jnp.int32(3), scale=values[0])
        return scale, values[0] > 1.0

    scales = jnp.array([4.0, 4.0, 0.5, 4.0])
    scale, finite = microbatching.microbatch(
        micro_step, argnums=0, microbatch_size=1, accumulator=(steps._MINIMUM, steps._MINIMUM)
    )(scales)
    assert float(scale.scale) == 0.5 and int(scale.fin_steps) == 3 and not bool(finite)


def test_an_overflow_on_one_device_skips_the_step_on_all(monkeypatch):
    setup, state = setup_and_state(dtype="float16", batch_size=16)
    real_gradients = steps._gradients

    def overflow_on_device_0(state, batch, key, setup):
        grads, stats, metrics, loss_scale, finite = real_gradients(state, batch, key, setup)
        first = jax.lax.axis_index(steps.AXIS_NAME) == 0
        halved = loss_scale.replace(scale=jnp.where(first, loss_scale.scale / 2, loss_scale.scale))
        return grads, stats, metrics, halved, finite & ~first

    monkeypatch.setattr(steps, "_gradients", overflow_on_device_0)
    p_train_step = jax.pmap(
        lambda s, b: steps.train_step(s, b, setup=setup), axis_name=steps.AXIS_NAME
    )
    replicated = jax.tree.map(lambda x: np.stack([x] * 4), jax.device_get(state))
    batch = {key: value.reshape(4, 4, *value.shape[2:]) for key, value in batch_of(16).items()}
    new, metrics = jax.device_get(p_train_step(replicated, batch))
    for device in range(4):
        kept = jax.tree.map(lambda a, b: np.array_equal(a[device], b[device]), new.params,
                            replicated.params)  # fmt: skip
        assert all(jax.tree.leaves(kept))
        assert float(new.loss_scale.scale[device]) == 2.0**15 and int(new.step[device]) == 1
    assert np.all(metrics["skipped"] == 1.0)


def test_each_micro_batch_draws_its_own_dropout_masks(monkeypatch):
    keys = []
    real_gradients = steps._gradients

    def recording(state, batch, key, setup):
        jax.debug.callback(lambda k: keys.append(np.asarray(k).tobytes()), key)
        return real_gradients(state, batch, key, setup)

    monkeypatch.setattr(steps, "_gradients", recording)
    setup, state = setup_and_state(batch_size=16, grad_accum_steps=4, dropout_rate=0.5)
    run_steps(setup, state, [batch_of(16)])
    assert len(keys) == 4 and len(set(keys)) == 4


def test_remat_gives_the_same_step_recomputing_the_conv_blocks():
    """The same update, from a program that recomputes the blocks' convolutions in the
    backward pass (XLA's cost analysis: more FLOPs). Whether that lowers the peak is XLA's
    scheduling on each backend (XLA:CPU's does not; benchmarks/train_memory.py measures it)."""
    config = dict(model="vgg16_bn", width=0.25, batch_size=16)
    batch = batch_of(16)
    setup, state = setup_and_state(**config)
    remat_setup, _ = setup_and_state(remat=True, **config)
    plain, _ = run_steps(setup, state, [batch])
    rematerialised, _ = run_steps(remat_setup, state, [batch])
    assert tree_relative_error(rematerialised.params, plain.params) < 1e-6
    assert tree_relative_error(rematerialised.batch_stats, plain.batch_stats) < 1e-6
    replicated = jax.tree.map(lambda x: jax.ShapeDtypeStruct((1, *x.shape), x.dtype), state)
    flops = [
        memory.compiled_step(s, replicated, batch).cost_analysis()["flops"]
        for s in (setup, remat_setup)
    ]
    assert flops[1] > 1.2 * flops[0], flops


@pytest.mark.parametrize(
    "device, expected",
    [
        (dict(platform="gpu", device_kind="Tesla T4", compute_capability="7.5"), jnp.float16),
        (dict(platform="gpu", device_kind="Tesla V100", compute_capability="7.0"), jnp.float16),
        (dict(platform="gpu", device_kind="A100", compute_capability="8.0"), jnp.bfloat16),
        (dict(platform="gpu", device_kind="H200", compute_capability="9.0"), jnp.bfloat16),
        (dict(platform="gpu", device_kind="Tesla P40", compute_capability="6.1"), jnp.float32),
        (dict(platform="gpu", device_kind="MI250X", compute_capability="gfx90a"), jnp.bfloat16),
        (dict(platform="tpu", device_kind="TPU v2"), jnp.bfloat16),
        (dict(platform="cpu", device_kind="cpu"), jnp.float32),
    ],
)
def test_auto_dtype_follows_the_device(device, expected):
    dtype, why = auto_dtype(types.SimpleNamespace(**device))
    assert dtype == expected
    assert device["device_kind"] in why
    if expected == jnp.float16:
        assert "loss scaling" in why and device["compute_capability"] in why


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(grad_accum_steps=0), "config.grad_accum_steps must be a positive integer"),
        (dict(grad_accum_steps=-2), "config.grad_accum_steps must be a positive integer"),
        (dict(grad_accum_steps=3), "does not split the 16 examples each of the 4 devices"),
    ],
)
def test_bad_settings_are_one_line_errors_before_anything_runs(
    overrides, message, digits_dir, tmp_path
):
    with pytest.raises(TrainingError, match=message) as raised:
        train_and_evaluate(tiny_config(digits_dir, **overrides), tmp_path)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "checkpoints").exists()


def test_float16_on_a_tpu_is_refused_with_bfloat16_suggested(digits_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "default_backend", lambda: "tpu")
    with pytest.raises(TrainingError, match="no fast path on TPUs.*'bfloat16'"):
        train_and_evaluate(tiny_config(digits_dir, dtype="float16"), tmp_path)


def test_accumulated_float16_run_logs_its_choices_and_resumes_exactly(digits_dir, tmp_path):
    """A run of 6 steps equals 3 steps, stopped, then resumed to 6: the loss scale and the
    optimiser come back from the checkpoint, and no step is ever half-accumulated."""
    config = dict(grad_accum_steps=4, dtype="float16", pca_lighting=0.0, log_every_steps=1)
    train_and_evaluate(tiny_config(digits_dir, max_steps=6, **config), tmp_path / "straight")
    train_and_evaluate(tiny_config(digits_dir, max_steps=3, **config), tmp_path / "resumed")
    train_and_evaluate(tiny_config(digits_dir, max_steps=6, **config), tmp_path / "resumed")
    straight, resumed = saved_state(tmp_path / "straight"), saved_state(tmp_path / "resumed")
    assert int(resumed["step"]) == 6
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    log = (tmp_path / "straight" / "train.log").read_text()
    assert "Computing in float16, with dynamic loss scaling: config.dtype='float16'." in log
    assert "Memory per device, for a batch of 16 in 4 micro-batch(es) of 4: parameters" in log
    assert "peak of the compiled train step" in log
    assert "loss scale 65536 (0 skipped)" in log


def test_a_step_that_does_not_fit_stops_before_training_naming_settings_that_fit(
    digits_dir, tmp_path, monkeypatch
):
    config = tiny_config(digits_dir, model="vgg11", width=0.25, max_steps=1, crop_size=32)
    setup, state = setup_and_state(model="vgg11", width=0.25, fc_features=32, batch_size=64)
    replicated = jax.tree.map(lambda x: jax.ShapeDtypeStruct((4, *x.shape), x.dtype), state)
    batch = memory.batch_spec(16, image_size=32, devices=4)
    full = memory.step_peak(setup, replicated, batch)
    quarter = memory.step_peak(memory.with_settings(setup, 4, False), replicated, batch)
    limit = (full + 2 * quarter) // 3  # between the two
    monkeypatch.setattr(memory, "device_memory", lambda device=None: limit)
    with pytest.raises(TrainingError) as raised:
        train_and_evaluate(config, tmp_path / "too_big")
    message = str(raised.value)
    assert "\n" not in message and "The train step needs" in message
    assert f"{full / 2**30:.2f} GiB per device" in message
    assert "--config.grad_accum_steps=" in message and "--config.remat=True" in message
    assert not (tmp_path / "too_big" / "checkpoints").exists() or not any(
        (tmp_path / "too_big" / "checkpoints").iterdir()
    )
    suggested = int(message.split("--config.grad_accum_steps=")[1].split()[0])
    assert 1 < suggested <= 4
    summary = train_and_evaluate(
        tiny_config(digits_dir, model="vgg11", width=0.25, max_steps=1, crop_size=32,
                    grad_accum_steps=suggested),
        tmp_path / "fits",
    )  # fmt: skip
    assert summary["step"] == 1


def test_checkpoints_saved_before_loss_scaling_resume_with_a_fresh_scale(tmp_path):
    @struct.dataclass
    class EarlierTrainState:  # the train state before it carried a loss scale
        step: jax.Array
        params: dict
        batch_stats: dict
        opt_state: tuple
        plateau: tuple
        rng: jax.Array

    _, state = setup_and_state()
    state = jax.device_get(state.replace(step=jnp.int32(7)))
    fields = {f.name: getattr(state, f.name) for f in dataclasses.fields(EarlierTrainState)}
    store = Checkpoints(tmp_path / "checkpoints")
    store.save(7, EarlierTrainState(**fields), {"config": {}})
    store.wait()
    target = jax.device_get(setup_and_state()[1])
    restored, _ = store.restore_latest(target)
    store.close()
    assert int(restored.step) == 7
    assert tree_relative_error(restored.params, state.params) == 0
    assert float(restored.loss_scale.scale) == 2.0**16


def test_largest_batch_benchmark_prints_a_batch_that_fits_and_one_more_that_does_not():
    args = ["--model", "vgg11", "--width", "0.125", "--image-size", "32", "--num-classes", "10",
            "--memory-gib", "0.5", "--dtype", "float32"]  # fmt: skip
    result = run_python("-m", "benchmarks.train_memory", *args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    line = [row for row in result.stdout.splitlines() if row.startswith("largest batch per")]
    assert line, result.stdout
    largest = int(line[0].split(":")[1].split()[0])
    config = imagenet_vgg16.get_config()
    config.update(model="vgg11", width=0.125, dtype="float32")
    setup, state = memory.abstract_training(read_config(config), num_classes=10, image_size=32)

    def peak(size):
        return memory.step_peak(setup, state, memory.batch_spec(size, image_size=32))

    assert peak(largest) <= 0.5 * 2**30 < peak(largest + 1)


def test_largest_batch_is_a_multiple_of_the_micro_batches():
    setup, state = memory.abstract_training(
        read_config(small_config(grad_accum_steps=3, batch_size=12)), num_classes=10, image_size=32
    )
    limit = memory.step_peak(setup, state, memory.batch_spec(21, image_size=32))
    largest = memory.largest_batch_per_device(setup, state, 32, limit)
    assert largest % 3 == 0 and 21 <= largest < 24
