"""Any vgg_jax model (a VGG, LPIPS, DISTS) with its variables as one Flax NNX module, for users
who write their training in NNX (nnx.Optimizer, nnx.jit, nnx.value_and_grad).

It is Flax's own bridge (flax.nnx.bridge.ToNNX) filled with the given variables instead of
fresh ones, so that pretrained weights go in without initialising the network first. Each
call runs the linen module's `apply` on the variables the NNX module holds: the outputs are
linen's, bit for bit.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import linen as nn
from flax import nnx
from flax.core import unfreeze
from flax.nnx import bridge


class LinenVariables(bridge.ToNNX):
    """A linen module and its variables as an NNX module: `nnx_model(images)`, with `train=`
    and the module's other arguments as in `apply`, and its methods by name
    (`nnx_model.extract_features(images, layers=["conv3_3"])`).

    Its parameters are nnx.Param and batch-norm statistics nnx.BatchStat, each a module
    attribute named after its layer (`nnx_model.conv1_1["kernel"]`). A call with train=True
    updates the batch-norm statistics in place, as an NNX BatchNorm does; dropout draws from
    the "dropout" stream of the rngs given at construction or per call."""

    def __init__(self, module: nn.Module, variables: Mapping[str, Any], rngs: nnx.Rngs | None):
        super().__init__(module, rngs=rngs)
        for name, value in bridge.variables.linen_vars_to_nnx_attrs(variables).items():
            setattr(self, name, nnx.data(value))
        self.to_nnx__has_batch_stats = "batch_stats" in variables

    def __call__(self, *args, **kwargs):
        # Linen returns new statistics only where the collection is mutable; ToNNX writes
        # what it returns back into the attributes.
        if kwargs.get("train") and self.to_nnx__has_batch_stats:
            kwargs.setdefault("mutable", ["batch_stats"])
        return super().__call__(*args, **kwargs)


def to_nnx(
    model: nn.Module, variables: Mapping[str, Any], rngs: nnx.Rngs | None = None
) -> LinenVariables:
    """`model` (any vgg_jax linen module) holding `variables` (as `model.init` or
    `load_pretrained`, `load_lpips`, `load_dists` give them) as an NNX module. `rngs` gives
    dropout its keys in training (e.g. `nnx.Rngs(dropout=0)`); a module without dropout, or
    only evaluated, needs none."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"to_nnx takes a flax.linen module, not {type(model).__name__}.")
    collections = set(variables) if isinstance(variables, Mapping) else set()
    if "params" not in collections:
        raise ValueError(
            "to_nnx takes the model's variables, a mapping with a 'params' collection (as "
            f"model.init or load_pretrained return), not one with {sorted(collections) or 'none'}."
        )
    return LinenVariables(model, unfreeze(variables), rngs)
