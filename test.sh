#!/usr/bin/env bash
# Sets up the virtual environment if needed ($DISCO_VENV, default .venv), checks the tree with ruff (a lint error fails
# here, as in CI), then runs the whole test suite (CPU only; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
VENV=${DISCO_VENV:-.venv}
"$VENV/bin/ruff" check --no-cache .
exec "$VENV/bin/python" -m pytest tests "$@"
