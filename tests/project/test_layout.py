"""The package layout: each subpackage imports only those before it, so the model never
depends on training code and evaluation sits on top."""

import ast

from helpers import ROOT, run_python

LAYERS = ("model", "data", "weights", "training", "evaluation", "cli")


def imported_subpackages(path) -> set[str]:
    """The vgg_jax subpackages a module imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "vgg_jax" and len(parts) > 1 and parts[1] in LAYERS:
                found.add(parts[1])
    return found


def test_no_subpackage_imports_one_after_it():
    upward = []
    for rank, layer in enumerate(LAYERS):
        for path in sorted((ROOT / "vgg_jax" / layer).glob("*.py")):
            later = imported_subpackages(path) & set(LAYERS[rank + 1 :])
            upward += [f"{path.relative_to(ROOT)} imports vgg_jax.{name}" for name in sorted(later)]
    assert not upward, upward
    # The check sees real imports: the evaluation package does import training's checkpoints.
    assert "training" in imported_subpackages(ROOT / "vgg_jax" / "evaluation" / "inference.py")


def test_importing_vgg_jax_leaves_tensorflow_unloaded_and_inference_loads_on_use():
    code = (
        "import sys, vgg_jax; assert 'tensorflow' not in sys.modules; "
        "print(vgg_jax.inference.from_checkpoint.__module__)"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "vgg_jax.evaluation.inference"
    import vgg_jax
    from vgg_jax.evaluation import inference

    assert vgg_jax.inference is inference and "inference" in dir(vgg_jax)


def test_no_module_name_on_two_floors():
    """A name says which module it is: none repeats across the package's folders (the commands
    live in vgg_jax/cli/, their work in vgg_jax/evaluation/)."""
    folders = {}
    for path in sorted((ROOT / "vgg_jax").rglob("*.py")):
        if path.name not in ("__init__.py", "__main__.py"):
            folders.setdefault(path.stem, []).append(str(path.parent.relative_to(ROOT)))
    assert {name: found for name, found in folders.items() if len(found) > 1} == {}


def test_each_installed_command_is_a_main_of_the_cli():
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"vgg-jax-evaluate", "vgg-jax-predict", "vgg-jax-plan"}
    for target in scripts.values():
        module, function = target.split(":")
        assert module.startswith("vgg_jax.cli.")
        assert callable(getattr(importlib.import_module(module), function))


def test_every_public_name_loads_from_its_module_on_first_use():
    """`import vgg_jax` imports no jax (the commands' --help is fast); each name of __all__
    loads its module when first used (PEP 562), as do submodules, and dir() lists them all."""
    code = (
        "import sys, vgg_jax\n"
        "print('jax' in sys.modules)\n"
        "assert sorted(vgg_jax.__all__) == sorted(vgg_jax._MODULE_OF), 'one list of names'\n"
        "values = [getattr(vgg_jax, name) for name in vgg_jax.__all__]\n"
        "assert set(vgg_jax.__all__) <= set(dir(vgg_jax)) and 'inference' in dir(vgg_jax)\n"
        "from vgg_jax.weights.pretrained import WEIGHTS\n"
        "print(vgg_jax.PRETRAINED_WEIGHTS is WEIGHTS, vgg_jax.vgg16().config)\n"
        "print(vgg_jax.evaluation.protocols.center_crop.__module__)  # submodules too\n"
        "print(hasattr(vgg_jax, 'no_such_name'), hasattr(vgg_jax.model, 'no_such_module'))\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "False", "True", "D", "vgg_jax.evaluation.protocols", "False", "False",
    ]  # fmt: skip


def test_the_tests_mirror_the_package():
    """tests/<floor>/ for each subpackage (tests/training/test_checkpoints.py tests
    vgg_jax/training/checkpoints.py), tests/project/ for what spans the repository, and the
    shared helpers at the top of tests/ only."""
    tests = ROOT / "tests"
    floors = {path.name for path in tests.iterdir() if path.is_dir() and path.name != "__pycache__"}
    subpackages = {p.parent.name for p in (ROOT / "vgg_jax").glob("*/__init__.py")}
    assert floors - {"project"} <= subpackages, floors - subpackages
    assert (tests / "training" / "test_checkpoints.py").is_file()
    helpers = [path.name for path in tests.glob("*/*.py") if not path.name.startswith("test_")]
    assert helpers == [], f"helpers belong at the top of tests/: {helpers}"
    borrowing = [
        f"{path.relative_to(tests)} imports {name}"
        for path in tests.rglob("test_*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom | ast.Import)
        for name in ([node.module] if isinstance(node, ast.ImportFrom) else
                     [alias.name for alias in node.names])  # fmt: skip
        if name and name.startswith("test_")
    ]
    assert borrowing == [], f"what tests share goes in a helper module: {borrowing}"
