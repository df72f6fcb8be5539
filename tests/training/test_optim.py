"""The paper's optimiser checked by its effect: SGD with momentum (and Nesterov), L2 weight
decay, the plateau decay of the learning rate and clipping by global norm, stepped several
times against PyTorch's torch.optim.SGD update written out by hand in NumPy; and the train and
eval steps' loss and top-k against a hand computation on the model input they must see (PCA
shift included, padding masked out)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import global_batches, small_config, small_training_setup

from vgg_jax.training import optim, steps
from vgg_jax.training.metrics import cross_entropy
from vgg_jax.training.sections import read_config

RATE = 0.05  # the learning rate for a batch of 256, so the linear scaling leaves it as it is
DECAY = 5e-4


def params_and_gradients(count: int, seed: int = 0):
    """Parameters shaped like a conv layer and an FC layer, and `count` steps of gradients."""
    rng = np.random.default_rng(seed)
    params = {
        "conv1_1": {"kernel": rng.normal(size=(3, 3, 2, 4)), "bias": rng.normal(size=4)},
        "fc8": {"kernel": rng.normal(size=(6, 3)), "bias": rng.normal(size=3)},
    }
    params = jax.tree.map(lambda x: x.astype(np.float32), params)
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
             for _ in range(count)]  # fmt: skip
    return params, grads


def torch_sgd(params, grads, rates, momentum, nesterov, weight_decay, clip_norm=0.0):
    """torch.optim.SGD's step (dampening 0), after torch.nn.utils.clip_grad_norm_, per leaf:
    g = grad + wd * p (kernels only here); b = g at the first step, else mu * b + g;
    d = g + mu * b with Nesterov, else b; p = p - lr * d."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    buffers = None
    for grad, rate in zip(grads, rates, strict=True):
        grad = jax.tree.map(lambda x: np.asarray(x, np.float64), grad)
        if clip_norm:
            norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(grad)))
            factor = min(1.0, clip_norm / norm)
            grad = jax.tree.map(lambda g, factor=factor: g * factor, grad)
        grad = {layer: {name: g + (weight_decay * params[layer][name] if name == "kernel" else 0)
                        for name, g in leaves.items()}
                for layer, leaves in grad.items()}  # fmt: skip
        if buffers is None:
            buffers = grad
        else:
            buffers = jax.tree.map(lambda b, g: momentum * b + g, buffers, grad)
        if nesterov:
            direction = jax.tree.map(lambda g, b: g + momentum * b, grad, buffers)
        else:
            direction = buffers
        params = jax.tree.map(lambda p, d, rate=rate: p - rate * d, params, direction)
    return params


def ours(params, grads, scales, **overrides):
    """make_optimizer's updates scaled by the plateau decay, as the train step applies them."""
    config = read_config(small_config(learning_rate=RATE, batch_size=256, lr_schedule="paper",
                                      weight_decay=DECAY, **overrides))  # fmt: skip
    learning_rate = optim.LearningRate.from_config(config, steps_per_epoch=10)
    tx = optim.make_optimizer(config.optimizer, learning_rate)
    state, plateau = tx.init(params), learning_rate.init_plateau()
    for grad, scale in zip(grads, scales, strict=True):
        updates, state = tx.update(grad, state, params)
        plateau = plateau._replace(scale=jnp.float32(scale))
        params = jax.tree.map(jnp.add, params, learning_rate.scale_updates(updates, plateau))
    return params


@pytest.mark.parametrize("nesterov", [False, True])
def test_momentum_sgd_with_plateau_decay_steps_like_pytorch(nesterov):
    """Five steps, the plateau decay dividing the rate by 10 after the second and the fourth:
    the parameters are PyTorch's, whose rate the decay would have set."""
    params, grads = params_and_gradients(5)
    scales = [1.0, 1.0, 0.1, 0.1, 0.01]
    got = ours(params, grads, scales, momentum=0.9, nesterov=nesterov)
    rates = [RATE * scale for scale in scales]
    expected = torch_sgd(params, grads, rates, 0.9, nesterov, DECAY)
    for leaf, want in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-6)
    # The decay matters: the same steps at the full rate end elsewhere.
    undecayed = torch_sgd(params, grads, [RATE] * 5, 0.9, nesterov, DECAY)
    assert np.abs(expected["fc8"]["kernel"] - undecayed["fc8"]["kernel"]).max() > 1e-2
    # And so does momentum's kind: Nesterov and heavy ball part after the first step.
    other = torch_sgd(params, grads, rates, 0.9, not nesterov, DECAY)
    assert np.abs(expected["fc8"]["kernel"] - other["fc8"]["kernel"]).max() > 1e-2


def test_gradients_are_clipped_by_their_global_norm_before_weight_decay():
    params, grads = params_and_gradients(3, seed=1)
    grads = jax.tree.map(lambda g: 10 * g, grads)  # global norm ~60, elements up to ~30
    scales = [1.0, 1.0, 1.0]
    got = ours(params, grads, scales, momentum=0.9, grad_clip_norm=1.0)
    expected = torch_sgd(params, grads, [RATE] * 3, 0.9, False, DECAY, clip_norm=1.0)
    for leaf, want in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-6)
    # A gradient inside the norm passes unchanged.
    small = [jax.tree.map(lambda g: 1e-3 * g, grad) for grad in grads]
    got = ours(params, small, scales, momentum=0.9, grad_clip_norm=1.0)
    expected = torch_sgd(params, small, [RATE] * 3, 0.9, False, DECAY)
    for leaf, want in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(leaf, want, rtol=1e-5, atol=1e-7)


@functools.cache
def one_device_step():
    training_setup, state = small_training_setup(batch_norm=False)
    step = jax.pmap(functools.partial(steps.train_step, setup=training_setup),
                    axis_name=steps.AXIS_NAME, devices=jax.devices()[:1])  # fmt: skip
    return training_setup, state, step


def batch_with_lighting():
    images, labels = next(global_batches(steps=1))
    lighting = np.random.default_rng(3).normal(0, 20, size=(len(labels), 3)).astype(np.float32)
    return {"image": images[None], "label": labels[None], "lighting": lighting[None]}


def test_the_train_step_scales_its_update_by_the_plateau_decay():
    _, state, step = one_device_step()
    batch = batch_with_lighting()
    moves = {}
    for scale in (1.0, 0.1):
        decayed = state.replace(plateau=state.plateau._replace(scale=jnp.float32(scale)))
        new, _ = step(jax.tree.map(lambda x: np.stack([x]), jax.device_get(decayed)), batch)
        moves[scale] = jax.tree.map(lambda a, b: np.asarray(a[0]) - b, new.params, state.params)
    for full, tenth in zip(jax.tree.leaves(moves[1.0]), jax.tree.leaves(moves[0.1]), strict=True):
        # Parameters near 0.1 move by ~1e-5: float32's spacing there is ~1e-8.
        np.testing.assert_allclose(tenth, 0.1 * full, rtol=1e-3, atol=3e-8)
    assert max(np.abs(m).max() for m in jax.tree.leaves(moves[1.0])) > 1e-5


def test_the_train_step_loss_is_the_mean_cross_entropy_of_the_lit_normalised_images():
    """The loss by hand: the PCA shift added to each image, ImageNet's mean and deviation
    (written out here), the model's logits, -log softmax at the label, averaged."""
    training_setup, state, step = one_device_step()
    # Class scores far from uniform, so that the loss depends on the input.
    fc8 = {**state.params["fc8"], "kernel": 100 * state.params["fc8"]["kernel"]}
    state = state.replace(params={**state.params, "fc8": fc8})
    batch = batch_with_lighting()
    _, metrics = step(jax.tree.map(lambda x: np.stack([x]), jax.device_get(state)), batch)
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    lit = batch["image"][0] + batch["lighting"][0][:, None, None, :]
    logits = np.asarray(training_setup.model.apply({"params": state.params}, (lit - mean) / std),
                        np.float64)  # fmt: skip
    labels = batch["label"][0]
    log_sum = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    losses = log_sum - logits[np.arange(len(labels)), labels]
    assert float(metrics["loss"][0]) == pytest.approx(np.mean(losses), rel=1e-5)
    rank = np.sum(logits > logits[np.arange(len(labels)), labels][:, None], axis=1)
    assert float(metrics["top1_accuracy"][0]) == pytest.approx(np.mean(rank < 1))
    assert float(metrics["top5_accuracy"][0]) == pytest.approx(np.mean(rank < 5))
    assert np.mean(rank < 1) != np.mean(rank < 5)  # the batch tells top-1 from top-5
    # Without the shift the loss is another: the test tells the two apart.
    unlit = (batch["image"][0] - mean) / std
    logits = np.asarray(training_setup.model.apply({"params": state.params}, unlit), np.float64)
    log_sum = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
    unlit_loss = np.mean(log_sum - logits[np.arange(len(labels)), labels])
    assert abs(unlit_loss - np.mean(losses)) > 1e-2


def hand_losses(logits, labels):
    logits = np.asarray(logits, np.float64)
    top = logits.max(1, keepdims=True)
    log_sum = np.log(np.sum(np.exp(logits - top), 1)) + top[:, 0]
    return log_sum - logits[np.arange(len(labels)), labels]


def test_the_loss_is_computed_in_float32_from_bfloat16_logits():
    logits = jnp.asarray(np.random.default_rng(4).normal(0, 5, (6, 10)), jnp.bfloat16)
    labels = np.arange(6)
    losses = cross_entropy(logits, labels)
    assert losses.dtype == jnp.float32
    np.testing.assert_allclose(losses, hand_losses(logits.astype(np.float32), labels), rtol=1e-6)


def test_the_eval_step_sums_over_real_examples_only():
    """Three of eight examples are padding (mask 0): the sums are those of the other five."""
    training_setup, state, _ = one_device_step()
    fc8 = {**state.params["fc8"], "kernel": 100 * state.params["fc8"]["kernel"]}
    state = state.replace(params={**state.params, "fc8": fc8})
    images, labels = next(global_batches(steps=1))
    mask = np.array([1, 1, 0, 1, 0, 1, 1, 0], np.float32)
    step = jax.pmap(functools.partial(steps.eval_step, setup=training_setup),
                    axis_name=steps.AXIS_NAME, devices=jax.devices()[:1])  # fmt: skip
    batch = {"image": images[None], "label": labels[None], "mask": mask[None]}
    sums = jax.device_get(step(jax.tree.map(lambda x: np.stack([x]), state), batch))
    mean, std = np.array([123.675, 116.28, 103.53]), np.array([58.395, 57.12, 57.375])
    logits = np.asarray(training_setup.model.apply({"params": state.params}, (images - mean) / std))
    real = mask > 0
    rank = np.sum(logits > logits[np.arange(8), labels][:, None], axis=1)[real]
    assert float(sums["count"][0]) == 5
    assert float(sums["loss"][0]) == pytest.approx(
        hand_losses(logits, labels)[real].sum(), rel=1e-5
    )
    assert float(sums["top1_correct"][0]) == np.sum(rank < 1)
    assert float(sums["top5_correct"][0]) == np.sum(rank < 5)


# ---------------------------------------------------------------- what trains


def steps_of(config_overrides, steps=3):
    """(initial state, state after `steps` library train steps on one device) for a small
    VGG-A with batch norm."""
    from helpers import IMAGE_SHAPE, global_batches, small_config

    from vgg_jax.training.steps import init_training, pmapped_steps

    config = read_config(small_config(model="vgg11_bn", init_scheme="glorot", **config_overrides))
    setup, state = init_training(config, config.model.build(10), IMAGE_SHAPE, steps_per_epoch=10)
    train_step, _ = pmapped_steps(setup, jax.devices()[:1])
    replicated = jax.tree.map(lambda leaf: np.stack([leaf]), jax.device_get(state))
    for images, labels in global_batches(steps=steps, batch_size=8):
        replicated, _ = train_step(replicated, {"image": images[None], "label": labels[None]})
    return state, jax.tree.map(lambda leaf: np.asarray(leaf)[0], jax.device_get(replicated))


@pytest.mark.parametrize("trainable, lowest", [("conv5_1", "conv5_1"), ("classifier", "fc8")])
def test_frozen_layers_and_their_statistics_stay_bit_identical(trainable, lowest):
    before, after = steps_of({"trainable": trainable, "weight_decay": 5e-4})
    frozen, trained = 0, 0
    for collection in ("params", "batch_stats"):
        for layer, values in getattr(before, collection).items():
            for key, array in values.items():
                moved = not np.array_equal(
                    np.asarray(array), getattr(after, collection)[layer][key]
                )
                is_trained = weight_layer_index(layer) >= weight_layer_index(lowest)
                assert moved == is_trained, (layer, key)
                frozen, trained = frozen + (not is_trained), trained + is_trained
    assert frozen and trained
    # No momentum is kept for a frozen layer: its optimiser state holds nothing of it.
    sizes = [leaf.size for leaf in jax.tree.leaves(after.opt_state)]
    full = [leaf.size for leaf in jax.tree.leaves(steps_of({}, steps=1)[1].opt_state)]
    assert sum(sizes) < sum(full)


def weight_layer_index(layer: str) -> int:
    from vgg_jax.model.architectures import weight_layer_names

    return weight_layer_names("A").index(layer.removesuffix("_bn"))


def test_the_multiplier_scales_the_copied_layers_updates_and_not_the_classifiers():
    start, full = steps_of({}, steps=1)
    same_start, scaled = steps_of({"copied_lr_multiplier": 0.1}, steps=1)
    for layer in ("conv1_1", "fc7", "fc8"):
        np.testing.assert_array_equal(
            same_start.params[layer]["kernel"], start.params[layer]["kernel"]
        )
        theirs = full.params[layer]["kernel"] - start.params[layer]["kernel"]
        ours = scaled.params[layer]["kernel"] - start.params[layer]["kernel"]
        factor = 1.0 if layer == "fc8" else 0.1
        # (p + u) - p is u to within p's rounding: a few 1e-8 here, against updates of 1e-4.
        np.testing.assert_allclose(ours, factor * theirs, rtol=1e-4, atol=1e-7)
        assert np.abs(theirs).max() > 0


def test_a_trainable_part_the_model_lacks_is_refused_in_one_line():
    from helpers import small_config

    from vgg_jax.training.sections import ConfigError

    with pytest.raises(
        ConfigError,
        match="config.trainable='conv5_3' names no part or layer "
        "of vgg11; choose all, classifier, head, or the lowest layer",
    ):
        read_config(small_config(model="vgg11", trainable="conv5_3"))
