# Sourced by run_all.sh and run_tests.sh: sets PYTHON to an interpreter that has the
# project's dependencies. Order: $PYTHON if set and complete; the active environment
# (virtualenv or conda) if it already has them; else ./.venv, created and filled with pip
# from pyproject.toml (pinned by constraints.txt) when missing or incomplete. Conda users:
# `conda env create -f environment.yml && conda activate hrsnet` first.
# shellcheck shell=bash

_repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_required_modules="torch torchvision numpy pandas matplotlib seaborn sklearn scipy tqdm papermill nbconvert ipykernel ipywidgets jupyterlab pytest xdist timm yaml packaging ruff"

_has_dependencies() {  # finds the packages without importing them (importing all takes ~10 s)
    "$1" -c "import importlib.util, sys; sys.exit(any(importlib.util.find_spec(m) is None for m in '${_required_modules}'.split()))" >/dev/null 2>&1
}

if [ -n "${PYTHON:-}" ] && _has_dependencies "$PYTHON"; then
    PYTHON="$(command -v "$PYTHON")"  # an interpreter named explicitly
elif [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] && _has_dependencies python3; then
    PYTHON="$(command -v python3)"
elif [ -x "$_repo_root/.venv/bin/python" ] && _has_dependencies "$_repo_root/.venv/bin/python"; then
    PYTHON="$_repo_root/.venv/bin/python"
else
    _base_python="$(command -v python3 || true)"
    if [ -z "$_base_python" ]; then
        echo "error: python3 (>= 3.10) is needed to create .venv; install it or activate an environment" >&2
        exit 1
    fi
    echo "[env] creating $_repo_root/.venv and installing dependencies (several minutes the first time: torch is large)"
    [ -x "$_repo_root/.venv/bin/python" ] || "$_base_python" -m venv "$_repo_root/.venv"
    "$_repo_root/.venv/bin/python" -m pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
    # Quiet: pip still prints errors; its full log goes to .venv/pip-install.log.
    "$_repo_root/.venv/bin/python" -m pip install --progress-bar off --log "$_repo_root/.venv/pip-install.log" \
        --quiet -c "$_repo_root/constraints.txt" -e "$_repo_root[test]" 2>&1 \
        | grep -v -e "is ignored: it is neither a file nor a directory" || true
    PYTHON="$_repo_root/.venv/bin/python"
    if ! _has_dependencies "$PYTHON"; then
        echo "error: installing the dependencies into .venv failed; see .venv/pip-install.log" >&2
        exit 1
    fi
    echo "[env] .venv is ready"
fi
# The notebooks' kernels and subprocesses import hrsnet from this checkout.
export PYTHONPATH="$_repo_root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHON

# A Jupyter kernel named "hrsnet" running this interpreter: papermill uses it (-k hrsnet) and
# JupyterLab lists it. Registered inside the environment (--sys-prefix), re-registered if moved.
_kernel_json="$("$PYTHON" -c 'import sys; print(sys.prefix)')/share/jupyter/kernels/hrsnet/kernel.json"
if ! grep -qF "\"$PYTHON\"" "$_kernel_json" 2>/dev/null; then
    "$PYTHON" -m ipykernel install --sys-prefix --name hrsnet --display-name "Python 3 (hrsnet)" >/dev/null
fi
