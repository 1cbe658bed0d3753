#!/usr/bin/env bash
# Sets up the virtual environment if needed ($DISCO_VENV, default .venv), then runs the whole test suite (CPU only;
# GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
VENV=${DISCO_VENV:-.venv}
exec "$VENV/bin/python" -m pytest tests "$@"
