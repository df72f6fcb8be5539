"""Test setup, applied before JAX starts.

Four fake CPU devices, so pmap tests run anywhere. LLVM optimisation off: on CPU it makes up
most of the compile time of a model's init (the random initialisers), while the tests' small
models run fast either way; the numerics are IEEE either way. A compilation cache shared by
the whole session.
"""

import atexit
import os
import shutil
import tempfile

# One persistent compilation cache for the session and the processes it starts: the train.py
# runs and the multi-process workers compile the same small steps again and again.
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="vgg_jax_test_jit_cache_")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _COMPILATION_CACHE)

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")


import jax  # noqa: E402
import pytest  # noqa: E402

# This process itself neither reads nor writes that cache: with jaxlib 0.10.2 on CPU, reading
# back the second of two train steps this process compiled crashed it (a segmentation fault in
# compilation_cache.get_executable_and_time; reproduced outside pytest too).
jax.config.update("jax_enable_compilation_cache", False)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drops each module's compiled programs after it. A session that kept them all crashed in
    XLA's CPU compiler (a segmentation fault in backend_compile_and_load, jaxlib 0.10.2), after
    a few hundred compilations; no single test does."""
    yield
    jax.clear_caches()


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A TFDS data directory with the digits built in it, once per test session."""
    from vgg_jax.data import sources

    data_dir = tmp_path_factory.mktemp("tfds")
    sources.get_builder("digits", str(data_dir))
    return str(data_dir)


@pytest.fixture(scope="session")
def uninterrupted_run(digits_dir, tmp_path_factory):
    """(workdir, summary) of 30 steps of helpers.tiny_config, in this process: the
    reference for the resume and fault tests."""
    from helpers import tiny_config

    from vgg_jax.training.loop import train_and_evaluate

    workdir = tmp_path_factory.mktemp("uninterrupted")
    summary = train_and_evaluate(tiny_config(digits_dir, max_steps=30), workdir)
    return workdir, summary


def pytest_terminal_summary(terminalreporter):
    """CI's log says how many weight conversions were checked against the reference libraries'
    own models (they skip where torchvision or keras is not installed)."""
    counts = {}
    for outcome in ("passed", "failed", "skipped"):
        reports = terminalreporter.stats.get(outcome, [])
        counts[outcome] = sum("give_the_same_logits" in report.nodeid for report in reports)
    if any(counts.values()):
        terminalreporter.write_line(
            f"Pretrained-weight conversions checked against torchvision/Keras models: "
            f"{counts['passed'] + counts['failed']} ran ({counts['failed']} failed), "
            f"{counts['skipped']} skipped."
        )


# The tests that may skip where VGG_JAX_STRICT_SKIPS is set (.ci/run sets it), and why. Any
# other skip fails such a run: a test that skips in CI checks nothing there.
MAY_SKIP = {
    # JAX's CUDA plugin is not in the test install; .ci/run installs it and runs the file alone.
    "tests/training/test_gpu_plans.py": "JAX's CUDA plugin is not installed",
    "tests/training/test_faults.py::"
    "test_a_full_disk_stops_with_a_clear_error_and_keeps_the_previous_checkpoint": "fills a small tmpfs, which only root can mount",
    "tests/training/test_fault_matrix.py::test_fault_matrix[read-only work directory: one line]": (
        "as root, remounts a small tmpfs read-only, which needs the right to mount"
    ),
}


def unexpected_skips(reports) -> list[str]:
    """'node id: reason' of each skip that MAY_SKIP does not name."""
    unexpected = []
    for report in reports:
        if report.nodeid not in MAY_SKIP:
            reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
            unexpected.append(f"{report.nodeid}: {reason}")
    return unexpected


def pytest_sessionfinish(session, exitstatus):
    """With VGG_JAX_STRICT_SKIPS set, a skip of a test MAY_SKIP does not name fails the run,
    each named with its reason. (pyproject's -rs prints every skip's reason.)"""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not os.environ.get("VGG_JAX_STRICT_SKIPS") or reporter is None or exitstatus != 0:
        return
    unexpected = unexpected_skips(reporter.stats.get("skipped", []))
    if unexpected:
        reporter.write("\n")
        reporter.write_sep("!", f"{len(unexpected)} tests skipped that may not skip", red=True)
        for line in unexpected:
            reporter.write_line(line, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
