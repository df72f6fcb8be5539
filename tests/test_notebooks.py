"""The notebooks in notebooks/ run top to bottom (in quick mode: the same cells, less work) and
are committed without outputs."""

import os
import re

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
    CHECKS[path.stem](text)


def check_architecture(text):
    # VGG16's exact count (PAPER.md, configuration D) and its feature maps, NHWC.
    assert "138,357,544 parameters" in text
    assert re.search(r"conv1_1\s+224x224x64", text) and re.search(r"conv5_3\s+14x14x512", text)


def check_training(text):
    found = re.search(r"best top-1 accuracy ([\d.]+)% after (\d+) steps", text)
    assert found, text[-2000:]
    # Quick mode: one epoch of 44 steps, well above chance (10%); the full run is the
    # default recipe, tested in test_train_loop.py.
    assert int(found[2]) == 44 and float(found[1]) > 25


def check_pretrained(text):
    losses = dict(re.findall(r"perceptual loss, (.+?) vs the cat: ([\d.]+)", text))
    assert float(losses["the cat itself"]) == 0.0
    assert 0 < float(losses["a noisy cat"]) < float(losses["the coffee"])
    step = re.search(r"one gradient step on the noisy cat: ([\d.]+) -> ([\d.]+)", text)
    assert step and float(step[2]) < float(step[1])  # the step brought it closer
    pulled = re.search(r"LPIPS to the target: ([\d.]+) -> ([\d.]+)", text)
    assert pulled and float(pulled[2]) < 0.8 * float(pulled[1])  # LPIPS's steps, too


CHECKS = {
    "01_architecture": check_architecture,
    "02_training": check_training,
    "03_pretrained": check_pretrained,
}
