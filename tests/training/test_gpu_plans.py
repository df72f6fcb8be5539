"""Plans for GPUs, compiled by XLA's GPU compiler for cards it does not see. They need JAX's CUDA
plugin (the gpu-plan extra), which the test install leaves out: where it prints its start-up
messages, the console of every other test would not be clean. CI installs it in a step of its
own and runs this file with VGG_JAX_GPU_PLANS=required, where a missing plugin fails."""

import os

import pytest

from vgg_jax.configs import imagenet_vgg16
from vgg_jax.environment import importable
from vgg_jax.training import planning
from vgg_jax.training.sections import read_config
from vgg_jax.training.topologies import describe

if not importable("jax_plugins.xla_cuda12"):
    if os.environ.get("VGG_JAX_GPU_PLANS") == "required":
        raise RuntimeError("VGG_JAX_GPU_PLANS=required, and JAX's CUDA plugin is not installed")
    pytest.skip(
        "JAX's CUDA plugin is not installed (pip install -e '.[gpu-plan]')", allow_module_level=True
    )


@pytest.fixture(scope="module", autouse=True)
def cpu_backend_only():
    """As the plan command does: the plugin, with no GPU here, must not start."""
    import jax

    jax.config.update("jax_platforms", "cpu")


def vgg16_plan(gpu: str, **overrides):
    config = imagenet_vgg16.get_config()
    config.update(overrides)
    return planning.planner(read_config(config), describe(gpu), 1000, (224, 224, 3))


@pytest.mark.parametrize("gpu", sorted(imagenet_vgg16.ONE_GPU))
def test_the_one_gpu_accumulation_of_the_imagenet_recipe_fits_and_is_needed(gpu):
    steps = imagenet_vgg16.ONE_GPU[gpu]
    plan = vgg16_plan(gpu, grad_accum_steps=steps)
    memory = plan.topology.memory_per_device
    assert plan.train(256).fits(memory)
    if steps > 1:
        assert not vgg16_plan(gpu, grad_accum_steps=steps // 2).train(256).fits(memory)


def test_gpus_are_planned_with_their_dtype_memory_and_the_models_flop_count():
    t4 = vgg16_plan("t4", batch_size=64)
    assert t4.setup.model.dtype.__name__ == "float16" and t4.setup.loss_scaling
    report = planning.make_plan(vgg16_plan("h100x2", batch_size=256))
    assert (report["platform"], report["devices"], report["hosts"]) == ("gpu", 2, 1)
    assert report["dtype"] == "bfloat16" and report["fits"]
    assert report["memory_per_chip_bytes"] == int(0.75 * 81559 * 2**20)
    # XLA gives no cost analysis for GPUs: the model's count, 3 x 2 x 15.47 GMAC an image.
    assert report["flops_source"] == "model"
    assert report["flops_per_step_per_chip"] == pytest.approx(128 * 92.8e9, rel=1e-3)
    assert 0 < report["train_step"]["total_bytes"] < report["memory_per_chip_bytes"]
