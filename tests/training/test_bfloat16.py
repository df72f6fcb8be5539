"""bfloat16 compute, as GPUs and TPUs train by default (config.dtype "auto"), run here on CPU:
the pmapped train and eval steps on 2 devices, with BatchNorm statistics and with LRN, and
the dense head, each against the same computation in float32.

Tolerances: bfloat16 keeps 8 significant bits, a relative rounding of 2^-9 (0.2%) per value.
Parameters stay float32 and matrix products accumulate in float32, so the error is the
rounding of each layer's inputs, compounding over VGG-A's 11 layers to about 1% of the logits
(measured: 1.2%); 3% allows for another CPU's rounding. BatchNorm's division by the spread of
4 examples per device amplifies it in the gradients, so for the update we require the same
direction (cosine over 0.9; measured 0.97), not the same length.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import IMAGE_SHAPE, global_batches, relative_error, small_config

from vgg_jax.training.sections import read_config
from vgg_jax.parallel import replicate, unreplicate
from vgg_jax.training.steps import init_training, pmapped_steps

DEVICES = 2


@functools.cache
def one_step(model_name: str, dtype: str):
    """(start, state after one step, train metrics, eval sums of the new state, model) of a
    small net on 2 devices."""
    config = small_config(model=model_name, init_scheme="glorot", dtype=dtype, width=1 / 8,
                          fc_features=32)  # fmt: skip
    sections = read_config(config)
    setup, state = init_training(sections, sections.model.build(10), IMAGE_SHAPE, 10)
    start = jax.device_get(state)
    p_train_step, p_eval_step = pmapped_steps(setup)
    images, labels = next(global_batches(batch_size=8))
    batch = {
        "image": images.reshape(DEVICES, -1, *images.shape[1:]),
        "label": labels.reshape(DEVICES, -1),
    }
    replicated, metrics = p_train_step(replicate(state, jax.local_devices()[:DEVICES]), batch)
    sums = p_eval_step(replicated, batch)
    return start, unreplicate(replicated), unreplicate(metrics), unreplicate(sums), setup.model


def variables(state) -> dict:
    return {
        "params": state.params,
        **({"batch_stats": state.batch_stats} if state.batch_stats else {}),
    }


def flat(tree) -> np.ndarray:
    return np.concatenate(
        [np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)]
    )


@pytest.mark.parametrize("model_name", ["vgg11_bn", "vgg11_lrn"])
def test_bfloat16_train_and_eval_steps_match_float32(model_name):
    start16, new16, metrics16, sums16, model16 = one_step(model_name, "bfloat16")
    start32, new32, metrics32, sums32, _ = one_step(model_name, "float32")
    assert model16.dtype == jnp.bfloat16
    assert np.isfinite(metrics16["loss"]) and np.all(np.isfinite(flat(new16.params)))
    assert abs(float(metrics16["loss"]) - float(metrics32["loss"])) < 0.03 * float(
        metrics32["loss"]
    )
    update16 = flat(new16.params) - flat(start16.params)
    update32 = flat(new32.params) - flat(start32.params)
    cosine = update16 @ update32 / np.linalg.norm(update16) / np.linalg.norm(update32)
    assert cosine > 0.9, cosine
    if model_name.endswith("_bn"):
        assert relative_error(flat(new16.batch_stats), flat(new32.batch_stats)) < 0.03
        assert relative_error(flat(new16.batch_stats), flat(start16.batch_stats)) > 1e-3
    # The eval step of the new states: the same loss and the same correct answers, +-1.
    assert abs(sums16["loss"] - sums32["loss"]) < 0.03 * sums32["loss"]
    assert abs(sums16["top1_correct"] - sums32["top1_correct"]) <= 1
    assert sums16["count"] == sums32["count"] == 8


@pytest.mark.parametrize("model_name", ["vgg11_bn", "vgg11_lrn"])
@pytest.mark.parametrize("dense", [False, True])
def test_bfloat16_logits_match_float32_with_the_same_weights(model_name, dense):
    _, state, _, _, model16 = one_step(model_name, "bfloat16")
    model32 = model16.clone(dtype=jnp.float32)
    size = 64 if dense else 32  # the dense head slides FC6 over a 2x2 pool5 map
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.integers(0, 256, (8, size, size, 3)), jnp.float32) / 64 - 2
    apply = lambda model: jax.jit(lambda v, x: model.apply(v, x, dense=dense))  # noqa: E731
    logits16 = apply(model16)(variables(state), images)
    logits32 = apply(model32)(variables(state), images)
    assert logits16.dtype == jnp.float32  # logits come back in float32 whatever the compute
    assert relative_error(logits16, logits32) < 0.03
    assert relative_error(logits16, logits32) > 0  # it really computed in bfloat16
