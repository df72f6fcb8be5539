"""Pretrained ImageNet weights: a registry of the published VGG weights, loading and export.

    model, variables, preprocess = vgg_jax.load_pretrained("vgg16.tv_in1k")
    logits = model.apply(variables, preprocess(uint8_rgb_images))   # (N, 224, 224, 3)

Weights are downloaded into a cache on first use and checked against the published hash; a
local file can be given instead (`path=`), which is how to use them offline. Each entry says
which preprocessing its weights expect, and `load_pretrained` returns it as a function of uint8
RGB images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import pathlib
import shutil
import tempfile
import urllib.request
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict
from tqdm import tqdm

from vgg_jax.data.normalization import (
    CAFFE_NORMALIZATION,
    IMAGENET_NORMALIZATION,
    Normalization,
)
from vgg_jax.model.architectures import resolve_model_name
from vgg_jax.model.vgg import VGG, create_model
from vgg_jax.weights import convert, torch_files

DEFAULT_CACHE = pathlib.Path(
    os.environ.get("VGG_JAX_CACHE", pathlib.Path.home() / ".cache" / "vgg_jax")
)


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    name: str
    model: str  # a vgg_jax model name
    url: str
    file_hash: str  # hex digest, or the leading digits of one (torchvision's file names)
    hash_algorithm: str  # "sha256" or "md5"
    layout: str  # "torch" (torchvision/timm state dict) or "keras"
    preprocessing: Normalization  # what the weights expect of uint8 RGB images
    top1: float  # published ImageNet validation accuracy, single 224 centre crop, %
    top5: float

    @property
    def file_name(self) -> str:
        return self.url.rsplit("/", 1)[-1]


def _torchvision(model: str, digest: str, top1: float, top5: float) -> PretrainedWeights:
    return PretrainedWeights(
        f"{model}.tv_in1k", model, f"https://download.pytorch.org/models/{model}-{digest}.pth",
        digest, "sha256", "torch", IMAGENET_NORMALIZATION, top1, top5,
    )  # fmt: skip


def _keras(model: str, digest: str, top1: float, top5: float) -> PretrainedWeights:
    url = (
        "https://storage.googleapis.com/tensorflow/keras-applications/"
        f"{model}/{model}_weights_tf_dim_ordering_tf_kernels.h5"
    )
    return PretrainedWeights(
        f"{model}.caffe_in1k", model, url, digest, "md5", "keras", CAFFE_NORMALIZATION, top1, top5
    )


# torchvision's IMAGENET1K_V1 weights (accuracies from its model docs) and the paper's own
# Caffe weights as Keras converted them (accuracies from the Keras applications table).
WEIGHTS = {
    w.name: w
    for w in (
        _torchvision("vgg11", "8a719046", 69.020, 88.628),
        _torchvision("vgg11_bn", "6002323d", 70.370, 89.810),
        _torchvision("vgg13", "19584684", 69.928, 89.246),
        _torchvision("vgg13_bn", "abd245e5", 71.586, 90.374),
        _torchvision("vgg16", "397923af", 71.592, 90.382),
        _torchvision("vgg16_bn", "6c64b313", 73.360, 91.516),
        _torchvision("vgg19", "dcbb9e9d", 72.376, 90.876),
        _torchvision("vgg19_bn", "c79401a0", 74.218, 91.842),
        _keras("vgg16", "64373286793e3c8b2b4e3219cbf3544b", 71.3, 90.1),
        _keras("vgg19", "cbe5617147190e668d6c5d5026f83318", 71.3, 90.0),
    )
}


def file_digest(path: pathlib.Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_hash(path: pathlib.Path, weights: PretrainedWeights) -> None:
    digest = file_digest(path, weights.hash_algorithm)
    if not digest.startswith(weights.file_hash):
        raise ValueError(
            f"{path} is not the file of {weights.name}: its {weights.hash_algorithm} is "
            f"{digest}, expected one starting {weights.file_hash}. Delete it and download "
            f"{weights.url} again."
        )


def weights_file(
    weights: PretrainedWeights, path=None, cache_dir=None, download: bool = True
) -> pathlib.Path:
    """The checked local file of `weights`: `path`, else the cache, else downloaded into it."""
    if path is not None:
        path = pathlib.Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No weights file at {path}.")
        check_hash(path, weights)
        return path
    cached = pathlib.Path(cache_dir or DEFAULT_CACHE) / weights.file_name
    if cached.is_file():
        check_hash(cached, weights)
        return cached
    if not download:
        raise FileNotFoundError(_fetch_by_hand(weights, cached, "downloading was turned off"))
    cached.parent.mkdir(parents=True, exist_ok=True)
    print(f"Downloading {weights.url} to {cached} ...", flush=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, delete=False) as partial:
        try:
            with urllib.request.urlopen(weights.url, timeout=60) as response:
                size = int(response.headers.get("Content-Length") or 0) or None
                bar = dict(total=size, desc=weights.file_name, unit="B", unit_scale=True)
                with tqdm.wrapattr(partial, "write", unit_divisor=1024, **bar) as progress:
                    shutil.copyfileobj(response, progress)
        except OSError as error:
            os.unlink(partial.name)
            raise FileNotFoundError(_fetch_by_hand(weights, cached, str(error))) from error
    try:
        check_hash(pathlib.Path(partial.name), weights)
    except ValueError:
        os.unlink(partial.name)
        raise
    os.replace(partial.name, cached)  # only a whole, checked file ever has the cached name
    return cached


def _fetch_by_hand(weights: PretrainedWeights, cached: pathlib.Path, why: str) -> str:
    hint = getattr(weights, "load_hint", f"load_pretrained({weights.name!r}, path=...)")
    return (
        f"Could not get the weights {weights.name} ({why}). Download {weights.url} on a machine "
        f"with internet and put it at {cached}, or pass its path: {hint}."
    )


def read_arrays(path: pathlib.Path, layout: str) -> dict:
    """A weights file as NumPy arrays: {tensor name: array} for PyTorch layouts,
    {layer name: [kernel, bias]} for Keras h5 files."""
    suffix = path.suffix.lower()
    try:
        if layout == "keras" or suffix == ".h5":
            return _read_keras_h5(path)
        if suffix == ".safetensors":
            return _read_safetensors(path)
        return _read_torch(path)
    except torch_files.RefusedGlobal as error:
        raise convert.ConversionError(f"Refused to read {path}: {error}") from None
    except (OSError, EOFError, KeyError, torch_files.TorchFileError) as error:
        raise _unreadable(path, error) from error


def _unreadable(path: pathlib.Path, error: Exception) -> convert.ConversionError:
    return convert.ConversionError(
        f"Could not read {path} ({type(error).__name__}: {error}); the file may be "
        f"truncated: download it again."
    )


def _read_safetensors(path: pathlib.Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise _unreadable(path, error) from error


def _read_torch(path: pathlib.Path) -> dict:
    """A PyTorch state dict's arrays, floats as float32, read without PyTorch (torch_files)."""
    state = torch_files.load(path)
    if not isinstance(state, dict) or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise convert.ConversionError(
            f"{path.name} holds a {type(state).__name__} that is not a state dict of tensors "
            f"({{name: tensor}}), as torchvision's and timm's weight files are."
        )
    return {str(key): _native(value) for key, value in state.items()}


def _native(array: np.ndarray) -> np.ndarray:
    """Floats of any width as float32 (what the conversion computes in), integers as they are,
    both in the machine's byte order."""
    if array.dtype.kind in "biu":
        return array.astype(array.dtype.newbyteorder("="))
    return array.astype(np.float32)


def _read_keras_h5(path: pathlib.Path) -> dict:
    import h5py

    with h5py.File(path, "r") as file:
        root = file["model_weights"] if "model_weights" in file else file
        layers = {}
        for name in _decoded(root.attrs.get("layer_names", list(root.keys()))):
            group = root[name]
            weight_names = _decoded(group.attrs.get("weight_names", []))
            if weight_names:
                layers[name] = [np.asarray(group[weight]) for weight in weight_names]
        return layers


def _decoded(names) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def converted_variables(
    path, config: str, batch_norm: bool, layout: str | None = None
) -> tuple[dict, str]:
    """(vgg_jax variables as NumPy arrays, the file's layout) of configuration `config` from a
    weights file; a ConversionError where the file is not weights, or not of that network."""
    path = pathlib.Path(path)
    layout = layout or ("keras" if path.suffix.lower() == ".h5" else "torch")
    arrays = read_arrays(path, layout)
    if layout == "keras":
        return convert.from_keras(arrays, config), layout
    return convert.from_torch(arrays, config, batch_norm), layout


def variables_from_file(path, model: VGG, layout: str | None = None) -> dict:
    """vgg_jax variables for `model` from a weights file (.pth, .safetensors or Keras .h5)."""
    variables, _ = converted_variables(path, model.config, model.batch_norm, layout)
    check_shapes(variables, model)
    return jax.tree.map(jnp.asarray, variables)


def model_from_file(
    path, model_name: str, layout: str | None = None, **model_kwargs
) -> tuple[VGG, dict, Callable]:
    """(model, variables, preprocess) from a weights file of any number of classes and FC
    width: the model is `model_name` ("vgg16", "vgg16_bn", ...) sized to the file; torchvision's
    preprocessing for PyTorch layouts, the Caffe one for Keras h5 files."""
    config, batch_norm = resolve_model_name(model_name)
    variables, layout = converted_variables(path, config, batch_norm, layout)
    params = variables["params"]
    num_classes = int(params["fc8"]["kernel"].shape[-1])
    model_kwargs.setdefault("fc_features", int(params["fc7"]["kernel"].shape[-1]))
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    check_shapes(variables, model)
    preprocess = CAFFE_NORMALIZATION if layout == "keras" else IMAGENET_NORMALIZATION
    return model, jax.tree.map(jnp.asarray, variables), preprocess


def check_shapes(variables: dict, model: VGG) -> None:
    """Every converted array must have the shape `model` gives it."""
    fc6 = variables["params"]["fc6"]["kernel"].shape
    image = jax.ShapeDtypeStruct((1, 32 * fc6[0], 32 * fc6[1], model.in_channels), jnp.float32)
    expected = flatten_dict(jax.eval_shape(model.init, jax.random.key(0), image), sep="/")
    got = flatten_dict(variables, sep="/")
    for name, leaf in expected.items():
        shape = tuple(got[name].shape) if name in got else None
        if shape != tuple(leaf.shape):
            raise convert.ConversionError(
                f"The weights give {name} the shape {shape}, while {model.config} with these "
                f"settings needs {tuple(leaf.shape)}."
            )


def load_pretrained(
    name: str, path=None, cache_dir=None, download: bool = True, **model_kwargs
) -> tuple[VGG, dict, Callable]:
    """(model, variables, preprocess) for the named weights; see WEIGHTS for the names."""
    if name not in WEIGHTS:
        raise ValueError(
            f"Unknown pretrained weights {name!r}; choose one of {', '.join(WEIGHTS)}."
        )
    weights = WEIGHTS[name]
    model = create_model(weights.model, num_classes=1000, **model_kwargs)
    if weights.layout == "keras" and importlib.util.find_spec("h5py") is None:
        # Said before a download of hundreds of MB, not after it.
        raise ImportError(f"Reading {name} (a Keras .h5 file) needs h5py: pip install h5py.")
    file = weights_file(weights, path, cache_dir, download)
    return model, variables_from_file(file, model, weights.layout), weights.preprocessing


def export_torch_state_dict(variables: dict, model: VGG) -> dict[str, np.ndarray]:
    """torchvision state-dict arrays of `variables` (load with torch.from_numpy per tensor)."""
    return convert.to_torch(jax.device_get(variables), model.config, model.batch_norm)


def save_safetensors(variables: dict, model: VGG, path) -> None:
    """Writes the variables as a torchvision-layout .safetensors file (no PyTorch needed)."""
    from safetensors.numpy import save_file

    arrays = export_torch_state_dict(variables, model)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path))
