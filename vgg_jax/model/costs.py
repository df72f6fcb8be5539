"""What a VGG model costs: output shapes, parameters and multiply-accumulates per layer, and
training FLOPs per image.

Everything is read off the model itself with jax.eval_shape, so even VGG19 at 224x224 costs no
computation. `python -m vgg_jax vgg16` prints the table.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from vgg_jax.model.architectures import feature_names
from vgg_jax.model.vgg import VGG


@dataclasses.dataclass(frozen=True)
class LayerRow:
    name: str
    output_shape: tuple[int, ...]  # one example's, without the batch axis
    params: int
    macs: int  # multiply-accumulates for one example


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or of jax.ShapeDtypeStruct)."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def layer_table(model: VGG, image_size: int | tuple[int, int] = 224) -> list[LayerRow]:
    """One row per layer of `model` for one image of `image_size`, through the classic head."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    images = jax.ShapeDtypeStruct((1, height, width, model.in_channels), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), images)
    names = feature_names(model.config)
    outputs = jax.eval_shape(
        lambda v, x: model.apply(v, x, layers=names, method="extract_features"), variables, images
    )
    params = variables["params"]
    rows = []
    for name in names:
        shape = tuple(outputs[name].shape[1:])
        layer_params = {key: params[key] for key in (name, f"{name}_bn") if key in params}
        kernel = params.get(name, {}).get("kernel")
        # A conv or FC layer does one multiply-accumulate per kernel weight per output position.
        macs = math.prod(kernel.shape) * math.prod(shape[:-1]) if kernel is not None else 0
        rows.append(LayerRow(name, shape, count_params(layer_params), macs))
    return rows


def training_flops_per_image(model: VGG, image_shape: tuple[int, ...]) -> int:
    """FLOPs of one training step per image: 2 per multiply-accumulate forward, and the
    backward pass twice the forward (gradients of inputs and of weights)."""
    rows = layer_table(model, tuple(image_shape[:2]))
    return 3 * 2 * sum(row.macs for row in rows)


def format_layer_table(rows: Sequence[LayerRow]) -> str:
    lines = [f"{'layer':<10}{'output':>16}{'parameters':>16}{'MACs':>18}"]
    for row in rows:
        shape = "x".join(str(size) for size in row.output_shape)
        lines.append(f"{row.name:<10}{shape:>16}{row.params:>16,}{row.macs:>18,}")
    total_params = sum(row.params for row in rows)
    total_macs = sum(row.macs for row in rows)
    lines.append(f"{'total':<10}{'':>16}{total_params:>16,}{total_macs:>18,}")
    return "\n".join(lines)
