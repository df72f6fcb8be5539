"""Whether the installed libraries are recent enough for vgg_jax, checked before jax is imported;
and whether those of the training profile are installed at all.

Where vgg_jax is installed without its dependencies (Colab's notebooks do that, to keep Colab's
own jax and tensorflow), an older jax or flax would otherwise fail later with an error that
names neither. Runs on `import vgg_jax`, from the installed package's metadata; a source
checkout that is not installed has none and is not checked. The base requirements and the
`train` extra's are checked, the other extras' (test, notebooks) not. A library that is missing
is not reported here: the model, the weights and LPIPS run without TensorFlow, and the modules
of training, the input pipeline and evaluation call require_training_libraries() first.

Also the environment JAX starts in, set before it starts: libtpu's on a machine without a TPU,
and XLA:CPU's flags for VGG (turn_off_ynn_fusions).
"""

from __future__ import annotations

import dataclasses
import glob
import importlib.metadata
import importlib.util
import os
import pathlib
import sys
import warnings
from typing import Callable, Iterable

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

# tensorflow-cpu is what the package asks for; any TensorFlow build serves.
ALTERNATIVES = {"tensorflow-cpu": ("tensorflow-cpu", "tensorflow", "tensorflow-macos")}
# The extra whose versions are checked with the base requirements'.
CHECKED_EXTRA = "train"
# What training, the input pipeline and evaluation on data sets import that the base install
# lacks, by import name, with its distribution in pyproject.toml's train extra (a test keeps the
# two in step; that extra also raises the minimum versions of optax and orbax, which flax brings).
TRAINING_LIBRARIES = {
    "tensorflow": "tensorflow-cpu",
    "tensorflow_datasets": "tensorflow-datasets",
    "ml_collections": "ml_collections",
    "absl": "absl-py",
    "sklearn": "scikit-learn",
    "tensorboard": "tensorboard",
}
INSTALL_TRAINING = 'pip install "vgg_jax[train]" (in a checkout: pip install -e ".[train]")'
# The PCI vendor id of Google's devices: a machine with none has no TPU (jax's own test).
GOOGLE_PCI_VENDOR = "0x1ae0"
# libtpu on a machine without a TPU (to plan TPU runs). It asks a TPU VM's metadata server for
# these values when JAX starts its backends, and prints a warning for each it cannot find; any
# values quiet it, as compile-only topologies describe their own chips. And it lets one process
# at a time load it, unless told: planning holds no TPU, so several may (tests run in parallel).
LIBTPU_WITHOUT_TPU = {
    "TPU_SKIP_MDS_QUERY": "1",
    "TPU_ACCELERATOR_TYPE": "v5litepod-4",
    "TPU_WORKER_HOSTNAMES": "localhost",
    "ALLOW_MULTIPLE_LIBTPU_LOAD": "1",
}


# XLA:CPU (jaxlib 0.10) wraps the product of VGG's fc7 in one YNNPACK fusion together with
# everything that produces its input, up to the image: every convolution of the network runs
# inside that fusion, at under half the speed of the same program without it (VGG16's logits:
# docs/performance.md). With no YNNPACK fusions at all, XLA's own float32 and bfloat16
# convolutions run, faster again than YNNPACK's single ones (twice as fast in a VGG16 training
# step, whose weight gradients YNNPACK computes slowly). Its float64 convolutions are tens of
# times slower than YNNPACK's: a float64 computation takes YNNPACK back for itself with
# `jax.jit(..., compiler_options=YNN_CONVOLUTIONS_FOR_FLOAT64)`. The flag is read once, when
# JAX starts its CPU backend; other backends ignore xla_cpu_ flags.
YNN_FUSION_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
NO_YNN_FUSIONS = f"{YNN_FUSION_FLAG}="
YNN_CONVOLUTIONS_FOR_FLOAT64 = {
    YNN_FUSION_FLAG.lstrip("-"): "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"
}
# Set (to anything) to keep XLA's own YNNPACK fusions.
KEEP_YNN_FUSIONS = "VGG_JAX_KEEP_YNN_FUSIONS"


class MissingTrainingLibraries(ImportError):
    """The base install, without the libraries of training and the input pipeline."""


@dataclasses.dataclass(frozen=True)
class Unmet:
    requirement: Requirement
    distribution: str  # the installed distribution that falls short
    version: str

    def __str__(self) -> str:
        return f"{self.requirement.name}{self.requirement.specifier} (installed: {self.version})"

    @property
    def upgrade(self) -> str:
        """What to give pip: the installed distribution, with the requirement's versions."""
        return f"'{self.distribution}{self.requirement.specifier}'"


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_requirements(
    requirements: Iterable[str], version_of: Callable[[str], str | None] = installed_version
) -> list[Unmet]:
    """The requirements (the base ones and the train extra's) that no installed distribution
    meets. Requirements with nothing installed, or only versions that are not PEP 440 (some
    local builds), are left out: they are not known to fall short."""
    unmet = []
    for requirement in map(Requirement, requirements):
        if requirement.marker is not None and not requirement.marker.evaluate(
            {"extra": CHECKED_EXTRA}
        ):  # another extra's (test, notebooks), or another platform's
            continue
        installed = []
        for name in ALTERNATIVES.get(requirement.name, (requirement.name,)):
            version = version_of(name)
            if version is None:  # not installed
                continue
            try:
                installed.append((name, version, Version(version)))
            except InvalidVersion:  # a version pip cannot order
                continue
        if installed and not any(
            requirement.specifier.contains(parsed, prereleases=True) for *_, parsed in installed
        ):
            name, version, _ = installed[0]
            unmet.append(Unmet(requirement, name, version))
    return unmet


def check_requirements() -> None:
    try:
        requirements = importlib.metadata.requires("vgg_jax") or []
    except importlib.metadata.PackageNotFoundError:  # a source checkout, not installed
        return
    unmet = unmet_requirements(requirements)
    if unmet:
        upgrade = " ".join(entry.upgrade for entry in unmet)
        raise ImportError(
            f"vgg_jax needs {'; '.join(map(str, unmet))}. Upgrade with pip install -U {upgrade} "
            "(on a GPU, jax with its CUDA extra, e.g. 'jax[cuda12]'), then restart Python (in "
            "Colab: Runtime > Restart session) and import vgg_jax again."
        )


def missing_training_libraries() -> tuple[str, ...]:
    """The distributions of TRAINING_LIBRARIES that cannot be imported (found without importing
    them: TensorFlow takes seconds)."""
    return tuple(
        distribution
        for module, distribution in TRAINING_LIBRARIES.items()
        if not importable(module)
    )


def importable(module: str) -> bool:
    """Whether `module` (a dotted name too) can be imported, found without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a finder that refuses it, a broken entry in sys.modules
        return False


def require_training_libraries() -> None:
    """Raises MissingTrainingLibraries, saying what to install, where the training profile is
    not installed: called by the modules of training, the input pipeline and evaluation before
    their imports, so that a base install names the extra instead of a missing module."""
    missing = missing_training_libraries()
    if missing:
        raise MissingTrainingLibraries(
            f"Training, the input pipeline and evaluation on data sets need "
            f"{', '.join(missing)}, which the base install of vgg_jax leaves out (it builds "
            f"models, loads weights and computes LPIPS). Install them with {INSTALL_TRAINING}."
        )


def quiet_libtpu_without_tpu(environ=os.environ) -> bool:
    """Gives libtpu LIBTPU_WITHOUT_TPU, where it is installed and this machine has no Google
    PCI device (no TPU); values the user set are kept. True where it did. Runs on
    `import vgg_jax`, before JAX starts its backends; a TPU VM is left alone."""
    if not importable("libtpu"):
        return False
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            if pathlib.Path(vendor).read_text().strip() == GOOGLE_PCI_VENDOR:
                return False
        except OSError:
            continue
    for name, value in LIBTPU_WITHOUT_TPU.items():
        environ.setdefault(name, value)
    return True


def turn_off_ynn_fusions(environ=os.environ, jax_started: bool | None = None) -> bool:
    """Adds NO_YNN_FUSIONS to XLA_FLAGS, unless the flag is there already (the user's choice)
    or KEEP_YNN_FUSIONS is set; True where it did. Runs on `import vgg_jax`; where JAX has
    started its backends already (`jax_started`: asked of JAX by default) it is too late, and a
    CPU backend gets a warning that says so."""
    flags = environ.get("XLA_FLAGS", "")
    if YNN_FUSION_FLAG in flags or KEEP_YNN_FUSIONS in environ:
        return False
    environ["XLA_FLAGS"] = f"{flags} {NO_YNN_FUSIONS}".strip()
    bridge = sys.modules.get("jax._src.xla_bridge")
    if jax_started is None:
        jax_started = bridge is not None and bridge.backends_are_initialized()
    if not jax_started:
        return True
    import jax

    if jax.default_backend() == "cpu":
        warnings.warn(
            f"JAX started before vgg_jax was imported, so XLA:CPU keeps the YNNPACK fusion that "
            f"runs VGG at half speed: import vgg_jax before JAX runs anything, or set "
            f"XLA_FLAGS={NO_YNN_FUSIONS} before Python starts (docs/performance.md).",
            stacklevel=3,
        )
    return False
