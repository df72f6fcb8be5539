"""Runs the notebooks in quick mode and keeps the executed copies in docs/notebooks/, so that one
execution serves both the tests and the documentation site:

- tests/project/test_notebooks.py runs each notebook with `execute`, checks its outputs and
  `keep`s it;
- mkdocs.yml loads this file as a hook: before a build, any notebook whose executed copy is
  missing or was made from another version of the notebook is run and kept; the site renders
  the copies (mkdocs-jupyter, without executing them again).

    python notebooks/execute.py [--force]    # what the docs build does, by hand

The notebooks themselves stay committed without outputs; docs/notebooks/*.ipynb is ignored by
git. A copy records the sha256 of the notebook it came from (metadata "vgg_jax_source"); a change
to the library alone does not make it stale: run with --force, or let the tests refresh it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import tempfile

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = pathlib.Path(__file__).resolve().parent
EXECUTED = NOTEBOOKS.parent / "docs" / "notebooks"
# Quick mode (the same cells, less work, no download), on one CPU device with XLA's default
# flags. Not with LLVM optimisation off as in tests/conftest.py: the notebooks' quick mode still
# computes (the linear probe's features, the training loop), and on a 2-core Xeon that flag made
# notebook 03 take 93 s against 61 s and notebook 02 92 s against 57 s (on a 2-core EPYC it had
# saved a third of 02's time: which wins depends on the CPU).
QUICK_ENV = {"VGG_JAX_NOTEBOOK_QUICK": "1", "XLA_FLAGS": ""}


def sources() -> list[pathlib.Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def source_digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def execute(path: pathlib.Path, workdir: pathlib.Path) -> nbformat.NotebookNode:
    """The notebook at `path` run top to bottom in quick mode, with `workdir` as its current
    folder; an error in any cell raises nbclient's CellExecutionError."""
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})  # fmt: skip
    # The kernel imports this tree's vgg_jax (its folder first on the path), not an installed one.
    path = os.pathsep.join(filter(None, [str(NOTEBOOKS.parent), os.environ.get("PYTHONPATH")]))
    client.execute(env={**os.environ, **QUICK_ENV, "PYTHONPATH": path})
    return notebook


def keep(notebook: nbformat.NotebookNode, path: pathlib.Path) -> pathlib.Path:
    """Writes the executed `notebook` of the source at `path` where the docs site reads it."""
    notebook.metadata["vgg_jax_source"] = source_digest(path)
    EXECUTED.mkdir(parents=True, exist_ok=True)
    executed = EXECUTED / path.name
    nbformat.write(notebook, executed)
    return executed


def is_fresh(path: pathlib.Path) -> bool:
    executed = EXECUTED / path.name
    if not executed.is_file():
        return False
    kept = nbformat.read(executed, as_version=4).metadata.get("vgg_jax_source")
    return kept == source_digest(path)


def execute_stale(force: bool = False) -> list[pathlib.Path]:
    """Runs and keeps every notebook without a fresh executed copy (all with `force`)."""
    ran = []
    for path in sources():
        if force or not is_fresh(path):
            print(f"Executing {path.name} in quick mode for the docs ...", flush=True)
            with tempfile.TemporaryDirectory(prefix="vgg_jax_notebook_") as workdir:
                keep(execute(path, pathlib.Path(workdir)), path)
            ran.append(path)
    return ran


def on_pre_build(config, **kwargs) -> None:
    """mkdocs hook: before the site's files are collected."""
    execute_stale()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true", help="run every notebook again")
    execute_stale(parser.parse_args().force)
