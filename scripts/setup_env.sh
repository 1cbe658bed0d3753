#!/usr/bin/env bash
# Creates .venv (if needed) and installs disco-trl with its test tools and the [deepspeed] extra. Idempotent: a second run does nothing unless
# setup.cfg changed. Torch is pinned to 2.13.0 first so that pip never pulls a multi-GB CUDA build on a CPU machine;
# set DISCO_TORCH to choose another torch requirement (e.g. DISCO_TORCH="torch==2.13.0" is the default).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DISCO_VENV:-.venv}
TORCH_REQ=${DISCO_TORCH:-torch==2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.disco-installed"
want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_REQ"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing $TORCH_REQ and disco-trl[dev,deepspeed] into $VENV (first run takes a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q "$TORCH_REQ" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q -e ".[dev,deepspeed]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, trl, disco_trl; print('[setup] torch', torch.__version__, '| trl', trl.__version__, '| disco_trl', disco_trl.__version__)"
echo "$want" > "$stamp"
