"""The TPU plan: train.py's pmapped steps compiled for compile-only TPU devices. The plan speaks
for training because pmap and an explicit jax.jit(jax.shard_map(...)) over a Mesh compute the
same steps, bit for bit, and the bytes it reports are those of a compile written apart from it."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import IMAGE_SHAPE, global_batches, small_config
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vgg_jax.training import planning, steps
from vgg_jax.training.sections import read_config
from vgg_jax.training.topologies import describe

AXIS = steps.AXIS_NAME


def setup_and_state(**overrides):
    config = read_config(small_config(init_scheme="glorot", batch_size=16, **overrides))
    return steps.init_training(config, config.model.build(10), IMAGE_SHAPE, steps_per_epoch=10)


def shard_mapped_steps(setup, mesh, donate=()):
    """The per-device steps under jax.jit(jax.shard_map(...)) over `mesh`, written as the JAX
    docs write data parallelism: the state replicated (P()), the batch split (P(AXIS)).

    check_vma=False, as pmap has it: the steps average gradients with lax.pmean themselves.
    With shard_map's default check, the gradient of a replicated parameter is already summed
    over the devices (the transpose of its implicit broadcast), and the pmean on top of that
    would take steps as many times too large as there are devices."""
    train = jax.jit(
        jax.shard_map(
            functools.partial(steps.train_step, setup=setup), mesh=mesh,
            in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False,
        ),
        donate_argnums=donate,
    )  # fmt: skip
    evaluate = jax.jit(
        jax.shard_map(
            functools.partial(steps.eval_step, setup=setup), mesh=mesh,
            in_specs=(P(), P(AXIS)), out_specs=P(), check_vma=False,
        )
    )  # fmt: skip
    return train, evaluate


@pytest.mark.parametrize(
    "overrides",
    [dict(model="vgg11_bn"), dict(model="vgg11_bn", grad_accum_steps=2), dict(dtype="float16")],
    ids=["batch_norm", "grad_accum", "float16_loss_scaling"],
)
def test_pmap_and_jit_shard_map_train_and_evaluate_bit_identically(overrides):
    devices = jax.devices()[:4]
    setup, state = setup_and_state(**overrides)
    p_train, p_eval = steps.pmapped_steps(setup, devices)
    s_train, s_eval = shard_mapped_steps(setup, Mesh(np.array(devices), (AXIS,)))
    replicated = jax.tree.map(lambda leaf: np.stack([leaf] * 4), jax.device_get(state))
    shared = state
    for images, labels in global_batches(steps=3, batch_size=16):
        split = {"image": images.reshape(4, 4, *IMAGE_SHAPE), "label": labels.reshape(4, 4)}
        replicated, p_metrics = p_train(replicated, split)
        shared, s_metrics = s_train(shared, {"image": images, "label": labels})
        ours = jax.tree.map(lambda leaf: np.asarray(leaf)[0], jax.device_get(p_metrics))
        assert jax.tree.map(np.array_equal, ours, jax.device_get(s_metrics)) == jax.tree.map(
            lambda _: True, ours
        )
    eval_batch = {"image": images, "label": labels, "mask": np.ones(16, np.float32)}
    p_sums = p_eval(replicated, jax.tree.map(lambda a: a.reshape(4, 4, *a.shape[1:]), eval_batch))
    s_sums = s_eval(shared, eval_batch)
    pmapped = jax.device_get((jax.tree.map(lambda leaf: leaf[0], replicated), p_sums))
    pmapped = (pmapped[0], jax.tree.map(lambda leaf: leaf[0], pmapped[1]))
    leaves, treedef = jax.tree.flatten(pmapped)
    other, other_treedef = jax.tree.flatten(jax.device_get((shared, s_sums)))
    assert treedef == other_treedef
    unequal = [i for i, (a, b) in enumerate(zip(leaves, other)) if not np.array_equal(a, b)]
    assert unequal == [], f"{len(unequal)} of {len(leaves)} arrays differ"
    # Three steps moved the state: the equality is not that of an untouched copy.
    assert not np.array_equal(
        pmapped[0].params["conv1_1"]["kernel"], state.params["conv1_1"]["kernel"]
    )
    if setup.loss_scaling:
        assert float(pmapped[0].loss_scale.scale) == 2.0**16


NARROW = dict(model="vgg11_bn", width=1 / 8, fc_features=64, crop_size=32, dtype="auto")


@functools.cache
def narrow_plan(topology_name: str, batch_size: int):
    config = read_config(small_config(batch_size=batch_size, **NARROW))
    return planning.planner(config, describe(topology_name), 10, (32, 32, 3))


def test_the_plans_bytes_are_those_of_a_jit_shard_map_compile_written_apart():
    plan = narrow_plan("v5e:2x2", 128)
    report = planning.make_plan(plan)
    devices = np.array(plan.topology.devices)
    mesh = Mesh(devices, (AXIS,))
    train, _ = shard_mapped_steps(plan.setup, mesh, donate=(0,))
    state = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(
            leaf.shape[1:], leaf.dtype, sharding=NamedSharding(mesh, P())
        ),
        plan.state,
    )
    batch = {
        "image": jax.ShapeDtypeStruct(
            (128, 32, 32, 3), jnp.uint8, sharding=NamedSharding(mesh, P(AXIS))
        ),
        "label": jax.ShapeDtypeStruct((128,), jnp.int32, sharding=NamedSharding(mesh, P(AXIS))),
    }
    stats = train.lower(state, batch).compile().memory_analysis()
    independent = (
        stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
    )  # fmt: skip
    planned = report["train_step"]["total_bytes"]
    assert abs(planned - independent) <= 0.05 * independent, (planned, independent)
    assert (
        report["dtype"] == "bfloat16" and report["fits"] and report["flops_per_step_per_chip"] > 0
    )
