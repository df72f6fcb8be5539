"""The repository's address is written once, in pyproject.toml's [project.urls]; every copy of
it (the notebooks' Colab badges and install cells, the README's and the docs' links, mkdocs.yml)
must name the same repository, and the notebooks they link must exist."""

import re
import tomllib

import nbformat
from helpers import ROOT

URLS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
REPOSITORY = URLS["Repository"]
OWNER_AND_NAME = REPOSITORY.removeprefix("https://github.com/")

COLAB = re.compile(r"https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)/blob/main/"
                   r"([\w./-]+\.ipynb)")  # fmt: skip
GIT_INSTALL = re.compile(r"git\+https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?@")
GITHUB = re.compile(r"https://github\.com/([\w.-]+/[\w.-]+)")
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")


def project_files():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    return pages, notebooks


def test_pyproject_states_the_license_and_the_project_urls():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "BSD-3-Clause"
    assert all((ROOT / name).is_file() for name in project["license-files"])
    assert set(URLS) == {"Homepage", "Documentation", "Repository", "Issues"}
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", REPOSITORY)
    assert URLS["Issues"] == f"{REPOSITORY}/issues" and URLS["Homepage"] == REPOSITORY


def test_every_colab_link_and_install_cell_names_the_repository():
    pages, notebooks = project_files()
    colab, installs = [], []
    for notebook in notebooks:
        cells = nbformat.read(notebook, as_version=4).cells
        [(repository, path)] = COLAB.findall(cells[0].source)  # the badge: its own notebook
        assert (repository, path) == (OWNER_AND_NAME, f"notebooks/{notebook.name}")
        installs += GIT_INSTALL.findall(cells[1].source)
    for page in pages:
        colab += COLAB.findall(page.read_text())
    assert len(installs) == len(notebooks) == 3 and set(installs) == {OWNER_AND_NAME}
    assert len(colab) >= 6  # the README's three notebooks, and the docs' notebook page
    for repository, path in colab:
        assert repository == OWNER_AND_NAME and (ROOT / path).is_file(), (repository, path)


def test_links_to_this_project_on_github_name_the_repository():
    pages, notebooks = project_files()
    for path in [*pages, *notebooks, ROOT / "mkdocs.yml"]:
        for repository in GITHUB.findall(path.read_text()):
            if repository.lower().endswith("/vgg_jax"):
                assert repository == OWNER_AND_NAME, f"{path.name} links {repository}"
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert re.search(rf"^repo_url: {re.escape(REPOSITORY)}$", mkdocs, re.MULTILINE)
    assert re.search(rf"^repo_name: {re.escape(OWNER_AND_NAME)}$", mkdocs, re.MULTILINE)
    assert re.search(rf"^site_url: {re.escape(URLS['Documentation'])}$", mkdocs, re.MULTILINE)


def test_the_readme_s_relative_links_name_files_that_exist():
    """GitHub shows the README, not the site: its links to docs/ must name the Markdown files."""
    links = MARKDOWN_LINK.findall((ROOT / "README.md").read_text())
    relative = [link.split("#")[0] for link in links if not re.match(r"https?:|#", link)]
    assert len(relative) >= 10
    missing = [link for link in relative if not (ROOT / link).is_file()]
    assert not missing, missing
