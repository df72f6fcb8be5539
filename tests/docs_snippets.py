"""Run as a script by tests/project/test_docs_snippets.py: every Python block of the given Markdown
pages, in order, one namespace per page, as a reader pastes them (Sybil's Markdown parsers).

    python tests/docs_snippets.py CACHE_DIR PAGE...

Weights: "vgg16.tv_in1k" (the README's, and LPIPS's backbone) is a random torchvision VGG16
that this script writes into CACHE_DIR, under the published file name, as `torch.save` writes
it; the registry's hash for it is replaced by that file's, the one thing that differs from a
real download. Any other download fails with a message naming it: tests use no network.
The LPIPS linear weights come from the `lpips` package (a test dependency).

A block marked `<!-- skip: next "REASON" -->` (Sybil's skip directive) is skipped and listed
with its reason; a mark without a reason is an error, so that no skip goes unexplained.
A process of its own: PyTorch in a process that has loaded TensorFlow can crash it.

Prints one line per page, "PAGE: N run, M skipped", and each skipped block; exits 1 at the
first block that fails, with the page, its line and the traceback.
"""

import dataclasses
import pathlib
import sys
import traceback
import unittest
import urllib.request

from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

WEIGHTS = "vgg16.tv_in1k"


def write_random_vgg16(cache: pathlib.Path, file_name: str) -> pathlib.Path:
    path = cache / file_name
    if not path.is_file():
        import torch
        import torchvision

        torch.manual_seed(0)
        cache.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.vgg16(weights=None).state_dict(), path)
    return path


def no_network(url, *args, **kwargs):
    raise RuntimeError(
        f"The docs snippets test has no network: a snippet asked for {getattr(url, 'full_url', url)}."
        f" Use {WEIGHTS}, or give the test a local file for these weights."
    )


def prepare_weights(cache: pathlib.Path) -> None:
    from vgg_jax.weights import pretrained

    entry = pretrained.WEIGHTS[WEIGHTS]
    path = write_random_vgg16(cache, entry.file_name)
    digest = pretrained.file_digest(path, entry.hash_algorithm)
    pretrained.WEIGHTS[WEIGHTS] = dataclasses.replace(entry, file_hash=digest)
    urllib.request.urlopen = no_network


def run_page(path: pathlib.Path) -> tuple[int, list[str]]:
    """(blocks run, skipped blocks with their reasons); raises at the first failing block."""
    document = Sybil([PythonCodeBlockParser(), SkipParser()]).parse(path)
    ran, skipped = 0, []
    for example in document:
        if isinstance(example.parsed, tuple):  # a skip directive: (action, reason)
            action, reason = example.parsed
            if action in ("start", "next") and not reason:
                raise ValueError(f"{path}, line {example.line}: a skip mark needs a reason")
        try:
            example.evaluate()
        except unittest.SkipTest as skip:
            skipped.append(f"{path.name}, line {example.line}: {skip}")
            continue
        ran += not isinstance(example.parsed, tuple)
    return ran, skipped


def main(cache: str, pages: list[str]) -> int:
    prepare_weights(pathlib.Path(cache))
    for page in map(pathlib.Path, pages):
        try:
            ran, skipped = run_page(page)
        except Exception:  # noqa: BLE001 (any error a block raises is its failure)
            print(f"FAILED {page}:\n{traceback.format_exc()}", flush=True)
            return 1
        print(f"{page}: {ran} run, {len(skipped)} skipped", flush=True)
        for line in skipped:
            print(f"  skipped {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
