"""`import vgg_jax` checks the installed libraries' versions before importing jax (the notebooks
install vgg_jax without its dependencies in Colab, keeping Colab's jax and tensorflow)."""

from helpers import run_python

from vgg_jax.environment import unmet_requirements

INSTALLED = {"jax": "0.4.30", "flax": "0.12.8", "tensorflow": "2.19.0", "tqdm": "4.67.1"}


def test_too_old_versions_are_named_with_what_is_installed():
    requirements = ["jax>=0.10", "flax>=0.12", "tqdm", "tensorflow-cpu>=2.16"]
    [unmet] = unmet_requirements(requirements, INSTALLED.get)
    assert str(unmet) == "jax>=0.10 (installed: 0.4.30)" and unmet.upgrade == "'jax>=0.10'"


def test_any_tensorflow_build_stands_in_for_tensorflow_cpu():
    assert unmet_requirements(["tensorflow-cpu>=2.16"], INSTALLED.get) == []
    older = {"tensorflow": "2.12.0"}.get
    [unmet] = unmet_requirements(["tensorflow-cpu>=2.16"], older)
    assert str(unmet) == "tensorflow-cpu>=2.16 (installed: 2.12.0)"
    assert unmet.upgrade == "'tensorflow>=2.16'"  # the build installed, not a second one


def test_versions_that_cannot_be_ordered_are_not_reported():
    assert unmet_requirements(["jax>=0.10"], {"jax": "local-build"}.get) == []


def test_missing_libraries_and_extras_are_left_to_the_imports_that_need_them():
    # Without TensorFlow the model still runs (the GPU machines have none).
    requirements = ["tensorflow-datasets>=4.9.8", 'pytest>=8; extra == "test"']
    assert unmet_requirements(requirements, {"pytest": "7.0"}.get) == []


def test_versions_of_the_train_extra_are_checked_and_other_extras_not():
    installed = {"tensorflow-cpu": "2.12.0", "pytest": "7.0"}.get
    requirements = ['tensorflow-cpu>=2.16; extra == "train"', 'pytest>=8; extra == "test"']
    [unmet] = unmet_requirements(requirements, installed)
    assert str(unmet) == "tensorflow-cpu>=2.16 (installed: 2.12.0)"


def test_importing_vgg_jax_with_an_old_jax_says_what_to_do_before_importing_jax():
    code = (
        "import importlib.metadata as m, sys\n"
        "real = m.version\n"
        "m.version = lambda name: '0.4.30' if name == 'jax' else real(name)\n"
        "try:\n"
        "    import vgg_jax\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "print('jax imported:', 'jax' in sys.modules)\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "vgg_jax needs jax>=0.10 (installed: 0.4.30)" in result.stdout
    assert "pip install -U 'jax>=0.10'" in result.stdout and "Restart session" in result.stdout
    assert "jax imported: False" in result.stdout


def test_with_libtpu_installed_a_cpu_machine_starts_jax_without_libtpus_warnings():
    import os

    env = {
        name: value for name, value in os.environ.items() if not name.startswith(("JAX_", "TPU_"))
    }
    code = "import vgg_jax, jax; print(jax.devices()[0].platform)"
    result = run_python("-c", code, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (result.stdout, result.stderr) == ("cpu\n", "")
    # Without vgg_jax, libtpu prints its warnings: the test above can see them.
    bare = run_python("-c", "import jax; jax.devices()", env=env)
    assert "TPU_ACCELERATOR_TYPE" in bare.stderr


def test_libtpus_environment_is_left_to_the_user_and_to_tpu_machines(monkeypatch, tmp_path):
    from vgg_jax import environment

    environ = {"TPU_ACCELERATOR_TYPE": "v6e-8"}
    assert environment.quiet_libtpu_without_tpu(environ)
    assert environ == {**environment.LIBTPU_WITHOUT_TPU, "TPU_ACCELERATOR_TYPE": "v6e-8"}
    google_device = tmp_path / "0000:00:04.0"
    google_device.mkdir()
    (google_device / "vendor").write_text("0x1ae0\n")
    monkeypatch.setattr(environment.glob, "glob", lambda pattern: [str(google_device / "vendor")])
    environ = {}
    assert not environment.quiet_libtpu_without_tpu(environ) and environ == {}
