"""`python -m vgg_jax.cli.plan`: a narrow VGG planned for TPU slices, as a user runs it."""

import json

import pytest
from helpers import run_python

from vgg_jax.cli.plan import format_plan

NARROW = ["--config.model=vgg11_bn", "--config.width=0.125", "--config.fc_features=64",
          "--config.crop_size=64", "--num_classes=10"]  # fmt: skip
FIELDS = {
    "topology",
    "compiler_topology",
    "platform",
    "chip",
    "device_kind",
    "chips",
    "devices",
    "devices_per_chip",
    "hosts",
    "batch_split_over",
    "model",
    "image_shape",
    "dtype",
    "remat",
    "global_batch",
    "batch_per_host",
    "batch_per_chip",
    "batch_per_device",
    "micro_batches",
    "micro_batch_per_device",
    "memory_per_chip_bytes",
    "memory_source",
    "peak_source",
    "train_step",
    "eval_step",
    "fits",
    "headroom_bytes",
    "flops_per_step_per_chip",
    "flops_source",
    "peak_bf16_flops_per_chip",
    "compute_bound_images_per_second_per_chip",
    "compute_bound_images_per_second",
    "compile_seconds",
    "largest_batch_per_chip",
    "largest_batch_search",
}
STEP_FIELDS = {
    "batch_per_chip",
    "arguments_bytes",
    "outputs_bytes",
    "aliased_bytes",
    "temporaries_bytes",
    "total_bytes",
    "compiler_refusal",
    "compile_seconds",
}


def plan(*args):
    return run_python("-m", "vgg_jax.cli.plan", *NARROW, *args, timeout=600)


def test_a_four_host_slice_is_planned_with_every_field():
    result = plan("--topology=v5e-16", "--config.batch_size=256", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""  # no progress lines with --json, and none of libtpu's warnings
    report = json.loads(result.stdout)
    assert set(report) == FIELDS
    assert set(report["train_step"]) == set(report["eval_step"]) == STEP_FIELDS
    assert (report["chips"], report["devices"], report["hosts"]) == (16, 16, 4)
    assert (report["batch_per_host"], report["batch_per_chip"]) == (64, 16)
    assert report["chip"] == "TPU v5e" and report["dtype"] == "bfloat16" and report["fits"]
    train = report["train_step"]
    assert train["total_bytes"] == (
        train["arguments_bytes"] + train["outputs_bytes"] - train["aliased_bytes"]
        + train["temporaries_bytes"]
    )  # fmt: skip
    assert 0 < train["total_bytes"] < report["memory_per_chip_bytes"]
    assert report["headroom_bytes"] == report["memory_per_chip_bytes"] - train["total_bytes"]
    assert report["flops_source"] == "xla" and report["flops_per_step_per_chip"] > 0
    bound = report["peak_bf16_flops_per_chip"] * 16 / report["flops_per_step_per_chip"]
    assert report["compute_bound_images_per_second_per_chip"] == pytest.approx(bound)
    assert report["compute_bound_images_per_second"] == pytest.approx(16 * bound)


def test_a_batch_too_large_for_hbm_does_not_fit_and_a_smaller_one_is_found():
    # VGG-A on 64x64 images, 131,072 a v5e chip: the TPU compiler refuses the program in a
    # second; 32,768 fit, at 15.2 GiB. (A program that fits near the limit takes the
    # compiler half a minute: VGG16 at 224x224 takes it 50 s.)
    result = plan("--topology=v5e:2x2", "--config.model=vgg11", "--config.width=1",
                  "--config.batch_size=524288", "--largest_batch", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    refusal = report["train_step"]["compiler_refusal"]
    assert not report["fits"] and report["train_step"]["total_bytes"] is None
    assert refusal.startswith("RESOURCE_EXHAUSTED: Ran out of memory") and "(15.75G)" in refusal
    assert report["flops_source"] == "model" and report["flops_per_step_per_chip"] > 0
    largest = report["largest_batch_per_chip"]
    assert largest is not None and largest < report["batch_per_chip"]
    compiles = {c["batch_per_chip"]: c for c in report["largest_batch_search"]["compiles"]}
    assert len(compiles) <= 7
    assert compiles[largest]["total_bytes"] <= report["memory_per_chip_bytes"]
    assert compiles[2 * largest]["compiler_refusal"] is not None
    table = format_plan(report)
    assert "fits            NO: RESOURCE_EXHAUSTED: Ran out of memory on HBM" in table
    assert f"largest batch   {largest} per chip" in table


@pytest.mark.parametrize(
    "args, words",
    [(["--topology=v5litepod"], "Unknown topology 'v5litepod'"),
     (["--topology=v5e-4", "--config.batch_size=6"],
      "batch_size=6 does not split over the 4 devices of v5e-4"),
     (["--topology=v5e-4", "--config.no_such_field=1"], "unknown configuration field"),
     (["--topology=v5e-4", "--config.dtype=float16"], "float16"),
     (["--topology=h100"], 'needs JAX\'s CUDA plugin: pip install "vgg_jax[gpu-plan]"')],
)  # fmt: skip
def test_bad_input_is_one_line_and_exit_2(args, words):
    result = plan(*args)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and words in result.stderr, result.stderr
    assert result.stdout == ""


def test_without_libtpu_the_extra_is_named():
    code = (
        "import importlib.util, sys\n"
        "find_spec = importlib.util.find_spec\n"
        "importlib.util.find_spec = (\n"
        "    lambda name, *a: None if name == 'libtpu' else find_spec(name, *a)\n"
        ")\n"
        "sys.argv = ['plan', '--topology=v5e-4', '--num_classes=10', '--config.crop_size=32']\n"
        "from vgg_jax.cli.plan import main\n"
        "main()\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 2
    assert result.stderr == (
        'error: Planning for TPUs needs libtpu: pip install "vgg_jax[tpu]" (in a checkout: pip '
        'install -e ".[tpu]").\n'
    )
