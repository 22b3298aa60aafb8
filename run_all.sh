#!/usr/bin/env bash
# The whole report in one command: `python -m hrsnet all` (hrsnet/pipeline.py) with this checkout's
# environment (scripts/ensure_env.sh creates .venv the first time). Options: ./run_all.sh --help
set -euo pipefail
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/scripts/ensure_env.sh"
exec "$PYTHON" -m hrsnet all "$@"
