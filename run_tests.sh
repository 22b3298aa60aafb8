#!/usr/bin/env bash
# Runs the lint and format check (ruff), then the test suite (offline, a few minutes on 2 CPU
# cores) on $HRSNET_TEST_WORKERS pytest-xdist workers (default 2; 0 runs in this process).
# Creates .venv first if no active environment has the dependencies. Extra arguments go to
# pytest: ./run_tests.sh -k models
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_env.sh
"$PYTHON" -m ruff check hrsnet tests
"$PYTHON" -m ruff format --check hrsnet tests
exec "$PYTHON" -m pytest -n "${HRSNET_TEST_WORKERS:-2}" "$@"
