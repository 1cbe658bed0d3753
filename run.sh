#!/usr/bin/env bash
# Sets up .venv if needed, then runs the CPU demo: a real DisCO training run on a toy math task (about 10 minutes
# on 2 cores). Extra flags go to `disco-trl demo` (try --help, or --quick for a one-minute run).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
exec .venv/bin/disco-trl demo "$@"
