"""The train state and the per-device train and eval steps, run under jax.pmap.

Steps are pure functions of (state, batch). They are written for one device and averaged
across devices with lax.pmean on AXIS_NAME, so one device is the same code with an axis of 1.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from vgg_jax.data.normalization import model_input
from vgg_jax.model.vgg import VGG
from vgg_jax.training.metrics import correct_top_k, cross_entropy
from vgg_jax.training.optim import LearningRate, make_optimizer

AXIS_NAME = "batch"


@struct.dataclass
class TrainState:
    """Everything training changes, as one pytree (what a checkpoint holds)."""

    step: jax.Array
    params: Any
    batch_stats: Any  # {} without BatchNorm
    opt_state: Any
    plateau: Any  # the paper's learning-rate decay (optim.LearningRate's reduce_on_plateau)
    rng: jax.Array  # raw PRNG key; each step and device folds in its own dropout key


@dataclasses.dataclass(frozen=True)
class TrainingSetup:
    """What the train step needs besides the state: the model (BatchNorm statistics averaged
    across the pmap axis), the optimiser and the learning rate that scales its updates."""

    model: VGG
    tx: optax.GradientTransformation
    learning_rate: LearningRate


def init_training(
    config, model: VGG, image_shape, steps_per_epoch: int
) -> tuple[TrainingSetup, TrainState]:
    """The one way to start training `model` with `config`'s optimiser and learning rate: the
    setup for the steps, and a fresh state (seeded by config.seed) on the default device.
    `image_shape` is one image's (H, W, C)."""
    learning_rate = LearningRate.from_config(config, steps_per_epoch)
    setup = TrainingSetup(
        model_for_training(model), make_optimizer(config, learning_rate), learning_rate
    )
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(config.seed))
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
        )

    return setup, init(init_key)


def _variables(state: TrainState, params) -> dict:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(state: TrainState, batch: dict, *, setup: TrainingSetup) -> tuple[TrainState, dict]:
    """One SGD step on this device's share of the batch; run under pmap(axis_name=AXIS_NAME).

    The model carries axis_name=AXIS_NAME (init_training sees to it) so that BatchNorm averages
    its batch statistics across devices: then a step on N devices equals a step on one device
    with the whole batch.
    """
    model = setup.model
    dropout_key = jax.random.fold_in(
        jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS_NAME)
    )
    mutable = ["batch_stats"] if state.batch_stats else []

    def loss_fn(params):
        logits, new_model_state = model.apply(
            _variables(state, params),
            model_input(batch),
            train=True,
            rngs={"dropout": dropout_key},
            mutable=mutable,
        )
        return jnp.mean(cross_entropy(logits, batch["label"])), (logits, new_model_state)

    (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    grads = lax.pmean(grads, AXIS_NAME)
    updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
    updates = setup.learning_rate.scale_updates(updates, state.plateau)
    new_state = state.replace(
        step=state.step + 1,
        params=optax.apply_updates(state.params, updates),
        batch_stats=new_model_state.get("batch_stats", state.batch_stats),
        opt_state=opt_state,
    )
    metrics = {
        "loss": loss,
        "top1_accuracy": jnp.mean(correct_top_k(logits, batch["label"], 1)),
        "top5_accuracy": jnp.mean(correct_top_k(logits, batch["label"], 5)),
    }
    return new_state, lax.pmean(metrics, AXIS_NAME)


def eval_step(state: TrainState, batch: dict, *, model: VGG) -> dict:
    """Sums over this batch, padding masked out, summed across devices."""
    logits = model.apply(_variables(state, state.params), model_input(batch), train=False)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
    sums = {
        "loss": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "top1_correct": jnp.sum(correct_top_k(logits, batch["label"], 1) * mask),
        "top5_correct": jnp.sum(correct_top_k(logits, batch["label"], 5) * mask),
        "count": jnp.sum(mask),
    }
    return lax.psum(sums, AXIS_NAME)


def pmapped_steps(setup: TrainingSetup):
    """(p_train_step, p_eval_step): the steps under pmap; the train state's buffers donated."""
    if setup.model.batch_norm and setup.model.axis_name != AXIS_NAME:
        raise ValueError(
            f"Build the model with axis_name={AXIS_NAME!r} (init_training does) so BatchNorm "
            f"statistics are averaged across devices."
        )
    p_train_step = jax.pmap(
        functools.partial(train_step, setup=setup),
        axis_name=AXIS_NAME,
        donate_argnums=(0,),
    )
    p_eval_step = jax.pmap(functools.partial(eval_step, model=setup.model), axis_name=AXIS_NAME)
    return p_train_step, p_eval_step


def replicate(state: TrainState, devices=None) -> TrainState:
    """The state copied onto every local device (or onto `devices`), for the pmapped steps."""
    return flax.jax_utils.replicate(state, devices)


def unreplicate(tree: Any) -> Any:
    """One host (NumPy) copy of a replicated pytree (a state, metrics), on every process of a
    multi-host run."""
    return jax.device_get(flax.jax_utils.unreplicate(tree))


def model_for_training(model: VGG) -> VGG:
    """The model with BatchNorm statistics synchronised across the pmap axis."""
    return model.clone(axis_name=AXIS_NAME) if model.batch_norm else model
