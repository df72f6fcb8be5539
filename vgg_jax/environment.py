"""Whether the installed libraries are recent enough for vgg_jax, checked before jax is imported.

Where vgg_jax is installed without its dependencies (Colab's notebooks do that, to keep Colab's
own jax and tensorflow), an older jax or flax would otherwise fail later with an error that
names neither. Runs on `import vgg_jax`, from the installed package's metadata; a source
checkout that is not installed has none and is not checked. A library that is missing is not
reported: the model runs without TensorFlow, and an import that needs one names it.
"""

from __future__ import annotations

import importlib.metadata
from typing import Callable, Iterable

from packaging.requirements import Requirement

# tensorflow-cpu is what the package asks for; any TensorFlow build serves.
ALTERNATIVES = {"tensorflow-cpu": ("tensorflow-cpu", "tensorflow", "tensorflow-macos")}


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def unmet_requirements(
    requirements: Iterable[str], version_of: Callable[[str], str | None] = installed_version
) -> list[str]:
    """The requirements (without extras) whose installed versions are all too old or too new,
    each as 'name>=X (installed: Y)'. Requirements with nothing installed are left out."""
    unmet = []
    for requirement in map(Requirement, requirements):
        if requirement.marker is not None:  # an extra's (test, notebooks)
            continue
        names = ALTERNATIVES.get(requirement.name, (requirement.name,))
        versions = [v for v in map(version_of, names) if v is not None]
        if versions and not any(
            requirement.specifier.contains(v, prereleases=True) for v in versions
        ):
            found = ", ".join(versions)
            unmet.append(f"{requirement.name}{requirement.specifier} (installed: {found})")
    return unmet


def check_requirements() -> None:
    try:
        requirements = importlib.metadata.requires("vgg_jax") or []
    except importlib.metadata.PackageNotFoundError:  # a source checkout, not installed
        return
    unmet = unmet_requirements(requirements)
    if unmet:
        upgrade = " ".join(f"'{entry.split(' (')[0]}'" for entry in unmet)
        raise ImportError(
            f"vgg_jax needs {'; '.join(unmet)}. Install them (pip install -U {upgrade}), then "
            "restart Python (in Colab: Runtime > Restart session) and import vgg_jax again."
        )
