"""vgg_jax.to_nnx: vgg_jax's linen modules with their variables as Flax NNX modules. Their
outputs are linen's bit for bit, an NNX training step moves the weights as vgg_jax's own
train step does, and LPIPS inside an NNX model stays frozen as a loss."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import IMAGE_SHAPE, flat_arrays, global_batches, small_training_setup

import vgg_jax
from vgg_jax.data.normalization import model_input
from vgg_jax.dists import DISTS
from vgg_jax.perceptual import LPIPS
from vgg_jax.training import steps
from vgg_jax.training.metrics import cross_entropy


@pytest.fixture(scope="module")
def vgg_bn():
    """A narrow VGG-A with batch norm and dropout, its variables, and images."""
    model = vgg_jax.create_model("vgg11_bn", num_classes=10, width=1 / 8, fc_features=32)
    images = jax.random.normal(jax.random.key(1), (4, *IMAGE_SHAPE))
    variables = jax.jit(model.init)(jax.random.key(0), images)
    # Statistics other than init's zeros and ones, so that using them shows.
    variables["batch_stats"] = jax.tree.map(lambda x: x + 0.5, variables["batch_stats"])
    return model, variables, images


def test_a_vgg_with_batch_norm_computes_what_linen_computes_in_eval_and_train_mode(vgg_bn):
    model, variables, images = vgg_bn
    nnx_model = vgg_jax.to_nnx(model, variables)
    np.testing.assert_array_equal(nnx_model(images), model.apply(variables, images))

    # Training: the same dropout key (an nnx.Rngs stream's first key is fold_in(key, 0)), the
    # same logits, and the batch-norm statistics updated in place to linen's new ones.
    key = jax.random.key(5)
    logits, updated = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                  rngs={"dropout": jax.random.fold_in(key, 0)})  # fmt: skip
    np.testing.assert_array_equal(nnx_model(images, train=True, rngs=nnx.Rngs(dropout=key)),
                                  logits)  # fmt: skip
    got = flat_arrays(nnx.to_pure_dict(nnx.state(nnx_model, nnx.BatchStat)))
    want = flat_arrays(updated["batch_stats"])
    assert got.keys() == want.keys() and len(got) == 16
    for name, array in want.items():
        np.testing.assert_array_equal(got[name], array, err_msg=name)
        assert not np.array_equal(array, flat_arrays(variables["batch_stats"])[name])
    # Evaluation now uses the new statistics.
    np.testing.assert_array_equal(
        nnx_model(images), model.apply({**variables, **updated}, images)
    )


def test_features_by_name_equal_linens(vgg_bn):
    model, variables, images = vgg_bn
    layers = ["conv2_1", "pool5", "fc7"]
    got = vgg_jax.to_nnx(model, variables).extract_features(images, layers=layers)
    want = model.apply(variables, images, layers=layers, method="extract_features")
    assert list(got) == layers
    for name in layers:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@pytest.mark.parametrize("metric", [LPIPS, DISTS])
def test_lpips_and_dists_compute_what_linen_computes(metric):
    module = metric(vgg_jax.vgg16(width=1 / 8))
    keys = jax.random.split(jax.random.key(2), 3)
    images0, images1 = (jax.random.uniform(k, (2, 32, 32, 3)) for k in keys[1:])
    variables = jax.jit(module.init)(keys[0], images0, images1)
    np.testing.assert_array_equal(
        vgg_jax.to_nnx(module, variables)(images0, images1),
        module.apply(variables, images0, images1),
    )


def test_an_nnx_fine_tuning_step_moves_the_weights_as_vgg_jaxs_train_step_does():
    """vgg_jax's train step (SGD with momentum and weight decay, batch norm, dropout) against
    the same optimiser in an nnx.Optimizer, three steps on the same batches."""
    setup, state = small_training_setup(batch_norm=True, dropout_rate=0.5)
    linen_step = jax.pmap(functools.partial(steps.train_step, setup=setup),
                          axis_name=steps.AXIS_NAME, devices=jax.devices()[:1])  # fmt: skip
    model = setup.model.clone(axis_name=None)  # one device: no statistics to average
    nnx_model = vgg_jax.to_nnx(model, steps.model_variables(state))
    optimizer = nnx.Optimizer(nnx_model, setup.tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(nnx_model, optimizer, images, labels, dropout_key):
        def loss_fn(nnx_model):
            logits = nnx_model(images, train=True, rngs=nnx.Rngs(dropout=dropout_key))
            return jnp.mean(cross_entropy(logits, labels))

        optimizer.update(nnx_model, nnx.grad(loss_fn)(nnx_model))

    replicated = jax.tree.map(lambda x: np.stack([x]), jax.device_get(state))
    for step, (images, labels) in enumerate(global_batches(steps=3)):
        replicated, _ = linen_step(replicated, {"image": images[None], "label": labels[None]})
        # train_step's dropout key is fold_in(fold_in(rng, step), device 0); the stream's first
        # key is fold_in(its key, 0).
        stream_key = jax.random.wrap_key_data(jax.random.fold_in(state.rng, step))
        images = model_input({"image": images}, setup.normalization)
        nnx_step(nnx_model, optimizer, images, labels, stream_key)

    trained = {**jax.tree.map(lambda x: x[0], replicated.params)}
    got = flat_arrays(nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param)))
    want, start = flat_arrays(trained), flat_arrays(state.params)
    assert got.keys() == want.keys()
    for name, array in want.items():
        assert not np.array_equal(array, start[name]), name
        np.testing.assert_allclose(got[name], array, rtol=1e-5, atol=1e-6, err_msg=name)
    got_stats = flat_arrays(nnx.to_pure_dict(nnx.state(nnx_model, nnx.BatchStat)))
    for name, array in flat_arrays(jax.tree.map(lambda x: x[0], replicated.batch_stats)).items():
        np.testing.assert_allclose(got_stats[name], array, rtol=1e-5, atol=1e-6, err_msg=name)


class Restorer(nnx.Module):
    """An NNX model with LPIPS inside as its loss: a 3x3 convolution that learns to undo
    noise, judged by a frozen LPIPS."""

    def __init__(self, lpips, lpips_variables, rngs):
        self.conv = nnx.Conv(3, 3, kernel_size=(3, 3), rngs=rngs)
        self.lpips = vgg_jax.to_nnx(lpips, lpips_variables)

    def loss(self, noisy, clean):
        return jnp.mean(self.lpips(jnp.clip(noisy + self.conv(noisy), -1, 1), clean))


def test_lpips_inside_an_nnx_model_is_a_frozen_loss():
    lpips = LPIPS(vgg_jax.vgg16(width=1 / 8))
    clean = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3), minval=-1, maxval=1)
    noisy = clean + 0.3 * jax.random.normal(jax.random.key(4), clean.shape)
    model = Restorer(lpips, jax.jit(lpips.init)(jax.random.key(0), clean, clean), nnx.Rngs(0))
    trainable = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("lpips")))
    optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=trainable)

    @nnx.jit
    def step(model, optimizer):
        grad_fn = nnx.value_and_grad(lambda m: m.loss(noisy, clean),
                                     argnums=nnx.DiffState(0, trainable))  # fmt: skip
        loss, grads = grad_fn(model)
        optimizer.update(model, grads)
        return loss

    lpips_before = flat_arrays(nnx.to_pure_dict(nnx.state(model.lpips)))
    conv_before = np.asarray(model.conv.kernel[...])
    losses = [float(step(model, optimizer)) for _ in range(5)]
    assert losses[-1] < losses[0]  # the convolution learnt
    assert not np.array_equal(model.conv.kernel[...], conv_before)
    lpips_after = flat_arrays(nnx.to_pure_dict(nnx.state(model.lpips)))
    assert lpips_after.keys() == lpips_before.keys()
    for name, array in lpips_before.items():
        np.testing.assert_array_equal(lpips_after[name], array, err_msg=name)


def test_to_nnx_refuses_what_is_not_a_module_with_its_variables(vgg_bn):
    model, variables, _ = vgg_bn
    with pytest.raises(TypeError, match="takes a flax.linen module, not dict"):
        vgg_jax.to_nnx(variables, model)
    with pytest.raises(ValueError, match=r"with a 'params' collection .* not one with \['kernel'\]"):
        vgg_jax.to_nnx(model, {"kernel": np.zeros(3)})
