# Sourced by run_all.sh and run_tests.sh: sets PYTHON to an interpreter that has the
# project's dependencies. Order: the active environment (virtualenv or conda) if it
# already has them, else ./.venv, created and filled with pip from pyproject.toml
# (pinned by constraints.txt) when missing or incomplete. Conda users:
# `conda env create -f environment.yml && conda activate hrsnet` first.
# shellcheck shell=bash

_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_required_modules="torch, torchvision, numpy, pandas, matplotlib, seaborn, sklearn, tqdm, papermill, nbconvert, ipykernel, jupyterlab, pytest, timm"

_has_dependencies() {
    "$1" -c "import ${_required_modules}" >/dev/null 2>&1
}

_candidate="${PYTHON:-python3}"
if [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && _has_dependencies "$_candidate"; then
    PYTHON="$(command -v "$_candidate")"
    echo "[env] using the active environment: $PYTHON"
elif [ -x "$_repo_root/.venv/bin/python" ] && _has_dependencies "$_repo_root/.venv/bin/python"; then
    PYTHON="$_repo_root/.venv/bin/python"
    echo "[env] using $PYTHON"
else
    _base_python="$(command -v python3 || true)"
    if [ -z "$_base_python" ]; then
        echo "error: python3 (>= 3.10) is needed to create .venv; install it or activate an environment" >&2
        exit 1
    fi
    echo "[env] creating $_repo_root/.venv and installing dependencies (several minutes the first time: torch is large)"
    [ -x "$_repo_root/.venv/bin/python" ] || "$_base_python" -m venv "$_repo_root/.venv"
    "$_repo_root/.venv/bin/python" -m pip install --quiet --upgrade pip
    # The progress of a multi-GB download matters to a newcomer; errors stay visible.
    "$_repo_root/.venv/bin/python" -m pip install --progress-bar off \
        -c "$_repo_root/constraints.txt" -e "$_repo_root[test]" 2>&1 \
        | grep -v -e "is ignored: it is neither a file nor a directory" -e "^Requirement already satisfied" || true
    PYTHON="$_repo_root/.venv/bin/python"
    if ! _has_dependencies "$PYTHON"; then
        echo "error: installing the dependencies into .venv failed; see the pip output above" >&2
        exit 1
    fi
fi
# The notebooks' kernels and subprocesses import hrsnet from this checkout.
export PYTHONPATH="$_repo_root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON
