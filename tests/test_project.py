"""Project plumbing: one dependency set, docs that match the code."""

import re
import sys
from pathlib import Path

import yaml
from packaging.requirements import Requirement

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the tomli backport (declared in the test extra)
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"pytorch": "torch"}  # conda-forge package name -> PyPI distribution name


def _pyproject_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    return {Requirement(r).name.lower(): str(Requirement(r).specifier) for r in requirements}


def test_environment_yml_matches_pyproject():
    environment = yaml.safe_load((REPO / "environment.yml").read_text())
    conda = {}
    for entry in environment["dependencies"]:
        if isinstance(entry, str) and not entry.startswith(("python", "pip")):
            name, specifier = re.match(r"([A-Za-z0-9_.-]+)(.*)", entry).groups()
            conda[CONDA_NAMES.get(name, name).lower()] = specifier
    assert conda == _pyproject_requirements()
    assert {"-e ."} <= set(next(e["pip"] for e in environment["dependencies"] if isinstance(e, dict)))


def test_constraints_pin_every_dependency():
    pinned = {
        line.split("==")[0].lower()
        for line in (REPO / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    assert set(_pyproject_requirements()) <= pinned


def test_ci_runs_the_readme_test_command():
    assert "./run_tests.sh" in (REPO / ".ci" / "run").read_text()
    assert "./run_tests.sh" in (REPO / "README.md").read_text() and "./run_all.sh" in (REPO / "README.md").read_text()


def test_generated_tables_match_the_code():
    """Every table in README.md and docs/ that mirrors the code (options, presets, architecture,
    profiles, the layout, the findings) is what `python -m hrsnet docs` makes from it now."""
    from hrsnet.tools.docs import stale_blocks

    assert stale_blocks() == [], "run `python -m hrsnet docs` to rewrite them"


def test_readme_is_a_front_page():
    """README.md stays short; the rest lives in docs/, and every page it links exists."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (REPO / link).exists(), link
    assert "digits" in text.split("## Two commands")[0]  # the scope comes before anything else


def test_docs_speak_of_the_product_only():
    """No word about how the project is made, in the docs or the package."""
    words = re.compile(r"\b(sessions?|issues? \d|lent)\b", re.IGNORECASE)
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "hrsnet").rglob("*.py"))]
    found = [
        f"{path.relative_to(REPO)}: {match.group(0)}" for path in files for match in words.finditer(path.read_text())
    ]
    assert not found, found
