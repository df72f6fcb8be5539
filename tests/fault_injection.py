"""train.py with a fault injected, for tests/training/test_faults.py:
`python fault_injection.py FAULT MARKER [train.py flags]`.

FAULT "slow_save:N": checkpoint saves after the N-th stop just before they are committed (the
files written, the step's folder not yet renamed into place) and write that folder's path to
MARKER, then wait, so the test can kill the process in the middle of a save.
FAULT "delay_save:SECONDS": every save waits that long before its commit, writing its folder's
path to MARKER first: a window in which the run is saving.
"""

import asyncio
import pathlib
import runpy
import sys

from orbax.checkpoint._src.path import atomicity

TRAIN_PY = pathlib.Path(__file__).resolve().parents[1] / "train.py"


def write_marker(marker: pathlib.Path, text: str) -> None:
    # Tests poll for the marker's existence and then read it: renaming a complete file into
    # place means they never see it created but still empty.
    partial = marker.with_name(marker.name + ".partial")
    partial.write_text(text)
    partial.replace(marker)


def slow_saves_after(saves: int, marker: pathlib.Path) -> None:
    commit = atomicity.AtomicRenameTemporaryPath.finalize
    done = []

    async def finalize_slowly(self):
        if self._final_path.parent.name != "checkpoints":  # an item inside a step's folder
            return await commit(self)
        done.append(self)
        if len(done) > saves:
            write_marker(marker, str(self.get()))
            await asyncio.sleep(3600)
        await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_slowly


def delay_saves(seconds: float, marker: pathlib.Path) -> None:
    commit = atomicity.AtomicRenameTemporaryPath.finalize

    async def finalize_later(self):
        if self._final_path.parent.name == "checkpoints":  # a step's folder, not an item
            write_marker(marker, str(self.get()))
            await asyncio.sleep(seconds)
        await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_later


if __name__ == "__main__":
    fault, marker, *flags = sys.argv[1:]
    name, _, argument = fault.partition(":")
    if name == "slow_save":
        slow_saves_after(int(argument), pathlib.Path(marker))
    elif name == "delay_save":
        delay_saves(float(argument), pathlib.Path(marker))
    else:
        sys.exit(f"unknown fault {fault!r}")
    sys.argv = [str(TRAIN_PY), *flags]
    runpy.run_path(str(TRAIN_PY), run_name="__main__")
