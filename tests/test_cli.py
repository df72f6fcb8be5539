"""`python -m vgg_jax` (the layer table) and the README's promises about its commands and CI."""

import re

import pytest
from helpers import ROOT, run_python

from vgg_jax.__main__ import main


def test_demo_prints_the_vgg16_layer_table(capsys):
    main(["vgg16"])
    out = capsys.readouterr().out
    assert "configuration D, input 224x224x3" in out
    assert re.search(r"pool5\s+7x7x512\s+0", out)
    assert re.search(r"fc6\s+4096\s+102,764,544", out)
    assert "138,357,544 parameters, 15.470 G multiply-accumulates per image" in out


def test_demo_rejects_an_unknown_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["vgg17"])
    assert exit_info.value.code == 2
    assert "Unknown VGG configuration 'vgg17'" in capsys.readouterr().err


def test_demo_runs_as_a_module_from_another_folder(tmp_path):
    result = run_python(
        "-m", "vgg_jax", "vgg11_lrn", "--image-size", "32", "--width", "0.25", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"lrn1\s+32x32x16", result.stdout)
    assert "RuntimeWarning" not in result.stderr


def readme_commands():
    readme = (ROOT / "README.md").read_text()
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.*?)\n```", quick_start, re.S)


def test_readme_quick_start_is_two_commands_and_ci_runs_the_test_one():
    commands = readme_commands()
    assert len(commands) == 2 and all("\n" not in command for command in commands)
    main_job, tests = commands
    assert main_job.endswith("python train.py") and "pytest" in tests
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci_lines


@pytest.mark.parametrize(
    "command, argv", [("evaluate", ["--help"]), ("evaluate", []), ("predict", ["--help"])]
)
def test_help_and_argument_errors_answer_without_loading_tensorflow(command, argv):
    """They used to take 5-15 s, importing TensorFlow and orbax before reading the arguments."""
    code = (
        f"import sys; from vgg_jax.cli.{command} import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted({'tensorflow', 'orbax'} & {m.split('.')[0] for m in sys.modules}))"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
    assert "usage: python -m vgg_jax." in result.stdout + result.stderr


def test_ci_builds_the_docs_with_the_command_the_docs_give():
    contributing = (ROOT / "docs" / "contributing.md").read_text()
    build = contributing.split("## Documentation", 1)[1]
    [command] = re.findall(r"```bash\n(.*?)\n```", build, re.DOTALL)
    assert "mkdocs build --strict" in command
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
