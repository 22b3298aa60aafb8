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


def _readme_section(name):
    text = (REPO / "README.md").read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    assert start in text and end in text, f"README lacks the {name} markers"
    return text[text.index(start) + len(start) : text.index(end)].strip()


def test_readme_architecture_table_comes_from_summary():
    """The README's parameter/FLOP table is what `python -m hrsnet summary --markdown` prints."""
    from hrsnet.analysis.paper import architecture_table, claim_finding
    from hrsnet.analysis.tables import markdown_table

    table = architecture_table(None, (2, 18, 30), 224, 100)
    assert _readme_section("architecture-table") == markdown_table(table) + "\n\n" + claim_finding(table, 100)


def test_readme_profiles_match_experiments():
    from hrsnet.profiles import PROFILES

    text = (REPO / "README.md").read_text()
    quick = PROFILES["quick"].settings
    assert (
        f"{quick['train_subset']} training images, batch {quick['batch_size']}, at most {quick['epochs']} epochs"
        in text
    )


def test_readme_option_table_comes_from_trainconfig():
    from hrsnet.config import settings_markdown

    assert _readme_section("train-options") == settings_markdown()
