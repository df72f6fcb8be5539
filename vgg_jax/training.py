"""The train state and the per-device train and eval steps, run under jax.pmap.

Steps are pure functions of (state, batch). They are written for one device and averaged
across devices with lax.pmean on AXIS_NAME, so one device is the same code with an axis of 1.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax import lax

from vgg_jax.models import VGG
from vgg_jax.normalization import model_input

AXIS_NAME = "batch"


@struct.dataclass
class TrainState:
    """Everything training changes, as one pytree (what a checkpoint holds)."""

    step: jax.Array
    params: Any
    batch_stats: Any  # {} without BatchNorm
    opt_state: Any
    plateau: Any  # optax reduce_on_plateau state: the paper's learning-rate decay
    rng: jax.Array  # raw PRNG key; each step and device folds in its own dropout key


def create_train_state(
    model: VGG, tx: optax.GradientTransformation, plateau, image_shape, seed: int
) -> TrainState:
    """A fresh state on the default device; `image_shape` is one image's (H, W, C)."""
    init_key, dropout_key = jax.random.split(jax.random.PRNGKey(seed))
    images = jnp.zeros((1, *image_shape), jnp.float32)

    @jax.jit
    def init(key):
        variables = model.init(key, images)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=variables.get("batch_stats", {}),
            opt_state=tx.init(params),
            plateau=plateau,
            rng=dropout_key,
        )

    return init(init_key)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example multinomial logistic loss, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def correct_top_k(logits: jax.Array, labels: jax.Array, k: int) -> jax.Array:
    """Per-example 1.0 where the label is among the k highest logits."""
    k = min(k, logits.shape[-1])
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    # Ranked by how many classes score strictly higher, so ties count in the label's favour.
    return (jnp.sum(logits > label_logit, axis=-1) < k).astype(jnp.float32)


def _variables(state: TrainState, params) -> dict:
    if state.batch_stats:
        return {"params": params, "batch_stats": state.batch_stats}
    return {"params": params}


def train_step(
    state: TrainState, batch: dict, *, model: VGG, tx: optax.GradientTransformation
) -> tuple[TrainState, dict]:
    """One SGD step on this device's share of the batch; run under pmap(axis_name=AXIS_NAME).

    The model must carry axis_name=AXIS_NAME so that BatchNorm averages its batch statistics
    across devices: then a step on N devices equals a step on one device with the whole batch.
    """
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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    # The plateau scale multiplies the learning rate; SGD applies the rate last, so scaling
    # the update is the same thing.
    updates = jax.tree.map(lambda u: u * state.plateau.scale, updates)
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


def pmapped_steps(model: VGG, tx: optax.GradientTransformation):
    """(p_train_step, p_eval_step): the steps under pmap; the train state's buffers donated."""
    if model.batch_norm and model.axis_name != AXIS_NAME:
        raise ValueError(
            f"Build the model with axis_name={AXIS_NAME!r} so BatchNorm statistics are "
            f"averaged across devices."
        )
    p_train_step = jax.pmap(
        functools.partial(train_step, model=model, tx=tx),
        axis_name=AXIS_NAME,
        donate_argnums=(0,),
    )
    p_eval_step = jax.pmap(functools.partial(eval_step, model=model), axis_name=AXIS_NAME)
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
