"""The names of the paper's test protocols (Section 3.2), apart from their jax code
(vgg_jax.evaluation.protocols) so that `python -m vgg_jax.cli.evaluate --help` lists them at
once."""

from __future__ import annotations

PROTOCOLS = ("center", "dense", "multi_crop", "dense+multi_crop")


def check_protocols(protocols) -> tuple[str, ...]:
    protocols = tuple(protocols)
    unknown = [name for name in protocols if name not in PROTOCOLS]
    if unknown or not protocols:
        raise ValueError(f"Unknown protocol(s) {unknown}; choose from {', '.join(PROTOCOLS)}.")
    return protocols
