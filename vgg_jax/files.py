"""Writing a file so that a crash or a full disk mid-write never leaves it half-written."""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def write_atomically(path: str | pathlib.Path, text: str) -> None:
    """`text` into `path`, which then holds either its old content or all of the new: written
    to a temporary file beside it, then renamed over it (os.replace is atomic on POSIX and
    Windows)."""
    path = pathlib.Path(path)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as file:
        try:
            file.write(text)
        except BaseException:
            file.close()
            with contextlib.suppress(OSError):
                os.unlink(file.name)
            raise
    os.replace(file.name, path)
