"""benchmarks/: the throughput benchmark runs end to end on CPU, and its speed variants compute
the same function as the library's layers."""

import importlib.util
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
from flax import linen as nn
from helpers import ROOT, run_python

from benchmarks import jax_speed, mutation, throughput, variants


def _weighted_grad(function, x, weights):
    return jax.grad(lambda x: jnp.sum(function(x) * weights))(x)


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 4)])
def test_reshape_max_pool_equals_flax_max_pool_values_and_gradients(shape):
    x = jax.random.normal(jax.random.key(0), shape)  # no ties: one maximum per window

    def reference(x):
        return nn.max_pool(x, (2, 2), strides=(2, 2))

    np.testing.assert_array_equal(variants.reshape_max_pool(x), reference(x))
    weights = jax.random.normal(jax.random.key(1), reference(x).shape)
    np.testing.assert_array_equal(
        _weighted_grad(variants.reshape_max_pool, x, weights), _weighted_grad(reference, x, weights)
    )


def test_relu_output_mask_equals_relu_values_and_gradients():
    x = jax.random.normal(jax.random.key(2), (64,))
    np.testing.assert_array_equal(variants.relu_output_mask(x), jax.nn.relu(x))
    np.testing.assert_array_equal(
        _weighted_grad(variants.relu_output_mask, x, x), _weighted_grad(jax.nn.relu, x, x)
    )


def test_max_batch_is_extrapolated_from_the_peaks_at_two_batch_sizes():
    rows = [{"batch": 128, "peak_bytes": 10 * 2**30}, {"batch": 256, "peak_bytes": 18 * 2**30}]
    estimate = jax_speed.estimate_max_batch(rows, limit=100 * 2**30)
    # 8 GiB per 128 images over 2 GiB fixed: (100 - 2) / (8 / 128) = 1568 images.
    assert estimate["estimated"] == 1568
    assert estimate["fixed_bytes"] == 2 * 2**30
    assert jax_speed.estimate_max_batch(rows[:1], limit=100 * 2**30) is None
    assert jax_speed.estimate_max_batch(rows, limit=None) is None


def test_training_flops_and_device_peaks():
    from vgg_jax import vgg16
    from vgg_jax.model.costs import training_flops_per_image
    from vgg_jax.training.accelerators import peak_bf16_flops

    # The "about 93 GFLOP per image": 3 x 2 x 15.470 G multiply-accumulates.
    flops = training_flops_per_image(vgg16(), (224, 224, 3))
    assert round(flops / 1e9, 1) == 92.8
    assert peak_bf16_flops("NVIDIA H200") == peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("TPU v5 lite") == 197e12
    assert peak_bf16_flops("TPU v5") == 459e12  # v5p: v5e's "TPU v5 lite" matched first
    assert peak_bf16_flops("TPU v3") == 123e12 / 2  # a device is one of a chip's two cores
    assert peak_bf16_flops("cpu") is None


def test_bad_arguments_are_refused_with_the_choices():
    with pytest.raises(SystemExit, match="whole numbers"):
        throughput.parse_args(["--train-batch-sizes", "64,big"])
    with pytest.raises(SystemExit):
        throughput.parse_args(["--variants", "fastest"])


def test_benchmark_runs_on_cpu_and_reports_every_row(tmp_path):
    out = tmp_path / "results"
    command = [
        "-m", "benchmarks.throughput", "--small", "--model", "vgg11",
        "--width", "0.0625",
        "--train-batch-sizes", "2", "--inference-batch-sizes", "2", "--steps", "1",
        "--repeats", "2", "--variants", "reshape_pool", "--torch", "none", "--out", str(out),
    ]  # fmt: skip
    completed = run_python(*command, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    rows = results["report"]
    kinds = {(row["framework"], row.get("variant", ""), row["mode"], row["batch"]) for row in rows}
    assert {
        ("vgg_jax", "", "train", 2),
        ("vgg_jax", "", "inference", 2),
        ("vgg_jax", "reshape_pool", "train", 2),
        ("vgg_jax", "reshape_pool", "inference", 2),
    } <= kinds
    for row in rows:
        rate = row["images_per_second"]
        assert 0 < rate["min"] <= rate["median"] <= rate["max"]
        assert row["tflops"] > 0
    assert results["sections"]["jax"]["matmul"]["tflops"]["median"] > 0
    first_steps = [row["seconds_to_first_step"] for row in rows if row["mode"] == "train"]
    assert all(seconds > 0 for seconds in first_steps)
    assert "torch" not in results["sections"]  # --torch none (the torch section is GPU work)
    table = (out / "results.md").read_text()
    assert "| vgg_jax | reshape_pool | train | 2 |" in table
    assert table == completed.stdout


def test_input_pipeline_benchmark_compares_torchvision_on_a_size_mix(tmp_path):
    command = [
        "-m", "benchmarks.input_pipeline", "--images", "40",
        "--size-mix", "--batch-size", "8", "--batches", "2", "--cores", "1",
        "--augmentations", "paper", "--compare-torch", "--dir", str(tmp_path / "jpegs"),
        "--json", str(tmp_path / "rates.json"),
    ]  # fmt: skip
    completed = run_python(*command)
    assert completed.returncode == 0, completed.stderr[-3000:]
    files = list((tmp_path / "jpegs" / "train").glob("*/*.jpg"))
    sides = [max(PIL.Image.open(f).size) for f in files]
    assert len(files) == 40 and min(sides) <= 300 and max(sides) >= 1000  # small and large
    rates = json.loads((tmp_path / "rates.json").read_text())
    assert [r["pipeline"] for r in rates] == [
        "vgg_jax", "torch_decode_jpeg", "torch_pil", "vgg_jax_eval"
    ]  # fmt: skip
    assert all(r["cores"] == 1 and r["images_per_second"] > 0 for r in rates)
    assert re.search(r"paper, 1 cores: vgg_jax is [\d.]+x the faster torchvision pipeline \(torch_",
                     completed.stdout)  # fmt: skip


@pytest.mark.skipif(
    not all(importlib.util.find_spec(m) for m in ("lpips", "DISTS_pytorch")),
    reason="the lpips or the DISTS-pytorch package is not installed",
)
def test_lpips_benchmark_times_both_implementations_and_prints_the_ratios(tmp_path):
    command = [
        "-m", "benchmarks.lpips_speed", "--size", "32",
        "--batch", "1", "--steps", "1", "--repeats", "1", "--json", str(tmp_path / "lpips.json"),
    ]  # fmt: skip
    completed = run_python(*command, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "lpips.json").read_text())
    assert set(results["pairs_per_second"]) == {
        "vgg_jax forward", "vgg_jax forward+backward", "VGG16 to conv5_3 alone (2 images a pair)",
        "lpips forward", "lpips forward+backward", "vgg_jax DISTS forward",
        "vgg_jax DISTS forward+backward", "DISTS_pytorch forward", "DISTS_pytorch forward+backward",
    }  # fmt: skip
    assert all(rate["median"] > 0 for rate in results["pairs_per_second"].values())
    assert set(results["ratios"]) == {
        "vgg_jax forward / backbone floor", "vgg_jax / lpips, forward",
        "vgg_jax / lpips, forward+backward", "vgg_jax / DISTS_pytorch, forward",
        "vgg_jax / DISTS_pytorch, forward+backward",
    }  # fmt: skip
    assert "vgg_jax / lpips, forward" in completed.stdout and "host cores:" in completed.stdout
    # Where the lpips package is missing (the GPU image), the vgg_jax rows alone.
    alone = run_python(*command, "--skip-torch", timeout=600)
    assert alone.returncode == 0, alone.stderr[-3000:]
    assert "lpips forward" not in alone.stdout and "vgg_jax forward+backward" in alone.stdout


@pytest.mark.skipif(
    importlib.util.find_spec("lpips") is None, reason="the lpips package is not installed"
)
def test_lpips_backward_breakdown_prints_every_section_with_positive_figures(tmp_path):
    command = ["-m", "benchmarks.lpips_backward", "--quick",
               "--json", tmp_path / "backward.json"]  # fmt: skip
    completed = run_python(*command)
    assert completed.returncode == 0, completed.stderr[-3000:]
    for section in ("a. VGG16's convolutions alone", "b. max pooling", "c. LPIPS forward"):
        assert section in completed.stdout, completed.stdout
    results = json.loads((tmp_path / "backward.json").read_text())
    assert len(results["convolutions"]) == 13  # conv1_1 ... conv5_3
    figures = [f for row in results["convolutions"].values() for f in row.values()]
    figures += [*results["pooling"].values(), *results["whole graph"]["wall seconds"].values()]
    assert len(figures) == 13 * 4 + 2 + 2 and all(f["median"] > 0 for f in figures)
    profiles = results["whole graph"]["profile ms"]
    for side in ("jax", "torch"):  # both profiles found their convolutions
        assert profiles[side]["convolution forward"]["median"] > 0, profiles
        assert profiles[side]["convolution input-gradient"]["median"] > 0, profiles
    facts = results["whole graph"]["facts"]
    assert facts["weight-gradient convolutions"] == []  # the gradient is the image's alone
    assert set(facts["input-gradient convolutions"]) == {1}  # the first image's pass only
    assert facts["per-op events"] > 0


def test_train_step_breakdown_finds_every_kind_of_convolution_on_both_sides(tmp_path):
    completed = run_python("-m", "benchmarks.train_step_breakdown", "--quick",
                           "--json", tmp_path / "step.json")  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads((tmp_path / "step.json").read_text())
    assert len(results["wall seconds"]) == 3
    assert all(figure["median"] > 0 for figure in results["wall seconds"].values())
    profiles = results["profile ms"]
    for setting in ("vgg_jax, no YNNPACK fusions", "vgg_jax, YNNPACK convolutions"):
        for kind in ("forward", "input-gradient", "weight-gradient"):
            assert profiles[setting][f"convolution {kind}"]["median"] > 0, (setting, kind)
    torch = profiles["torchvision, channels_last"]
    assert torch["convolution forward"]["median"] > 0
    assert torch["convolution backward (both gradients)"]["median"] > 0
    assert "sum of the groups" in completed.stdout


def test_every_listed_mutant_applies_to_the_tree_and_answers_to_existing_tests():
    """benchmarks/mutation.py's bugs still fit the code (each text once in its module) and
    each module's tests exist: a rewrite that leaves a mutant stale fails here, not silently."""
    stale = [f"{m.module}: {m.bug}" for m in mutation.MUTANTS if mutation.check_applies(ROOT, m)]
    assert not stale, stale
    for module, tests in mutation.TESTS.items():
        assert (ROOT / module).is_file(), module
        assert all((ROOT / test.split("::")[0]).is_file() for test in tests), tests
    assert {m.module for m in mutation.MUTANTS} == set(mutation.TESTS)
