"""The paper's optimiser (SGD, momentum 0.9, L2 5e-4 on kernels) and learning-rate schedules."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from optax.contrib import reduce_on_plateau

SCHEDULES = ("paper", "step", "cosine")
# The paper divides the learning rate by 10 "when the validation set accuracy stopped
# improving", three times at most.
PLATEAU_FACTOR = 0.1
PLATEAU_MAX_DECAYS = 3


def scaled_learning_rate(base_learning_rate: float, batch_size: int) -> float:
    """The linear scaling rule: the base rate is for a batch of 256, the paper's."""
    return base_learning_rate * batch_size / 256


def kernel_mask(params) -> dict:
    """True for conv and FC kernels, False for biases and BatchNorm scales and offsets."""
    return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)


def learning_rate_schedule(config, steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
    """The learning rate at each step, before any plateau decay."""
    peak = scaled_learning_rate(config.learning_rate, config.batch_size)
    if config.lr_schedule == "paper":
        return optax.constant_schedule(peak)
    if config.lr_schedule == "step":
        boundaries = {
            int(epoch * steps_per_epoch): config.lr_step_factor for epoch in config.lr_step_epochs
        }
        return optax.piecewise_constant_schedule(peak, boundaries)
    if config.lr_schedule == "cosine":
        warmup_steps = int(config.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=max(int(config.num_epochs * steps_per_epoch), warmup_steps + 1),
        )
    raise ValueError(
        f"Unknown lr_schedule {config.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}."
    )


def make_optimizer(config, steps_per_epoch: int) -> optax.GradientTransformation:
    """SGD with momentum and PyTorch-style (coupled) L2 weight decay on kernels only."""
    transforms = []
    if config.grad_clip_norm:
        transforms.append(optax.clip_by_global_norm(config.grad_clip_norm))
    transforms += [
        optax.add_decayed_weights(config.weight_decay, mask=kernel_mask),
        optax.sgd(
            learning_rate_schedule(config, steps_per_epoch),
            momentum=config.momentum,
            nesterov=config.nesterov,
        ),
    ]
    return optax.chain(*transforms)


def plateau_decay(config) -> optax.GradientTransformationExtraArgs:
    """The paper's rule as optax's reduce_on_plateau, stepped once per evaluation.

    It is fed the validation top-1 error (it minimises) and its `scale` multiplies the
    learning rate. min_scale stops it after PLATEAU_MAX_DECAYS divisions by 10.
    """
    return reduce_on_plateau(
        factor=PLATEAU_FACTOR,
        patience=config.lr_plateau_patience,
        # Errors are fractions; count 0.1 percentage points as an improvement, not noise.
        rtol=0.0,
        atol=1e-3,
        min_scale=PLATEAU_FACTOR**PLATEAU_MAX_DECAYS,
    )


def init_plateau(config):
    return plateau_decay(config).init(jnp.zeros((), jnp.float32))


def update_plateau(config, plateau_state, validation_error: float):
    """Steps the plateau rule with one validation result; returns its new state."""
    _, new_state = plateau_decay(config).update(
        jnp.zeros((), jnp.float32), plateau_state, value=jnp.float32(validation_error)
    )
    return new_state


def learning_rate_at(schedule, step: int, replicated_state) -> float:
    """The rate step `step` uses: the schedule times the plateau decay of a replicated state."""
    scale = jax.device_get(replicated_state.plateau.scale.addressable_data(0)).reshape(())
    return float(schedule(step) * scale)
