"""train.py with a fault injected, for tests/test_faults.py: `python fault_injection.py FAULT
MARKER [train.py flags]`.

FAULT "slow_save:N": checkpoint saves after the N-th stop just before they are committed (the
files written, the step's folder not yet renamed into place) and write that folder's path to
MARKER, then wait, so the test can kill the process in the middle of a save.
"""

import asyncio
import pathlib
import runpy
import sys

from orbax.checkpoint._src.path import atomicity

TRAIN_PY = pathlib.Path(__file__).resolve().parents[1] / "train.py"


def slow_saves_after(saves: int, marker: pathlib.Path) -> None:
    commit = atomicity.AtomicRenameTemporaryPath.finalize
    done = []

    async def finalize_slowly(self):
        if self._final_path.parent.name != "checkpoints":  # an item inside a step's folder
            return await commit(self)
        done.append(self)
        if len(done) > saves:
            marker.write_text(str(self.get()))
            await asyncio.sleep(3600)
        await commit(self)

    atomicity.AtomicRenameTemporaryPath.finalize = finalize_slowly


if __name__ == "__main__":
    fault, marker, *flags = sys.argv[1:]
    name, _, argument = fault.partition(":")
    if name != "slow_save":
        sys.exit(f"unknown fault {fault!r}")
    slow_saves_after(int(argument), pathlib.Path(marker))
    sys.argv = [str(TRAIN_PY), *flags]
    runpy.run_path(str(TRAIN_PY), run_name="__main__")
