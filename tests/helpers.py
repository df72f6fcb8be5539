"""What the tests share: paths, a free port, a Python started from the repository root,
train.py as a user runs it, jitted init and apply, a metric's input gradient, the shrunken
training configs, a small training setup and its batches, checkpoint readers, train.py as the
fault tests drive it, and a Keras file of Caffe weights. (A folder data set with bad files:
image_folders.py.)
"""

import functools
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import jax
import numpy as np
from ml_collections import ConfigDict

from vgg_jax.configs import get_config
from vgg_jax.training.checkpoints import Checkpoints
from vgg_jax.training.sections import read_config
from vgg_jax.training.steps import init_training

TESTS = pathlib.Path(__file__).resolve().parent
ROOT = TESTS.parent


def python_env(env=None, *paths) -> dict:
    """`env` (os.environ by default) with the repository root first on PYTHONPATH, then
    `paths`: every Python a test starts imports the tree under test, not an installed vgg_jax
    (the same tree's mutants included)."""
    env = dict(os.environ if env is None else env)
    inherited = [path for path in env.get("PYTHONPATH", "").split(os.pathsep) if path]
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths), *inherited])
    return env


def run_python(*args, env=None, cwd=ROOT, timeout=300) -> subprocess.CompletedProcess:
    """`python *args` (`"-c", code`, `"-m", module` or a script), in the repository root unless
    told, with python_env(env): its exit code, stdout and stderr as text."""
    return subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd,
        env=python_env(env), timeout=timeout, check=False,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- train.py in a process


def start_train_py(*args, fault=None, marker=None, env=None) -> subprocess.Popen:
    """train.py with these arguments, from the repository root; with `fault`, through
    fault_injection.py (which injects it and signals `marker`)."""
    command = [sys.executable, str(ROOT / "train.py")]
    if fault:
        command = [sys.executable, str(TESTS / "fault_injection.py"), fault, str(marker)]
    return subprocess.Popen(
        [*command, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env=python_env(env),
    )  # fmt: skip


def run_train_py(*args, timeout=300, **options) -> subprocess.CompletedProcess:
    """start_train_py to its end: its exit code, stdout and stderr."""
    process = start_train_py(*args, **options)
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


# ---------------------------------------------------------------- models


def images(shape, seed=0):
    return jax.random.normal(jax.random.key(seed), shape)


def init(model, x, seed=0):
    return jax.jit(model.init)(jax.random.key(seed), x)


@functools.cache
def _jitted_apply(model, options):
    return jax.jit(lambda variables, x, rngs: model.apply(variables, x, rngs=rngs, **dict(options)))


def apply(model, variables, x, rngs=None, **options):
    """model.apply under jit; options (train, dense, layers, method, mutable) are static."""
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in options.items()))
    return _jitted_apply(model, frozen)(variables, x, rngs)


def relative_error(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.linalg.norm(actual - expected) / np.linalg.norm(expected)


def input_gradient(metric, variables, images0, images1, compiler_options=None):
    """d sum(metric(x, images1)) / dx at images0, the variables an argument (not folded into
    the compiled program as constants, which slows XLA's compilation by minutes)."""
    loss = lambda x, v: metric.apply(v, x, images1, reduction="sum")  # noqa: E731
    gradient = jax.jit(jax.grad(loss), compiler_options=compiler_options)
    return np.asarray(gradient(images0, variables), np.float64)


def tree_relative_error(actual, expected):
    """relative_error over all leaves of two pytrees of the same structure, as one vector."""
    flatten = lambda tree: np.concatenate(
        [np.ravel(np.asarray(leaf, np.float64)) for leaf in jax.tree.leaves(tree)]
    )
    return relative_error(flatten(actual), flatten(expected))


# ---------------------------------------------------------------- training configs and setup


def small_config(**overrides) -> ConfigDict:
    """A 1/16-width VGG-A for unit tests of the steps and optimiser (no data set)."""
    config = get_config()
    config.update(
        dict(model="vgg11", width=1 / 16, fc_features=16, dropout_rate=0.0, batch_size=8,
             learning_rate=0.5, lr_schedule="step", num_epochs=1)
    )  # fmt: skip
    config.update(overrides)
    return config


def tiny_config(digits_dir, **overrides) -> ConfigDict:
    """The default config, shrunk: 22 steps per epoch of a 1/16-width VGG-A, with the paper's
    augmentation (scale jitter, random crop, flip, PCA lighting) so resuming must replay it."""
    config = get_config()
    config.update(
        data_dir=digits_dir, model="vgg11", width=1 / 16, fc_features=32, num_epochs=2,
        lr_schedule="paper", learning_rate=0.4, log_every_steps=5, checkpoint_every_steps=10,
        keep_checkpoints=1,
        train_scale=(32, 40), crop_size=32, random_flip=True, pca_lighting=0.1,
    )  # fmt: skip
    config.update(overrides)
    return config


def digits_config(digits_dir, **overrides):
    """A 1/8-width VGG-A with batch norm: one epoch of 44 steps takes it to ~65% top-1 on the
    digits (chance: 10%)."""
    config = get_config()
    config.update(
        data_dir=digits_dir, model="vgg11_bn", width=1 / 8, fc_features=32, dropout_rate=0.0,
        batch_size=32, num_epochs=1, learning_rate=0.4, lr_schedule="step", lr_step_epochs=(9,),
        log_every_steps=20,
    )  # fmt: skip
    config.update(overrides)
    return config


IMAGE_SHAPE = (32, 32, 3)


def small_training_setup(batch_norm: bool, **overrides):
    """(setup, state) of a small VGG-A (with batch norm: vgg11_bn) on 10 classes."""
    config = small_config(model="vgg11_bn" if batch_norm else "vgg11", init_scheme="glorot",
                          **overrides)  # fmt: skip
    model = read_config(config).model.build(10)
    return init_training(read_config(config), model, IMAGE_SHAPE, steps_per_epoch=10)


def global_batches(steps: int = 3, batch_size: int = 8):
    rng = np.random.default_rng(42)
    for _ in range(steps):
        images = rng.integers(0, 256, size=(batch_size, *IMAGE_SHAPE), dtype=np.uint8)
        yield images, rng.integers(0, 10, size=batch_size).astype(np.int32)


def flat_arrays(tree) -> dict:
    """{"params/conv1_1/kernel": array, ...} for a pytree of nested dicts."""
    return {
        "/".join(key.key for key in path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def saved_state(workdir, step=None):
    """The train state saved in a work directory (the latest checkpoint by default), as
    nested dicts of NumPy arrays."""
    store = Checkpoints(pathlib.Path(workdir) / "checkpoints", read_only=True)
    state = store.restore_arrays(step if step is not None else store.steps()[-1])
    store.close()
    return state


# train.py as the fault tests drive it (tests/training/test_faults.py, test_fault_matrix.py).


def tiny_flags(workdir, digits_dir, **overrides) -> list[str]:
    """train.py flags giving helpers.tiny_config (the in-process `uninterrupted_run`'s:
    30 steps), logging every step, with `overrides`."""
    config = tiny_config(digits_dir, **{"max_steps": 30, "log_every_steps": 1, **overrides})
    default = get_config()
    changed = {key: value for key, value in config.items() if value != default[key]}
    return [f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in changed.items()]


def logged_steps(workdir) -> list[int]:
    log = pathlib.Path(workdir) / "train.log"
    text = log.read_text() if log.exists() else ""
    return [int(step) for step in re.findall(r"^.*step (\d+): loss", text, re.MULTILINE)]


def committed_steps(workdir) -> list[int]:
    folder = pathlib.Path(workdir) / "checkpoints"
    if not folder.exists():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit())


def wait_until(condition, process, timeout=180, what="the condition"):
    deadline = time.time() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"train.py exited early waiting for {what}: "
                                 f"{process.stderr.read()[-3000:]}")  # fmt: skip
        if time.time() > deadline:
            process.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def assert_same_params(workdir, reference_workdir):
    ours, expected = saved_state(workdir), saved_state(reference_workdir)
    assert int(ours["step"]) == int(expected["step"])
    ours, expected = flat_arrays(ours["params"]), flat_arrays(expected["params"])
    assert ours.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(ours[name], expected[name], err_msg=name)


def write_keras_h5(params: dict, config_letter: str, path) -> None:
    """`params` of a configuration `config_letter` VGG without batch norm, written as Keras
    published the paper's Caffe weights: Keras 2's h5 layout, conv1_1 taking BGR."""
    import h5py

    from vgg_jax.weights.convert import keras_layer_names

    params = jax.device_get(params)
    with h5py.File(path, "w") as file:
        names = keras_layer_names(config_letter)
        file.attrs["layer_names"] = [n.encode() for n in names.values()]
        for ours, theirs in names.items():
            kernel = np.asarray(params[ours]["kernel"])
            if ours == "conv1_1":
                kernel = kernel[:, :, ::-1, :]
            if ours == "fc6":
                kernel = kernel.reshape(-1, kernel.shape[-1])
            group = file.create_group(theirs)
            group.attrs["weight_names"] = [b"kernel:0", b"bias:0"]
            group["kernel:0"], group["bias:0"] = kernel, np.asarray(params[ours]["bias"])
