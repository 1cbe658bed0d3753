#!/usr/bin/env bash
# Sets up the virtual environment if needed ($DISCO_VENV, default .venv), then runs the CPU demo: a real DisCO
# training run on a toy math task, from the start model shipped with the package (docs/demo.md gives the time). Extra
# flags go to `disco-trl demo` (try --help, or --quick for a run of well under a minute).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
VENV=${DISCO_VENV:-.venv}
exec "$VENV/bin/disco-trl" demo "$@"
