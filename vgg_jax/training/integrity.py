"""What tells a damaged checkpoint from a good one: a digest of its arrays, kept in its record.
Orbax's files carry no checksum of the values."""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def state_digest(state: Any) -> str:
    """A BLAKE2 digest of every array in `state`: a train state, or the nested dicts and lists
    it is read back as without a target. Each array is hashed with its dtype and shape, and the
    sorted hashes hashed again, so the digest does not depend on how the containers are named.
    Orbax's files carry no checksum of the values: this, kept in the checkpoint's record, is
    what tells a damaged checkpoint from a good one."""
    hashes = []
    for leaf in jax.tree.leaves(jax.device_get(state)):
        leaf = np.ascontiguousarray(leaf)
        digest = hashlib.blake2b(f"{leaf.dtype.str}:{leaf.shape};".encode(), digest_size=32)
        digest.update(leaf.tobytes())
        hashes.append(digest.digest())
    return hashlib.blake2b(b"".join(sorted(hashes)), digest_size=32).hexdigest()


class CorruptCheckpoint(ValueError):
    """A checkpoint whose arrays read back differ from what was saved."""


def verify(state: Any, record: dict, step: int) -> None:
    """Raises CorruptCheckpoint unless `state` is what was saved at `step` (checkpoints saved
    before digests were kept pass unchecked)."""
    expected = record.get("state_digest")
    if expected is not None and state_digest(state) != expected:
        raise CorruptCheckpoint(
            f"its arrays differ from what was saved at step {step} (digest mismatch): the "
            f"files were damaged after they were written"
        )
