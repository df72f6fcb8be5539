"""The skips CI allows are named (tests/conftest.py's MAY_SKIP), not counted."""

import types

from conftest import MAY_SKIP, unexpected_skips
from helpers import ROOT


def test_only_the_named_tests_may_skip_and_the_others_are_named_with_their_reason():
    allowed = next(iter(MAY_SKIP))
    reports = [
        types.SimpleNamespace(nodeid=allowed, longrepr=("f.py", 1, "Skipped: no tmpfs")),
        types.SimpleNamespace(nodeid="tests/test_x.py::test_y", longrepr=("f.py", 2, "no torch")),
    ]
    assert unexpected_skips(reports) == ["tests/test_x.py::test_y: no torch"]
    assert unexpected_skips(reports[:1]) == []


def test_the_named_tests_exist():
    """A renamed test would leave its name here allowing nothing and itself failing CI."""
    for node in MAY_SKIP:
        path, _, name = node.partition("::")
        if not name:  # a whole module
            assert (ROOT / path).is_file(), node
            continue
        function, _, case = name.partition("[")
        source = (ROOT / path).read_text()
        assert f"def {function}(" in source, node
        assert not case or f'"{case.removesuffix("]")}": (' in source, node
