#!/usr/bin/env bash
# The GPU check for an air-gapped node: install from a wheel bundle without any network, then measure DisCO against
# TRL's GRPOTrainer on one GPU in under 8 minutes (installation included), and write JSON + Markdown.
#
#   bash scripts/offline_bundle.sh bundle                   # on a machine that reaches PyPI; copy bundle/ to the node
#   bash scripts/gpu_check.sh --bundle bundle --out outputs/gpu_check   # on the node
#   bash scripts/gpu_check.sh --dry-run                      # print the plan, touch nothing (no GPU needed)
#   bash scripts/gpu_check.sh --cpu-smoke --out /tmp/x      # the whole code path at tiny size on CPU (the tests;
#                                                            # ZeRO-3 on DeepSpeed's CPU accelerator)
#
# Options: --bundle DIR (install DIR/requirements.txt with `pip install --no-index --find-links DIR`; without it the
# environment must already have disco-trl's dependencies), --out DIR (default outputs/gpu_check), --dry-run,
# --cpu-smoke. Environment: PYTHON (default python3), GPU_CHECK_TIMEOUT (seconds for the measurements, default 450).
# Nothing is downloaded: pip runs with --no-index, the model (Qwen2.5-1.5B's shape, random weights) and its tokenizer
# are built locally, and HF_HUB_OFFLINE=1. What is measured: benchmarks/gpu_check.py and docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
START=$(date +%s)

PY=${PYTHON:-python3}
BUNDLE=""
OUT=outputs/gpu_check
DRY_RUN=0
SMOKE=0
TIMEOUT=${GPU_CHECK_TIMEOUT:-450}
fail() { echo "gpu_check: error: $*" >&2; exit 1; }
while [ $# -gt 0 ]; do
  case "$1" in
    --bundle) [ $# -ge 2 ] || fail "--bundle needs a directory"; BUNDLE=$2; shift 2 ;;
    --out) [ $# -ge 2 ] || fail "--out needs a directory"; OUT=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --cpu-smoke) SMOKE=1; shift ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) fail "unknown option '$1' (see --help)" ;;
  esac
done
CHECK_ARGS=(--out "$OUT")
[ "$SMOKE" = 1 ] && CHECK_ARGS+=(--cpu-smoke)
INSTALL=("$PY" -m pip install --no-index --find-links "$BUNDLE" --no-cache-dir --disable-pip-version-check -q
  -r "$BUNDLE/requirements.txt")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check: dry run, nothing is installed or run."
  if [ -n "$BUNDLE" ]; then
    echo "install (no network): PIP_CONFIG_FILE=/dev/null ${INSTALL[*]}"
  else
    echo "install: none (no --bundle; the environment must have trl, datasets, math-verify, deepspeed, transformers)"
  fi
  echo "run: timeout $TIMEOUT $PY benchmarks/gpu_check.py ${CHECK_ARGS[*]}"
  echo "writes: $OUT/gpu_check.json $OUT/gpu_check.md"
  echo "plan:"
  exec "$PY" benchmarks/gpu_check.py --dry-run "${CHECK_ARGS[@]}"
fi

if [ -n "$BUNDLE" ]; then
  [ -f "$BUNDLE/requirements.txt" ] || fail "$BUNDLE has no requirements.txt: make the bundle with \
scripts/offline_bundle.sh $BUNDLE on a machine that reaches PyPI"
  echo "gpu_check: installing from $BUNDLE (no network)"
  PIP_CONFIG_FILE=/dev/null "${INSTALL[@]}" || fail "installing from $BUNDLE failed (the message above names the \
missing wheel; rebuild the bundle with scripts/offline_bundle.sh)"
fi
"$PY" -c "import trl, datasets, math_verify, transformers, disco_trl" 2>/dev/null || fail "disco-trl's dependencies \
are not importable with $PY: pass --bundle DIR (made by scripts/offline_bundle.sh) or install them"
"$PY" -c "import deepspeed" >/dev/null 2>&1 || fail "DeepSpeed is not installed (measurement 4 runs under ZeRO-3, \
in --cpu-smoke on DeepSpeed's CPU accelerator): pass --bundle DIR, or pip install -e '.[deepspeed]'"
if [ "$SMOKE" = 0 ]; then
  "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" || fail "torch sees no CUDA GPU; \
on a CPU machine use --cpu-smoke"
fi
"$PY" - <<'EOF'
import importlib
names = ("torch", "transformers", "trl", "accelerate", "datasets", "deepspeed")
def version(n):
    try:
        return importlib.import_module(n).__version__
    except ImportError:
        return "not installed"
print("gpu_check: " + " | ".join(f"{n} {version(n)}" for n in names))
EOF
echo "gpu_check: install and checks took $(( $(date +%s) - START )) s"
mkdir -p "$OUT"
set +e
timeout "$TIMEOUT" "$PY" benchmarks/gpu_check.py "${CHECK_ARGS[@]}"
rc=$?
set -e
[ "$rc" = 124 ] && fail "the measurements ran past GPU_CHECK_TIMEOUT=$TIMEOUT s"
[ "$rc" = 0 ] || fail "benchmarks/gpu_check.py failed with exit status $rc"
echo "gpu_check: done in $(( $(date +%s) - START )) s wall time, installation included; results in $OUT"
