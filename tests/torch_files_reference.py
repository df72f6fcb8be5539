"""Run as a script: .pth files written by torch.save, with what torch.load(weights_only=True)
reads back from each, for the reader that needs no PyTorch (vgg_jax.weights.torch_files). A
process of its own: importing PyTorch into a process that has loaded TensorFlow can crash it.

    python tests/torch_files_reference.py OUT_DIR [--vgg16]

For each state dict NAME: OUT_DIR/NAME.pth and, from torch.load, NAME.npz (each tensor's values,
bfloat16 as its int16 bits) and NAME.json (each tensor's dtype, shape, stride, storage offset and
storage number, in the file's order):
- vgg_{plain,bn}_{float32,float16}_{zip,legacy}: a small VGG in torchvision's layout
  (torchvision's make_layers; FC6, FC7 and FC8 at classifier.0, .3 and .6);
- vgg_plain_float32_legacy_v1: the same through torch._utils._rebuild_tensor, as torchvision's
  2017 files (the legacy format) call it; vgg_plain_float32_parameters_zip: its nn.Parameters
  (state_dict(keep_vars=True));
- views_{zip,legacy}: tensors sharing a storage at offsets, transposed, strided and expanded;
  float16, bfloat16, int64 and bool ones;
- lpips_v0.1: LPIPS's linear weights, the file the lpips package bundles (not copied: its path
  is in payloads.json);
and payload_{system,exec}_{zip,legacy}.pth, state dicts whose pickles also call os.system or
builtins.exec to create a marker file (payloads.json: the global and the marker of each).

With --vgg16: vgg16_{zip,legacy}.pth, torchvision's VGG16 (random weights) with a 16-wide
classifier for 10 classes, and in vgg16.npz its logits for a 224x224 image and the lpips
package's distances (net "vgg", v0.1) on that backbone for two 64x64 pairs.
"""

import collections
import json
import os
import pathlib
import pickle
import sys
import types

import lpips
import numpy as np
import torch
import torchvision
from lpips_reference import with_backbone

FORMATS = {"zip": True, "legacy": False}  # torch.save's _use_new_zipfile_serialization
FC_FEATURES = 16


def small_vgg_state(batch_norm: bool, dtype: torch.dtype, keep_vars: bool = False) -> dict:
    """A 2-block VGG in torchvision's layout, batch norm statistics away from 0 and 1."""
    torch.manual_seed(0)
    features = torchvision.models.vgg.make_layers([8, "M", 16, "M"], batch_norm=batch_norm)
    classifier = torch.nn.Sequential(
        torch.nn.Linear(16 * 7 * 7, 32), torch.nn.ReLU(), torch.nn.Dropout(),
        torch.nn.Linear(32, 32), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(32, 10),
    )  # fmt: skip
    model = torch.nn.Module()
    model.features, model.classifier = features, classifier
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.num_batches_tracked.fill_(7)
    return model.to(dtype).state_dict(keep_vars=keep_vars)


def views_state() -> dict:
    torch.manual_seed(1)
    base = torch.randn(6, 8)
    return collections.OrderedDict(
        base=base, transposed=base.t(), row=base[2], column=base[:, 3],
        strided=base[::2, 1::3], flat_slice=base.view(-1)[5:17],
        expanded=torch.randn(3, 1).expand(3, 4), scalar=torch.tensor(3.5),
        half=torch.randn(3, 4).half(), half_transposed=torch.randn(4, 3).half().t(),
        bfloat16=torch.randn(5).bfloat16(), long=torch.arange(4) * 10**12,
        mask=torch.tensor([True, False, True]),
    )  # fmt: skip


class V1Pickler(pickle.Pickler):
    """Pickles tensors through torch._utils._rebuild_tensor, without the v2 arguments."""

    def reducer_override(self, obj):
        if not isinstance(obj, torch.Tensor):
            return NotImplemented
        storage = torch.storage.TypedStorage(
            wrap_storage=obj.untyped_storage(), dtype=obj.dtype, _internal=True
        )
        args = (storage, obj.storage_offset(), tuple(obj.size()), obj.stride())
        return torch._utils._rebuild_tensor, args


class Payload:
    """Pickles as a call of `function` on `argument`."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def save_with_reference(state, folder: pathlib.Path, name: str, zip_format: bool, **kwargs):
    path = folder / f"{name}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format, **kwargs)
    write_reference(torch.load(path, weights_only=True), folder, name)


def write_reference(loaded: dict, folder: pathlib.Path, name: str) -> None:
    layouts, values, storages = {}, {}, {}
    for key, tensor in loaded.items():
        storage = storages.setdefault(tensor.untyped_storage().data_ptr(), len(storages))
        layouts[key] = {
            "dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape),
            "stride": list(tensor.stride()), "offset": tensor.storage_offset(),
            "storage": storage,
        }  # fmt: skip
        bits = tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor
        values[key] = bits.detach().contiguous().numpy()
    np.savez(folder / f"{name}.npz", **values)
    (folder / f"{name}.json").write_text(json.dumps(layouts))


def state_dicts(folder: pathlib.Path) -> None:
    for fmt, zip_format in FORMATS.items():
        for batch_norm in (False, True):
            for dtype in (torch.float32, torch.float16):
                name = f"vgg_{'bn' if batch_norm else 'plain'}_{str(dtype)[6:]}_{fmt}"
                save_with_reference(small_vgg_state(batch_norm, dtype), folder, name, zip_format)
        save_with_reference(views_state(), folder, f"views_{fmt}", zip_format)
    v1 = types.SimpleNamespace(__name__="v1_pickle", Pickler=V1Pickler, dump=pickle.dump)
    state = small_vgg_state(False, torch.float32)
    save_with_reference(state, folder, "vgg_plain_float32_legacy_v1", False, pickle_module=v1)
    parameters = small_vgg_state(False, torch.float32, keep_vars=True)  # nn.Parameters
    save_with_reference(parameters, folder, "vgg_plain_float32_parameters_zip", True)
    bundled = pathlib.Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth"
    lpips_state = torch.load(bundled, map_location="cpu", weights_only=True)  # saved on a GPU
    write_reference(lpips_state, folder, "lpips_v0.1")
    payloads = {"lpips_v0.1": str(bundled)}
    for kind, function in (("system", os.system), ("exec", exec)):
        for fmt, zip_format in FORMATS.items():
            name = f"payload_{kind}_{fmt}"
            marker = folder / f"{name}.ran"
            code = f"touch {marker}" if kind == "system" else f"open({str(marker)!r}, 'w').close()"
            state = collections.OrderedDict(weight=torch.ones(2), bias=Payload(function, code))
            torch.save(state, folder / f"{name}.pth", _use_new_zipfile_serialization=zip_format)
            qualified = f"{function.__module__}.{function.__name__}"  # posix.system on Linux
            payloads[name] = {"global": qualified, "marker": str(marker)}
    (folder / "payloads.json").write_text(json.dumps(payloads))


def vgg16(folder: pathlib.Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(512 * 7 * 7, FC_FEATURES), torch.nn.ReLU(), torch.nn.Dropout(),
        torch.nn.Linear(FC_FEATURES, FC_FEATURES), torch.nn.ReLU(), torch.nn.Dropout(),
        torch.nn.Linear(FC_FEATURES, 10),
    )  # fmt: skip
    model.eval()
    for fmt, zip_format in FORMATS.items():
        path = folder / f"vgg16_{fmt}.pth"
        torch.save(model.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 224, 224, 3)).astype(np.float32)
    images0, images1 = rng.uniform(-1, 1, (2, 2, 64, 64, 3)).astype(np.float32)
    nchw = lambda x: torch.from_numpy(x).permute(0, 3, 1, 2)
    metric = lpips.LPIPS(net="vgg", version="0.1", pnet_rand=True, verbose=False)
    metric = with_backbone(metric, model)
    with torch.no_grad():
        logits = model(nchw(image)).numpy()
        distances = metric(nchw(images0), nchw(images1)).numpy().reshape(-1)
    np.savez(
        folder / "vgg16.npz", image=image, logits=logits, images0=images0, images1=images1,
        distances=distances,
    )  # fmt: skip


if __name__ == "__main__":
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    state_dicts(out)
    if "--vgg16" in sys.argv[2:]:
        vgg16(out)
