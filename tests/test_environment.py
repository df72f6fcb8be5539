"""`import vgg_jax` checks the installed libraries' versions before importing jax (the notebooks
install vgg_jax without its dependencies in Colab, keeping Colab's jax and tensorflow), and sets
the environment JAX starts in: libtpu's without a TPU, XLA:CPU's flags for VGG."""

import os
import re

from helpers import run_python

from vgg_jax.environment import (
    KEEP_YNN_FUSIONS,
    NO_YNN_FUSIONS,
    turn_off_ynn_fusions,
    unmet_requirements,
)

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


# ------------------------------------------------- XLA:CPU's YNNPACK fusions (turn_off_ynn_fusions)

CONV_KERNEL = re.compile(r"__params____conv\d+_\d+____kernel__")
FC_KERNEL = re.compile(r"__params____fc[678]____kernel__")
# VGG16's logits, compiled for this process's CPU, as HLO text (parameters named by their
# variable path); `print` is there for a subprocess.
VGG16_LOGITS_HLO = """
import jax, jax.numpy as jnp, vgg_jax
model = vgg_jax.vgg16()
images = jax.ShapeDtypeStruct((8, 224, 224, 3), jnp.float32)
variables = jax.eval_shape(model.init, jax.random.key(0), images)
hlo = jax.jit(model.apply).lower(variables, images).compile().as_text()
print(hlo)
"""


def fusions_of_conv_and_fc_kernels(hlo: str) -> list[str]:
    """The fusions of a compiled program that take in a conv kernel and an FC kernel both."""
    fusions = [line for line in hlo.splitlines() if " fusion(" in line]
    return [
        line.split("=")[0].strip()
        for line in fusions
        if CONV_KERNEL.search(line.split("), kind=")[0])
        and FC_KERNEL.search(line.split("), kind=")[0])
    ]


def test_vgg16s_compiled_cpu_program_keeps_the_conv_stack_out_of_the_classifier():
    namespace = {}
    exec(VGG16_LOGITS_HLO.replace("print(hlo)", ""), namespace)
    assert f"{NO_YNN_FUSIONS} " in os.environ["XLA_FLAGS"] + " "  # set by `import vgg_jax`
    assert fusions_of_conv_and_fc_kernels(namespace["hlo"]) == []
    # XLA's own choice, where a user keeps it, is the one fusion that takes in them all.
    kept = run_python("-c", VGG16_LOGITS_HLO,
                      env={**os.environ, KEEP_YNN_FUSIONS: "1", "XLA_FLAGS": ""})  # fmt: skip
    assert kept.returncode == 0, kept.stderr[-3000:]
    assert NO_YNN_FUSIONS not in kept.stdout
    assert len(fusions_of_conv_and_fc_kernels(kept.stdout)) == 1


def test_the_users_own_ynn_setting_and_the_opt_out_are_kept():
    environ = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert turn_off_ynn_fusions(environ, jax_started=False)
    expected = f"--xla_force_host_platform_device_count=2 {NO_YNN_FUSIONS}"
    assert environ["XLA_FLAGS"] == expected
    assert not turn_off_ynn_fusions(environ, jax_started=False)  # once is enough
    assert environ["XLA_FLAGS"].count(NO_YNN_FUSIONS) == 1
    chosen = {"XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert not turn_off_ynn_fusions(chosen, jax_started=False)
    assert chosen["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    kept = {KEEP_YNN_FUSIONS: "1"}
    assert not turn_off_ynn_fusions(kept, jax_started=False) and "XLA_FLAGS" not in kept


def test_importing_vgg_jax_after_jax_started_on_a_cpu_says_what_to_do():
    code = "import jax; jax.devices(); import vgg_jax"
    result = run_python("-c", code, env={**os.environ, "XLA_FLAGS": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "JAX started before vgg_jax was imported, so XLA:CPU keeps the YNNPACK" in result.stderr
    assert "import vgg_jax before JAX runs anything" in result.stderr
