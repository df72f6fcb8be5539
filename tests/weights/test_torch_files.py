"""PyTorch .pth files read without PyTorch (vgg_jax.weights.torch_files): files that torch.save
wrote (tests/torch_files_reference.py, in a process of its own), both formats, read equal to
torch.load(weights_only=True) bit for bit, with its tensors' layout and shared storages; a
pickle that calls any other global is refused before it runs."""

import importlib.util
import json
import pickle
import zipfile

import numpy as np
import pytest
from helpers import TESTS, run_python

from vgg_jax import perceptual
from vgg_jax.weights import convert, pretrained, torch_files

HAVE_REFERENCES = all(importlib.util.find_spec(m) for m in ("torch", "torchvision", "lpips"))
pytestmark = pytest.mark.skipif(
    not HAVE_REFERENCES, reason="torch, torchvision and lpips (the references) are not installed"
)
STATE_DICTS = [
    f"vgg_{kind}_{dtype}_{fmt}"
    for kind in ("plain", "bn") for dtype in ("float32", "float16") for fmt in ("zip", "legacy")
] + [
    "vgg_plain_float32_legacy_v1", "vgg_plain_float32_parameters_zip", "views_zip",
    "views_legacy", "lpips_v0.1",
]  # fmt: skip
PAYLOADS = [f"payload_{kind}_{fmt}" for kind in ("system", "exec") for fmt in ("zip", "legacy")]


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    folder = tmp_path_factory.mktemp("torch_files")
    completed = run_python(TESTS / "torch_files_reference.py", folder, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return folder, json.loads((folder / "payloads.json").read_text())


def pth_file(references, name):
    folder, payloads = references
    return payloads["lpips_v0.1"] if name == "lpips_v0.1" else folder / f"{name}.pth"


def assert_same_as_torch(arrays: dict, folder, name: str) -> None:
    """Keys in torch's order; each array with torch's dtype, shape, strides and bits; arrays of
    one torch storage views of one buffer at torch's offsets, of different storages apart."""
    layouts = json.loads((folder / f"{name}.json").read_text())
    values = np.load(folder / f"{name}.npz")
    assert list(arrays) == list(layouts)
    buffer_starts = {}
    for key, layout in layouts.items():
        array = arrays[key]
        assert isinstance(array, np.ndarray), key
        assert (str(array.dtype), list(array.shape)) == (layout["dtype"], layout["shape"]), key
        assert [step // array.itemsize for step in array.strides] == layout["stride"], key
        bits = array.view(np.int16) if layout["dtype"] == "bfloat16" else array
        assert np.ascontiguousarray(bits).tobytes() == values[key].tobytes(), key
        start = array.__array_interface__["data"][0] - layout["offset"] * array.itemsize
        buffer_starts.setdefault(layout["storage"], set()).add(start)
    assert all(len(starts) == 1 for starts in buffer_starts.values())
    assert len(set().union(*buffer_starts.values())) == len(buffer_starts)


@pytest.mark.parametrize("name", STATE_DICTS)
def test_state_dicts_read_as_torch_load_reads_them(references, name):
    assert_same_as_torch(torch_files.load(pth_file(references, name)), references[0], name)


def test_the_layouts_cover_what_state_dicts_hold(references):
    """The views file does exercise offsets, shared storages, non-contiguous and 0-strides."""
    layouts = json.loads((references[0] / "views_zip.json").read_text())
    assert any(layout["offset"] > 0 for layout in layouts.values())
    assert len({layout["storage"] for layout in layouts.values()}) < len(layouts)
    assert any(0 in layout["stride"] for layout in layouts.values())
    assert {layout["dtype"] for layout in layouts.values()} >= {"float16", "bfloat16", "int64"}
    legacy_v1 = pth_file(references, "vgg_plain_float32_legacy_v1")
    assert not zipfile.is_zipfile(legacy_v1)
    pickled = legacy_v1.read_bytes()
    assert b"_rebuild_tensor\n" in pickled and b"_rebuild_tensor_v2" not in pickled
    with zipfile.ZipFile(pth_file(references, "vgg_plain_float32_parameters_zip")) as archive:
        [data] = [name for name in archive.namelist() if name.endswith("data.pkl")]
        assert b"_rebuild_parameter\n" in archive.read(data)


@pytest.mark.parametrize("name", PAYLOADS)
def test_a_pickle_calling_another_global_is_refused_before_it_runs(references, name):
    folder, payloads = references
    payload = payloads[name]
    with pytest.raises(torch_files.RefusedGlobal, match=f"global {payload['global']},"):
        torch_files.load(folder / f"{name}.pth")
    assert not (folder / f"{name}.ran").exists()
    with pytest.raises(convert.ConversionError, match=f"Refused to read .*{payload['global']}"):
        pretrained.read_arrays(folder / f"{name}.pth", "torch")
    assert not (folder / f"{name}.ran").exists()
    if name.endswith("_zip"):  # the marker shows a payload that runs: pickle's own globals do
        run_with_pickles_own_globals(folder / f"{name}.pth")
        assert (folder / f"{name}.ran").exists()


def run_with_pickles_own_globals(path) -> None:
    """Unpickles the zip file's data.pkl as pickle.load would, torch's globals stubbed out."""

    class Unpickler(pickle.Unpickler):
        def find_class(self, module, name):
            if module.startswith("torch"):
                return lambda *args: None
            return super().find_class(module, name)

        def persistent_load(self, saved_id):
            return None

    with zipfile.ZipFile(path) as archive:
        [data] = [name for name in archive.namelist() if name.endswith("data.pkl")]
        with archive.open(data) as file:
            Unpickler(file).load()


def test_lpips_linear_weights_read_equal_torchs(references):
    folder, payloads = references
    linear = perceptual.read_linear_weights(payloads["lpips_v0.1"])
    values = np.load(folder / "lpips_v0.1.npz")
    for index, layer in enumerate(perceptual.LPIPS_LAYERS):
        expected = values[f"lin{index}.model.1.weight"].reshape(-1)
        assert linear[layer].dtype == np.float32 and np.array_equal(linear[layer], expected)


def test_read_arrays_gives_float32_and_keeps_integers(references):
    """load_pretrained's path: float16 weights as float32 (exactly), BN's counter as int64."""
    folder = references[0]
    arrays = pretrained.read_arrays(folder / "vgg_bn_float16_legacy.pth", "torch")
    values = np.load(folder / "vgg_bn_float16_legacy.npz")
    assert arrays["features.0.weight"].dtype == np.float32
    assert np.array_equal(arrays["features.0.weight"], values["features.0.weight"])
    assert arrays["features.1.num_batches_tracked"].dtype == np.int64
    assert arrays["features.1.num_batches_tracked"] == 7


def test_damaged_files_are_reported(references, tmp_path):
    folder = references[0]
    for name in ("vgg_plain_float32_zip", "vgg_plain_float32_legacy"):
        data = (folder / f"{name}.pth").read_bytes()
        truncated = tmp_path / f"{name}.pth"
        truncated.write_bytes(data[: len(data) - 1000])
        with pytest.raises(convert.ConversionError, match="truncated"):
            pretrained.read_arrays(truncated, "torch")
    other = tmp_path / "notes.pth"
    other.write_bytes(b"not a PyTorch file")
    with pytest.raises(torch_files.TorchFileError, match="neither a zip archive"):
        torch_files.load(other)
