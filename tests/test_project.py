"""Project plumbing: one dependency set, docs that match the code."""
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

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
    pinned = {line.split("==")[0].lower() for line in (REPO / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    assert set(_pyproject_requirements()) <= pinned


def test_ci_runs_the_readme_test_command():
    assert "./run_tests.sh" in (REPO / ".ci" / "run").read_text()
    assert "./run_tests.sh" in (REPO / "README.md").read_text() and "./run_all.sh" in (REPO / "README.md").read_text()
