"""docs/api.md renders `::: vgg_jax` with mkdocstrings, which reads the package statically
(griffe) and shows what it finds exported. Every name of the runtime `vgg_jax.__all__` must be
found that way, to a class, function or attribute: a public name that only exists at run time
(a lazy import griffe cannot follow) would silently vanish from the API reference."""

import griffe
from helpers import ROOT

import vgg_jax


def test_the_api_reference_finds_every_public_name():
    package = griffe.load("vgg_jax", search_paths=[str(ROOT)], resolve_aliases=True)
    assert sorted(package.exports or []) == sorted(vgg_jax.__all__)
    kinds = {}
    for name in vgg_jax.__all__:
        found = package[name]
        kinds[name] = (found.final_target if found.is_alias else found).kind.value
    assert set(kinds.values()) <= {"class", "function", "attribute"}, kinds
    assert kinds["VGG"] == "class" and kinds["load_pretrained"] == "function"
    assert package["load_pretrained"].final_target.docstring  # what the page shows of it
