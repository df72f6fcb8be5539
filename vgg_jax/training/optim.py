"""The paper's optimiser (SGD, momentum 0.9, L2 5e-4 on kernels) and its learning rate.

`LearningRate` owns the rate: the config's schedule of steps and the paper's plateau decay.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any, Callable

import jax
import jax.numpy as jnp
import optax
from optax.contrib import reduce_on_plateau

from vgg_jax.training.warm_start import CLASSIFIER

if TYPE_CHECKING:  # sections imports SCHEDULES from here
    from vgg_jax.training.sections import OptimizerSection, TrainingConfig

SCHEDULES = ("paper", "step", "cosine")
# The paper divides the learning rate by 10 "when the validation set accuracy stopped
# improving", three times at most.
PLATEAU_FACTOR = 0.1
PLATEAU_MAX_DECAYS = 3


def scaled_learning_rate(base_learning_rate: float, batch_size: int) -> float:
    """The linear scaling rule: the base rate is for a batch of 256, the paper's."""
    return base_learning_rate * batch_size / 256


def kernel_mask(params) -> dict:
    """True for conv and FC kernels, False for biases and BatchNorm scales and offsets; for
    linen's params and NNX's (where the array sits one step below its name, in a Variable)."""

    def is_kernel(path, _) -> bool:
        names = [key.key for key in path if isinstance(key, jax.tree_util.DictKey)]
        return names[-1] == "kernel"

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def learning_rate_schedule(
    config: TrainingConfig, steps_per_epoch: int
) -> Callable[[jax.Array], jax.Array]:
    """The learning rate at each step, before any plateau decay: the optimiser section's base
    rate, scaled to its batch, on the schedule section's curve."""
    peak = scaled_learning_rate(config.optimizer.learning_rate, config.optimizer.batch_size)
    schedule = config.schedule
    if schedule.lr_schedule == "paper":
        return optax.constant_schedule(peak)
    if schedule.lr_schedule == "step":
        boundaries = {
            int(epoch * steps_per_epoch): schedule.lr_step_factor
            for epoch in schedule.lr_step_epochs
        }
        return optax.piecewise_constant_schedule(peak, boundaries)
    if schedule.lr_schedule == "cosine":
        warmup_steps = int(schedule.warmup_epochs * steps_per_epoch)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=max(int(schedule.num_epochs * steps_per_epoch), warmup_steps + 1),
        )
    raise ValueError(
        f"Unknown lr_schedule {schedule.lr_schedule!r}; choose one of {', '.join(SCHEDULES)}."
    )


@dataclasses.dataclass(frozen=True)
class LearningRate:
    """A run's learning rate: `schedule(step)` times the paper's plateau decay.

    The schedule runs inside the optax chain. The plateau decay (optax's reduce_on_plateau) is
    stepped once per evaluation, on the host, with the validation top-1 error; its state is a
    small pytree that lives in the train state, so checkpoints keep it, and its `scale`
    multiplies every update in the train step. With a schedule other than "paper" the decay
    never moves from 1.
    """

    schedule: Callable[[jax.Array], jax.Array]
    plateau_decay: optax.GradientTransformationExtraArgs
    decays_on_plateau: bool

    @classmethod
    def from_config(cls, config: TrainingConfig, steps_per_epoch: int) -> LearningRate:
        return cls(
            schedule=learning_rate_schedule(config, steps_per_epoch),
            plateau_decay=reduce_on_plateau(
                factor=PLATEAU_FACTOR,
                patience=config.schedule.lr_plateau_patience,
                # Errors are fractions; count 0.1 percentage points as an improvement.
                rtol=0.0,
                atol=1e-3,
                min_scale=PLATEAU_FACTOR**PLATEAU_MAX_DECAYS,
            ),
            decays_on_plateau=config.schedule.lr_schedule == "paper",
        )

    def init_plateau(self) -> Any:
        """The decay's state before any evaluation (scale 1)."""
        return self.plateau_decay.init(jnp.zeros((), jnp.float32))

    def after_evaluation(self, plateau: Any, validation_error: float) -> Any:
        """The decay's state after one evaluation with this top-1 error (a fraction)."""
        if not self.decays_on_plateau:
            return plateau
        _, new_plateau = self.plateau_decay.update(
            jnp.zeros((), jnp.float32), plateau, value=jnp.float32(validation_error)
        )
        return jax.device_get(new_plateau)

    def scale_updates(self, updates: Any, plateau: Any) -> Any:
        """Updates under the plateau decay. SGD applies the rate last, so scaling its updates
        is scaling the rate."""
        return jax.tree.map(lambda update: update * plateau.scale, updates)

    def at(self, step: int, plateau: Any) -> float:
        """The rate that step `step` uses, given the decay's state (a host copy)."""
        return float(self.schedule(step) * plateau.scale)


def make_optimizer(
    optimizer: OptimizerSection, learning_rate: LearningRate, model=None
) -> optax.GradientTransformation:
    """SGD with momentum and PyTorch-style (coupled) L2 weight decay on kernels only. Where
    `model` (a VGG) freezes layers or the copied layers learn at a multiple of the
    classifier's rate, optax.multi_transform gives each part its own: frozen layers no update
    at all (no momentum, no weight decay), the classifier (fc8) the rate, every other trained
    layer the rate times optimizer.copied_lr_multiplier."""

    def sgd():
        schedule = learning_rate.schedule
        return optax.chain(
            optax.add_decayed_weights(optimizer.weight_decay, mask=kernel_mask),
            optax.sgd(schedule, momentum=optimizer.momentum, nesterov=optimizer.nesterov),
        )

    transforms = []
    if optimizer.grad_clip_norm:
        transforms.append(optax.clip_by_global_norm(optimizer.grad_clip_norm))
    multiplier = optimizer.copied_lr_multiplier
    if model is None or (not model.trainable_from and multiplier == 1):
        return optax.chain(*transforms, sgd())
    copied = sgd() if multiplier == 1 else optax.chain(sgd(), optax.scale(multiplier))
    parts = {"classifier": sgd(), "copied": copied, "frozen": optax.set_to_zero()}
    transforms.append(optax.multi_transform(parts, functools.partial(part_labels, model)))
    return optax.chain(*transforms)


def part_labels(model, params) -> dict:
    """Each parameter's part: "frozen", "classifier" (fc8) or "copied" (the rest)."""

    def label(path, _):
        layer = path[0].key
        if not model.trains(layer):
            return "frozen"
        return "classifier" if layer == CLASSIFIER else "copied"

    return jax.tree_util.tree_map_with_path(label, params)
