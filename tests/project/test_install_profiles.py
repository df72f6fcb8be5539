"""Install profiles and fast commands: the base install (the model, the weights, LPIPS) runs
without TensorFlow or PyTorch; a missing library of the training profile is named with the
extra that brings it; every command answers --help and argument errors before jax or
TensorFlow is imported."""

import importlib.util
import json
import sys
import tomllib
import urllib.request

import pytest
from helpers import ROOT, TESTS, run_python
from packaging.requirements import Requirement

import vgg_jax
from vgg_jax.environment import TRAINING_LIBRARIES
from vgg_jax.perceptual import linear_weights_file

HAVE_REFERENCES = all(importlib.util.find_spec(m) for m in ("torch", "torchvision", "lpips"))
HEAVY = ("jax", "flax", "orbax", "tensorflow", "tensorflow_datasets", "torch")


@pytest.mark.skipif(not HAVE_REFERENCES, reason="torch, torchvision and lpips are not installed")
def test_base_install_builds_vgg16_loads_pth_files_and_computes_lpips_without_tf_or_torch(
    tmp_path,
):
    """tests/base_install_check.py, with tensorflow, tensorflow_datasets and torch blocked:
    both .pth formats give the same variables, logits and LPIPS equal PyTorch's."""
    made = run_python(TESTS / "torch_files_reference.py", tmp_path, "--vgg16", timeout=600)
    assert made.returncode == 0, made.stderr[-3000:]
    linear = linear_weights_file(download=False)  # the file the lpips package bundles
    checked = run_python(TESTS / "base_install_check.py", tmp_path, linear, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr[-3000:]
    result = json.loads(checked.stdout.strip().splitlines()[-1])
    assert result["formats_equal"] and result["imported"] == []
    assert result["logits_relative_error"] < 1e-5 and result["lpips_relative_error"] < 1e-5


def test_a_missing_weights_reader_is_named_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)  # as where it is not installed

    def download(*args, **kwargs):
        raise AssertionError("downloaded before checking for h5py")

    monkeypatch.setattr(urllib.request, "urlopen", download)
    with pytest.raises(ImportError, match="vgg16.caffe_in1k .a Keras .h5 file. needs h5py"):
        vgg_jax.load_pretrained("vgg16.caffe_in1k", cache_dir=tmp_path)


def test_the_base_dependencies_leave_out_training_and_pytorch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {Requirement(line).name for line in project["dependencies"]}
    extras = project["optional-dependencies"]
    train = {Requirement(line).name for line in extras["train"]}
    assert not base & (train | {"torch", "torchvision", "lpips"})
    assert set(TRAINING_LIBRARIES.values()) <= train  # what the modules check for
    assert all("vgg_jax[train]" in extras[name] for name in ("test", "notebooks"))
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if line and not line.startswith("#")] == ["-e .[train]"]


# Each command as `python ARGS` would run it; sys.modules reported at exit.
REPORT_IMPORTS = (
    "import atexit, runpy, sys\n"
    f"heavy = {HEAVY!r}\n"
    "atexit.register(lambda: print('IMPORTED:', *sorted(m for m in heavy if m in sys.modules),"
    " file=sys.stderr))\n"
    "target, *sys.argv[1:] = sys.argv[1:]\n"
    "if target.endswith('.py'):\n"
    "    sys.argv[0] = target\n"
    "    runpy.run_path(target, run_name='__main__')\n"
    "else:\n"
    "    runpy.run_module(target, run_name='__main__', alter_sys=True)\n"
)
HELP = [
    ["train.py", "--help"],
    ["train.py", "--config=vgg_jax/configs/imagenet_fine_tune.py", "--help"],
    ["vgg_jax", "--help"],
    ["vgg_jax.cli.evaluate", "--help"],
    ["vgg_jax.cli.predict", "--help"],
]
ARGUMENT_ERRORS = [
    ["train.py", "--no_such_flag"],
    ["vgg_jax", "--width=wide"],
    ["vgg_jax.cli.evaluate", "--scales=big"],
    ["vgg_jax.cli.predict", "cat.jpg"],
]


@pytest.mark.parametrize("command", HELP + ARGUMENT_ERRORS, ids=" ".join)
def test_help_and_argument_errors_import_neither_jax_nor_tensorflow(command):
    result = run_python("-c", REPORT_IMPORTS, *command, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    if command in HELP:  # (absl's --help exits with 1)
        assert "usage:" in result.stdout or "flags:" in result.stdout
    else:
        assert result.returncode != 0
    imported = result.stderr.strip().splitlines()[-1]
    assert imported == "IMPORTED:", imported


def test_a_base_install_names_the_train_extra(tmp_path):
    """With TensorFlow uninstalled (None in sys.modules), the input pipeline, train.py and the
    commands say which extra to install, instead of a missing module."""
    code = (
        "import sys\n"
        "sys.modules['tensorflow'] = None\n"
        "try:\n"
        "    import vgg_jax.data.pipeline\n"
        "except ImportError as error:\n"
        "    print('pipeline:', error)\n"
        "from vgg_jax.cli.predict import main\n"
        f"print('predict returned', main([{str(tmp_path / 'cat.jpg')!r}, '--weights=x.pth']))\n"
        "import runpy\n"
        "sys.argv = ['train.py']\n"
        "runpy.run_path('train.py', run_name='__main__')\n"
    )
    result = run_python("-c", code, timeout=600)
    assert result.returncode == 1, result.stderr[-3000:]
    assert "pipeline: Training, the input pipeline" in result.stdout
    assert "predict returned 1" in result.stdout
    extra = 'pip install "vgg_jax[train]"'
    assert result.stdout.count(extra) == 1 and result.stderr.count(extra) == 2
    assert "need tensorflow-cpu, which the base install" in result.stderr
    assert "Traceback" not in result.stderr
