"""Weight initialisation schemes for VGG, selectable by name."""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import linen as nn


@dataclasses.dataclass(frozen=True)
class InitScheme:
    conv_kernel: Callable
    fc_kernel: Callable
    bias: Callable = nn.initializers.zeros_init()


INIT_SCHEMES: dict[str, InitScheme] = {
    # torchvision's: He/Kaiming normal with fan-out for convs, N(0, 0.01) for FC layers. The
    # default, because plain deep VGG does not train from scratch with the paper's N(0, 0.01).
    "kaiming": InitScheme(
        conv_kernel=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        fc_kernel=nn.initializers.normal(0.01),
    ),
    # Section 3.1: weights from N(0, 0.01), biases 0 (meant for net A, or with warm starts).
    "paper": InitScheme(
        conv_kernel=nn.initializers.normal(0.01),
        fc_kernel=nn.initializers.normal(0.01),
    ),
    # Glorot & Bengio (2010), uniform, which the paper notes works without pre-training.
    "glorot": InitScheme(
        conv_kernel=nn.initializers.glorot_uniform(),
        fc_kernel=nn.initializers.glorot_uniform(),
    ),
}


def init_scheme(name: str) -> InitScheme:
    if name not in INIT_SCHEMES:
        raise ValueError(
            f"Unknown initialisation scheme {name!r}; choose one of {', '.join(INIT_SCHEMES)}."
        )
    return INIT_SCHEMES[name]
