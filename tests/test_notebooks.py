"""The notebooks in notebooks/ run top to bottom (in quick mode: the same cells, less work) and
are committed without outputs."""

import os

import nbformat
import pytest
from helpers import ROOT
from nbclient import NotebookClient

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_the_three_notebooks_are_there():
    assert [p.name for p in NOTEBOOKS] == [
        "01_architecture.ipynb", "02_training.ipynb", "03_pretrained.ipynb",
    ]  # fmt: skip


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{path.name} has outputs: clear them before committing "
                f"(jupyter nbconvert --clear-output --inplace {path.name})"
            )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    assert "colab.research.google.com" in notebook.cells[0].source  # the Open in Colab badge
    # The kernel is a fresh process with one CPU device, LLVM optimisation off as in
    # conftest.py (it made up a third of notebook 02's time; the results are the same).
    env = {
        **os.environ,
        "VGG_JAX_NOTEBOOK_QUICK": "1",
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
    }
    client = NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})  # fmt: skip
    client.execute(env=env)  # an error in any cell raises CellExecutionError
    text = "\n".join(
        output.get("text", "") for cell in notebook.cells for output in cell.get("outputs", [])
    )
    assert "quick mode: True" in text
