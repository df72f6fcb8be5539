"""Run as a script: what the base install (`pip install vgg_jax`, no extras) must do, with
TensorFlow, TensorFlow Datasets and PyTorch unimportable: build VGG16, load torchvision .pth
files of both formats, compute its logits and LPIPS, each against PyTorch's reference (written
beforehand by tests/torch_files_reference.py --vgg16); prints the relative errors as JSON and
fails if any of those libraries was imported. tests/project/test_install_profiles.py runs it, and so
can a fresh virtual environment with only the base install:

    python tests/base_install_check.py REFERENCE_DIR LPIPS_V0.1_VGG_PTH
"""

import importlib.abc
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "torch")


class Unimportable(importlib.abc.MetaPathFinder):
    """Makes BLOCKED (and their submodules) fail to import, as where they are not installed;
    other modules it leaves to the finders after it."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)


sys.meta_path.insert(0, Unimportable())

import json
import pathlib

import jax
import numpy as np

import vgg_jax
from vgg_jax.weights import pretrained


def relative_error(actual, expected) -> float:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.linalg.norm(actual - expected) / np.linalg.norm(expected))


def main(folder: pathlib.Path, linear_path: str) -> dict:
    reference = np.load(folder / "vgg16.npz")
    model = vgg_jax.vgg16(num_classes=10, fc_features=16)
    zip_variables = pretrained.variables_from_file(folder / "vgg16_zip.pth", model)
    legacy_variables = pretrained.variables_from_file(folder / "vgg16_legacy.pth", model)
    same = jax.tree.map(lambda a, b: bool(np.array_equal(a, b)), zip_variables, legacy_variables)
    logits = jax.jit(model.apply)(zip_variables, reference["image"])
    lpips, variables = vgg_jax.load_lpips(
        backbone=str(folder / "vgg16_legacy.pth"), linear_path=linear_path
    )
    distances = jax.jit(lpips.apply)(variables, reference["images0"], reference["images1"])
    return {
        "formats_equal": all(jax.tree.leaves(same)),
        "logits_relative_error": relative_error(logits, reference["logits"]),
        "lpips_relative_error": relative_error(distances, reference["distances"]),
        "imported": sorted(name for name in sys.modules if name.split(".")[0] in BLOCKED),
    }


if __name__ == "__main__":
    result = main(pathlib.Path(sys.argv[1]), sys.argv[2])
    print(json.dumps(result))
    good = (
        result["formats_equal"]
        and result["logits_relative_error"] < 1e-5
        and result["lpips_relative_error"] < 1e-5
        and not result["imported"]
    )
    sys.exit(0 if good else 1)
