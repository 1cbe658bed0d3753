#!/usr/bin/env bash
# Sets up .venv if needed, then runs the whole test suite (CPU only; GPU tests skip themselves).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest tests "$@"
