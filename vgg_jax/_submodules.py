"""Submodules as attributes on first use (PEP 562), for vgg_jax and its subpackages: after
`import vgg_jax` alone, `vgg_jax.evaluation.protocols.center_crop` works as it did when
vgg_jax imported its modules eagerly, while the import itself stays light."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable


def submodule_loader(package: str) -> Callable[[str], object]:
    """A module __getattr__ for `package` that imports its submodule `name` when asked."""

    def __getattr__(name: str):
        if not name.startswith("__") and importlib.util.find_spec(f"{package}.{name}"):
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
