"""PyTorch state dicts (`.pth` files) read with the standard library and NumPy, no PyTorch.

    state_dict = load("vgg16-397923af.pth")     # {name: np.ndarray}, as torch.load gives tensors

Two containers. The zip archive `torch.save` writes since PyTorch 1.6: `<name>/data.pkl` holds
the pickled state dict, `<name>/data/<key>` each storage's bytes, `<name>/byteorder` their byte
order. And the legacy stream before it, in which torchvision's 2017 VGG files were saved: five
pickles one after another (a magic number, the protocol version, the saver's byte order and
type sizes, the state dict, the list of storage keys), then each storage's bytes, in that
order, after its length in elements as an 8-byte integer.

In both, the state dict's pickle names each tensor's storage by a persistent id and rebuilds
the tensor by calling torch._utils._rebuild_tensor (v1 in the 2017 files, v2 since). The
unpickler here resolves only those globals, the storage types and collections.OrderedDict, each
to a function or marker of this module that builds NumPy views on the storage: nothing the file
names is imported or called, and any other global (os.system, builtins.eval, a class of the
saver's code) is refused before anything runs, with an error naming it. Shared storages and
storage offsets are kept as torch.load keeps them: tensors of one storage are views of one
buffer.
"""

from __future__ import annotations

import _compat_pickle
import collections
import dataclasses
import os
import pickle
import struct
import zipfile

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy file
PROTOCOL_VERSION = 1001

# torch's storage types (the dtypes of a state dict's tensors), as NumPy dtypes without a byte
# order; BFloat16 needs ml_dtypes (which jax installs).
STORAGE_DTYPES = {
    "DoubleStorage": "f8",
    "FloatStorage": "f4",
    "HalfStorage": "f2",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "i8",
    "IntStorage": "i4",
    "ShortStorage": "i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "b1",
}


class TorchFileError(ValueError):
    """A file that is not a PyTorch state dict this reader can read."""


class RefusedGlobal(TorchFileError, pickle.UnpicklingError):
    """The pickle names a global (a function or class) that a state dict does not need."""


def _storage_dtype(name: str, byte_order: str) -> np.dtype:
    kind = STORAGE_DTYPES[name]
    if kind == "bfloat16":
        import ml_dtypes

        dtype = np.dtype(ml_dtypes.bfloat16)
    else:
        dtype = np.dtype(kind)
    return dtype.newbyteorder(byte_order) if dtype.itemsize > 1 else dtype


class _Unbuildable:
    """Objects of this module that a pickle's BUILD opcode may not alter."""

    def __setstate__(self, state):
        raise TorchFileError(f"the pickle tries to set the state of a {type(self).__name__}.")


@dataclasses.dataclass(frozen=True)
class _StorageType(_Unbuildable):
    name: str  # "FloatStorage", ...


@dataclasses.dataclass(frozen=True)
class _Storage(_Unbuildable):
    """A storage's elements: a 1-D array, filled once its bytes are read."""

    array: np.ndarray


def _rebuild_tensor(storage, storage_offset, size, stride) -> np.ndarray:
    """torch._utils._rebuild_tensor: the strided view of `storage` a tensor is, checked to lie
    inside it."""
    if not isinstance(storage, _Storage):
        raise TorchFileError(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage.")
    try:
        offset, size, stride = int(storage_offset), tuple(map(int, size)), tuple(map(int, stride))
    except (TypeError, ValueError):
        raise TorchFileError(
            f"a tensor has offset {storage_offset!r}, size {size!r} and stride {stride!r}; "
            f"expected integers."
        ) from None
    elements = storage.array.size
    if len(size) != len(stride) or min((offset, *size, *stride)) < 0:
        raise TorchFileError(f"a tensor has size {size} and stride {stride} at offset {offset}.")
    if 0 in size:
        return np.empty(size, storage.array.dtype)
    last = offset + sum((n - 1) * step for n, step in zip(size, stride))
    if last >= elements:
        raise TorchFileError(
            f"a tensor of size {size}, stride {stride} at offset {offset} reaches element "
            f"{last} of a storage of {elements}."
        )
    itemsize = storage.array.itemsize
    return np.lib.stride_tricks.as_strided(
        storage.array[offset:], size, tuple(step * itemsize for step in stride)
    )


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None
) -> np.ndarray:
    if metadata:  # conjugate or negative-view bits: not in a state dict of real weights
        raise TorchFileError(f"a tensor carries metadata {metadata!r}, which this reader ignores.")
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad, backward_hooks) -> np.ndarray:
    """A state dict saved with keep_vars=True holds nn.Parameters: their data."""
    if not isinstance(data, np.ndarray):
        raise TorchFileError(f"a parameter wraps a {type(data).__name__}, not a tensor.")
    return data


ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _StateDictUnpickler(pickle.Unpickler):
    """Resolves the allowed globals to this module's stand-ins and storages through
    `storage_of(storage type name, key, element count, view)`."""

    def __init__(self, file, storage_of=None):
        super().__init__(file)
        self._storage_of = storage_of

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED_GLOBALS:
            return ALLOWED_GLOBALS[(module, name)]
        # Protocol 2 writes Python 2's names (__builtin__.exec): the error gives Python 3's.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        raise RefusedGlobal(
            f"its pickle calls for the global {module}.{name}, which a state dict of tensors "
            f"does not need; it was not imported, and nothing in the file ran "
            f"(torch.load(weights_only=False) would run it: use that only on trusted files)."
        )

    def persistent_load(self, saved_id):
        # ("storage", type, key, location, numel) in zip files, and a sixth item in legacy
        # ones: (view key, offset, numel) where the storage is a slice of another, else None.
        if (
            self._storage_of is None
            or not isinstance(saved_id, tuple)
            or len(saved_id) not in (5, 6)
            or saved_id[0] != "storage"
            or not isinstance(saved_id[1], _StorageType)
            or not isinstance(saved_id[4], int)
        ):
            raise TorchFileError(f"unexpected persistent id {saved_id!r} in the pickle.")
        view = saved_id[5] if len(saved_id) == 6 else None
        return self._storage_of(saved_id[1].name, str(saved_id[2]), saved_id[4], view)


def load(path) -> object:
    """The object a .pth file holds (a state dict: {name: np.ndarray}), read without PyTorch.
    Raises TorchFileError for a file this reader cannot read, RefusedGlobal (naming it) for a
    pickle that calls for anything but tensors."""
    path = os.fspath(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as file:
            return _load_legacy(file, os.fstat(file.fileno()).st_size)
    except TorchFileError:
        raise
    # What a damaged file, or a pickle that is not a state dict, fails with along the way.
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError,
            IndexError, KeyError, struct.error) as error:  # fmt: skip
        raise TorchFileError(
            f"the file is damaged or not a state dict ({type(error).__name__}: {error})."
        ) from error


def _load_zip(path: str) -> object:
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith("data.pkl")]
        if len(pickles) != 1:
            raise TorchFileError(f"{path} is a zip file with {len(pickles)} data.pkl records.")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        order = "little"
        if f"{prefix}byteorder" in names:
            order = archive.read(f"{prefix}byteorder").decode("ascii", "replace")
        if order not in ("little", "big"):
            raise TorchFileError(f"{path} gives the byte order {order!r}.")
        storages = {}

        def storage_of(type_name: str, key: str, numel: int, view) -> _Storage:
            if key not in storages:
                dtype = _storage_dtype(type_name, "<" if order == "little" else ">")
                record = f"{prefix}data/{key}"
                if record not in names:
                    raise TorchFileError(f"{path} has no record {record} for a tensor's data.")
                size = archive.getinfo(record).file_size
                if size != numel * dtype.itemsize:
                    raise TorchFileError(
                        f"{record} in {path} holds {size} bytes; {numel} elements of "
                        f"{type_name} need {numel * dtype.itemsize}."
                    )
                storages[key] = _Storage(np.empty(numel, dtype))
                with archive.open(record) as file:
                    _read_into(file, storages[key].array, record)
            return storages[key]

        with archive.open(pickles[0]) as file:
            return _StateDictUnpickler(file, storage_of).load()


def _load_legacy(file, file_size: int) -> object:
    header = _StateDictUnpickler(file)
    try:
        magic = header.load()
    except RefusedGlobal:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, IndexError, KeyError):
        magic = None
    if magic != MAGIC_NUMBER:
        raise TorchFileError(
            "the file is neither a zip archive nor the pickle stream of torch.save (no magic "
            "number); the tar archives of PyTorch's first releases are not read."
        )
    if header.load() != PROTOCOL_VERSION:
        raise TorchFileError("the file is of an unknown PyTorch protocol version.")
    system = header.load()
    order = "<" if not isinstance(system, dict) or system.get("little_endian", True) else ">"
    storages, sizes = {}, {}

    def storage_of(type_name: str, key: str, numel: int, view) -> _Storage:
        if key not in storages:  # allocated now, filled once the pickle is read (below)
            dtype = _storage_dtype(type_name, order)
            if numel < 0 or numel * dtype.itemsize > file_size:
                raise TorchFileError(f"a storage of {numel} elements is larger than the file.")
            storages[key] = _Storage(np.empty(numel, dtype))
            sizes[key] = numel
        if view is None:
            return storages[key]
        _, offset, view_numel = (
            view  # (view key, offset, numel): a slice of the storage, from PyTorch < 1.0
        )
        if not 0 <= offset <= offset + view_numel <= sizes[key]:
            raise TorchFileError(f"a storage view [{offset}, +{view_numel}) leaves its storage.")
        return _Storage(storages[key].array[offset : offset + view_numel])

    result = _StateDictUnpickler(file, storage_of).load()
    keys = _StateDictUnpickler(file).load()
    if not isinstance(keys, list) or set(map(str, keys)) != set(storages):
        raise TorchFileError("the file's list of storages does not match its tensors.")
    for key in map(str, keys):
        array = storages[key].array
        (numel,) = struct.unpack(f"{order}q", _read_exactly(file, 8, key))
        if numel != sizes[key]:
            raise TorchFileError(
                f"storage {key} holds {numel} elements; its tensors use {sizes[key]}."
            )
        _read_into(file, array, f"storage {key}")
    return result


def _read_into(file, array: np.ndarray, what: str) -> None:
    """Fills `array` with the file's next bytes, in place (a storage can be 400 MB)."""
    view, done = memoryview(array.view(np.uint8)), 0
    while done < array.nbytes:
        count = file.readinto(view[done:])
        if not count:
            raise TorchFileError(f"the file ends inside {what}: it is truncated.")
        done += count


def _read_exactly(file, size: int, key: str) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise TorchFileError(f"the file ends before storage {key}: it is truncated.")
    return data
