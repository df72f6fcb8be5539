"""Every Python block of the README and of docs/ runs, in order, one namespace per page, with
weights from a local file (tests/docs_snippets.py says how, and how a block is marked to skip)."""

import os
import re

from helpers import ROOT, TESTS, run_python

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def python_blocks(page) -> int:
    return len(re.findall(r"^```python$", page.read_text(), re.MULTILINE))


def test_every_python_block_of_the_readme_and_the_docs_runs(tmp_path):
    pages = [page for page in PAGES if python_blocks(page)]
    assert ROOT / "README.md" in pages and ROOT / "docs" / "models.md" in pages
    cache = tmp_path / "weights_cache"
    env = {
        **os.environ,
        "VGG_JAX_CACHE": str(cache),
        # A reader's default XLA flags: with LLVM optimisation off (conftest.py) drawing VGG16's
        # 138 million random initial weights took 4x longer.
        "XLA_FLAGS": "",
    }
    script = TESTS / "docs_snippets.py"
    result = run_python(script, cache, *pages, env=env, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    counted = {
        page: int(ran) + int(skipped)
        for page, ran, skipped in re.findall(r"^(\S+): (\d+) run, (\d+) skipped$",
                                             result.stdout, re.MULTILINE)
    }  # fmt: skip
    # Each block the page holds was seen: none hidden from the parser by its formatting.
    assert counted == {str(page): python_blocks(page) for page in pages}, result.stdout
