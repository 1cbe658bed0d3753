#!/usr/bin/env bash
# Creates .venv (if needed) and installs disco-trl with its test tools and the [deepspeed] extra. Idempotent: a second run does nothing unless
# setup.cfg changed. Torch is pinned to 2.13.0 first so that pip never pulls a multi-GB CUDA build on a CPU machine;
# set DISCO_TORCH to choose another torch requirement (e.g. DISCO_TORCH="torch==2.13.0" is the default).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${DISCO_VENV:-.venv}
TORCH_REQ=${DISCO_TORCH:-torch==2.13.0}
# setuptools announces every editable install with a boxed warning ("Editable installation."), which pip passes on
# even with -q; it is not an error, so it is not shown.
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# DeepSpeed on CPU (tests/test_deepspeed.py runs ZeRO-2/3 on 2 CPU processes) JIT-compiles its shared-memory
# communication op with a C++ compiler (torch's cpp_extension: $CXX, else c++) and ninja the first time a process
# group starts. Check for the compiler with a clear message, and build the op once here so that the tests do not pay for
# it (~35 s on 2 cores; cached in ${TORCH_EXTENSIONS_DIR:-$VENV/torch_extensions}, one folder per environment, which
# tests/conftest.py points the tests at: torch's default ~/.cache/torch_extensions is shared by every environment of
# the machine, and two with different torch builds would rebuild it in turn). DS_ACCELERATOR=cpu selects DeepSpeed's
# CPU accelerator (gloo) even on a machine with a GPU; the tests set it themselves.
deepspeed_cpu_prerequisites() {
  local cxx=${CXX:-c++}
  if ! command -v "$cxx" >/dev/null 2>&1; then
    echo "[setup] error: no C++ compiler ('$cxx' not found). DeepSpeed on CPU compiles its communication op at the" \
         "first launch, so tests/test_deepspeed.py needs one: install g++ (apt-get install g++, or build-essential)" \
         "or point CXX at a compiler." >&2
    exit 1
  fi
  echo "[setup] building DeepSpeed's CPU communication op (deepspeed_shm_comm) with $cxx"
  TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$(cd "$VENV" && pwd)/torch_extensions} DS_ACCELERATOR=cpu \
    "$VENV/bin/python" -c "from deepspeed.accelerator import get_accelerator; \
get_accelerator().create_op_builder('ShareMemCommBuilder').load(verbose=False)" >/dev/null
}
stamp="$VENV/.disco-installed"
want="$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1) $TORCH_REQ"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] installing $TORCH_REQ and disco-trl[dev,deepspeed] into $VENV (first run takes a few minutes)"
# pip byte-compiles what it installs one file at a time; compileall does it on every core afterwards (measured on 2
# cores: 82 s for the installs and the compilation instead of 125 s). The .pyc files are needed: without them every
# import compiles again (PYTHONDONTWRITEBYTECODE, set on some machines, keeps Python from writing them), and importing
# torch, TRL and disco_trl takes 16 s instead of 7 s in each process.
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --no-compile "$TORCH_REQ" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q --no-compile -e ".[dev,deepspeed]" 2>&1 | grep -v "^WARNING: Location" || true
# Its messages are not shown: a file that does not compile (a template, a Python 2 example) is skipped, as pip does.
site_packages=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
"$VENV/bin/python" -m compileall -q -j 0 "$site_packages" >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import torch, trl, disco_trl; print('[setup] torch', torch.__version__, '| trl', trl.__version__, \
'| disco_trl', disco_trl.__version__)"
deepspeed_cpu_prerequisites
echo "$want" > "$stamp"
echo "[setup] $VENV ready in $SECONDS s"
