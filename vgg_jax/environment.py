"""Whether the installed libraries are recent enough for vgg_jax, checked before jax is imported.

Where vgg_jax is installed without its dependencies (Colab's notebooks do that, to keep Colab's
own jax and tensorflow), an older jax or flax would otherwise fail later with an error that
names neither. Runs on `import vgg_jax`, from the installed package's metadata; a source
checkout that is not installed has none and is not checked. A library that is missing is not
reported: the model runs without TensorFlow, and an import that needs one names it.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from typing import Callable, Iterable

from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version

# tensorflow-cpu is what the package asks for; any TensorFlow build serves.
ALTERNATIVES = {"tensorflow-cpu": ("tensorflow-cpu", "tensorflow", "tensorflow-macos")}


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
    """The requirements (without extras) that no installed distribution meets. Requirements
    with nothing installed, or only versions that are not PEP 440 (some local builds), are left
    out: they are not known to fall short."""
    unmet = []
    for requirement in map(Requirement, requirements):
        if requirement.marker is not None:  # an extra's (test, notebooks)
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
