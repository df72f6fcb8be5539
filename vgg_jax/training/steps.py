"""The train state and the per-device train and eval steps, run under jax.pmap.

Steps are pure functions of (state, batch). They are written for one device and averaged
across devices with lax.pmean on AXIS_NAME, so one device is the same code with an axis of 1.
A train step may split its batch into micro-batches (config.grad_accum_steps) and average
their gradients before its one optimiser update; in float16 it scales the loss dynamically.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training.dynamic_scale import DynamicScale
from jax import lax
from optax import microbatching

from vgg_jax.data.normalization import NORMALIZATIONS, Normalization, model_input
from vgg_jax.model.vgg import VGG
from vgg_jax.parallel import AXIS_NAME
from vgg_jax.training.metrics import correct_top_k, cross_entropy
from vgg_jax.training.optim import LearningRate, make_optimizer
from vgg_jax.training.sections import TrainingConfig

__all__ = [
    "AXIS_NAME", "TrainState", "TrainingSetup", "eval_step", "init_training",
    "model_for_training", "model_variables", "new_loss_scale", "pmapped_steps", "train_step",
]  # fmt: skip


@struct.dataclass
class TrainState:
    """Everything training changes, as one pytree (what a checkpoint holds)."""

    step: jax.Array
    params: Any
    batch_stats: Any  # {} without BatchNorm
    opt_state: Any
    plateau: Any  # the paper's learning-rate decay (optim.LearningRate's reduce_on_plateau)
    rng: jax.Array  # raw PRNG key; each step and device folds in its own dropout key
    # float16's dynamic loss scale; every run carries it, so a checkpoint resumes at any dtype.
    loss_scale: DynamicScale


def new_loss_scale() -> DynamicScale:
    """Flax's dynamic loss scale with its defaults (start at 2^16, halve after a non-finite
    gradient, double at the 2,001st finite step in a row), its counters as arrays for
    checkpoints."""
    return DynamicScale(fin_steps=jnp.zeros((), jnp.int32), scale=jnp.float32(2.0**16))


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """What the steps need besides the state: the model (BatchNorm statistics averaged across
    the pmap axis), the optimiser, the learning rate that scales its updates, the number of
    micro-batches each device's batch is split into, and the normalisation that turns uint8
    images into the model's input."""

    model: VGG
    tx: optax.GradientTransformation
    learning_rate: LearningRate
    grad_accum_steps: int = 1
    normalization: Normalization = NORMALIZATIONS["imagenet"]

    @property
    def loss_scaling(self) -> bool:
        """float16 gradients underflow without it; bfloat16 has float32's range."""
        return jnp.dtype(self.model.dtype) == jnp.float16


def init_training(
    config: TrainingConfig, model: VGG, image_shape, steps_per_epoch: int
) -> tuple[TrainingSetup, TrainState]:
    """The one way to start training `model` with `config`'s optimiser and learning rate: the
    setup for the steps, and a fresh state (seeded by the run section's seed) on the default
    device. `image_shape` is one image's (H, W, C)."""
    learning_rate = LearningRate.from_config(config, steps_per_epoch)
    setup = TrainingSetup(
        model_for_training(model),
        make_optimizer(config.optimizer, learning_rate, model),
        learning_rate,
        grad_accum_steps=config.optimizer.grad_accum_steps,
        normalization=NORMALIZATIONS[config.data.normalization],
    )
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.run.seed))
    images = jnp.zeros((1, *image_shape), jnp.float32)

    @jax.jit
    def init(key):
        variables = setup.model.init(key, images)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=setup.tx.init(params),
            plateau=learning_rate.init_plateau(),
            rng=dropout_key,
            loss_scale=new_loss_scale(),
        )

    return setup, init(init_key)


def model_variables(state: TrainState, params=None) -> dict:
    """The model's variables in `state`, with `params` (the state's own by default)."""
    params = state.params if params is None else params
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(state: TrainState, batch: dict, *, setup: TrainingSetup) -> tuple[TrainState, dict]:
    """One SGD step on this device's share of the batch; run under pmap(axis_name=AXIS_NAME).

    The model carries axis_name=AXIS_NAME (init_training sees to it) so that BatchNorm averages
    its batch statistics across devices: then a step on N devices equals a step on one device
    with the whole batch. With grad_accum_steps=K the share is split into K micro-batches run
    one after another (optax.microbatching), their gradients averaged: the update of the whole
    batch at once, holding the activations of one micro-batch at a time. Each micro-batch
    draws its own dropout masks; BatchNorm normalises each by its own statistics, and its
    running averages take the micro-batches' mean. In float16 the loss is scaled (flax's
    DynamicScale); a step whose gradients overflow changes nothing but the scale, and reports
    skipped=1. Its optimiser state is kept too, so the learning-rate schedule, counted there,
    falls one step behind for each skipped step.
    """
    step_key = jax.random.fold_in(
        jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS_NAME)
    )
    accumulate = setup.grad_accum_steps > 1
    batch = {**batch, "position": jnp.arange(batch["label"].shape[0])} if accumulate else batch

    def micro_step(micro_batch):
        # Each micro-batch holds different examples, so its first position names its dropout.
        key = jax.random.fold_in(step_key, micro_batch["position"][0]) if accumulate else step_key
        return _gradients(state, micro_batch, key, setup)

    if accumulate:
        micro_step = microbatching.microbatch(
            micro_step,
            argnums=0,
            microbatch_size=batch["label"].shape[0] // setup.grad_accum_steps,
            accumulator=(
                microbatching.AccumulationType.MEAN,  # gradients
                microbatching.AccumulationType.MEAN,  # BatchNorm's running statistics
                microbatching.AccumulationType.MEAN,  # metrics
                _MINIMUM,  # the loss scale after each: the lowest, if any overflowed
                _MINIMUM,  # finite: all of them
            ),
        )
    grads, batch_stats, metrics, loss_scale, finite = micro_step(batch)
    grads = lax.pmean(grads, AXIS_NAME)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    updates = setup.learning_rate.scale_updates(updates, state.plateau)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=batch_stats,
        opt_state=opt_state,
    )
    if setup.loss_scaling:  # the devices agree: an overflow on one is a skip on all
        finite = lax.pmin(finite.astype(jnp.int32), AXIS_NAME).astype(bool)
        loss_scale = jax.tree.map(lambda value: lax.pmin(value, AXIS_NAME), loss_scale)
        new_state = _keep_unless_finite(finite, new_state, state).replace(loss_scale=loss_scale)
        skipped = (~finite).astype(jnp.float32)
        metrics = {**metrics, "loss_scale": loss_scale.scale, "skipped": skipped}
    return new_state, lax.pmean(metrics, AXIS_NAME)


def _gradients(state: TrainState, batch: dict, dropout_key: jax.Array, setup: TrainingSetup):
    """(gradients, new BatchNorm statistics, metrics, loss scale, finite) of one (micro-)batch;
    gradients in float32, not yet averaged across devices."""
    model = setup.model
    mutable = ["batch_stats"] if state.batch_stats else []

    def loss_fn(params):
        logits, new_model_state = model.apply(
            model_variables(state, params),
            model_input(batch, setup.normalization),
            train=True,
            rngs={"dropout": dropout_key},
            mutable=mutable,
        )
        return jnp.mean(cross_entropy(logits, batch["label"])), (logits, new_model_state)

    if setup.loss_scaling:
        loss_scale, finite, (loss, (logits, new_model_state)), grads = (
            state.loss_scale.value_and_grad(loss_fn, has_aux=True)(state.params)
        )
    else:
        (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        loss_scale, finite = state.loss_scale, jnp.array(True)
    metrics = {
        "loss": loss,
        "top1_accuracy": jnp.mean(correct_top_k(logits, batch["label"], 1)),
        "top5_accuracy": jnp.mean(correct_top_k(logits, batch["label"], 5)),
    }
    batch_stats = new_model_state.get("batch_stats", state.batch_stats)
    return grads, batch_stats, metrics, loss_scale, finite


def _minimum_so_far(carry, value, index):
    return jax.tree.map(lambda c, v: jnp.where(index == 0, v, jnp.minimum(c, v)), carry, value)


# optax.microbatching has sums, means and concatenations; the loss scale needs the minimum.
_MINIMUM = microbatching.Accumulator(
    init=lambda value: jax.tree.map(jnp.zeros_like, value),
    update=_minimum_so_far,
    finalize=lambda carry: carry,
    aggregate=lambda values: jax.tree.map(lambda v: jnp.min(v, axis=0), values),
)


def _keep_unless_finite(finite: jax.Array, new: TrainState, old: TrainState) -> TrainState:
    """`new` where the gradients were finite; otherwise `old` with `new`'s step (the batch is
    consumed either way). Selected on the device: XLA has no cheap branch on GPUs."""

    def select(new_tree, old_tree):
        return jax.tree.map(lambda n, o: jnp.where(finite, n, o), new_tree, old_tree)

    return new.replace(
        params=select(new.params, old.params),
        batch_stats=select(new.batch_stats, old.batch_stats),
        opt_state=select(new.opt_state, old.opt_state),
    )


def eval_step(state: TrainState, batch: dict, *, setup: TrainingSetup) -> dict:
    """Sums over this batch, padding masked out, summed across devices."""
    images = model_input(batch, setup.normalization)
    logits = setup.model.apply(model_variables(state), images, train=False)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
    sums = {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "top1_correct": jnp.sum(correct_top_k(logits, batch["label"], 1) * mask),
        "top5_correct": jnp.sum(correct_top_k(logits, batch["label"], 5) * mask),
        "count": jnp.sum(mask),
    }
    return lax.psum(sums, AXIS_NAME)


def pmapped_steps(setup: TrainingSetup, devices=None):
    """(p_train_step, p_eval_step): the steps under pmap over `devices` (every local one by
    default; compile-only ones too, whose steps can be lowered and compiled but not run); the
    train state's buffers donated. JAX runs pmap as jax.jit of jax.shard_map over a one-axis
    Mesh of the devices, each argument split along its leading (device) axis."""
    if setup.model.batch_norm and setup.model.axis_name != AXIS_NAME:
        raise ValueError(
            f"Build the model with axis_name={AXIS_NAME!r} (init_training does) so BatchNorm "
            f"statistics are averaged across devices."
        )
    p_train_step = jax.pmap(
        functools.partial(train_step, setup=setup),
        axis_name=AXIS_NAME,
        donate_argnums=(0,),
        devices=devices,
    )
    p_eval_step = jax.pmap(
        functools.partial(eval_step, setup=setup), axis_name=AXIS_NAME, devices=devices
    )
    return p_train_step, p_eval_step


def model_for_training(model: VGG) -> VGG:
    """The model with BatchNorm statistics synchronised across the pmap axis."""
    return model.clone(axis_name=AXIS_NAME) if model.batch_norm else model
