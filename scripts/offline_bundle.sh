#!/usr/bin/env bash
# Wheels for a GPU node without internet: run this on a machine that reaches PyPI, copy DIR to the node, then run
#   bash scripts/gpu_check.sh --bundle DIR
#
#   bash scripts/offline_bundle.sh DIR            # resolve, download, build the DeepSpeed wheel, print content and size
#   bash scripts/offline_bundle.sh DIR --dry-run  # print what it would fetch and the commands, touch nothing
#
# Target: Python 3.12, manylinux x86_64 (binary wheels only, --only-binary=:all:).
# The node is assumed to be a stock CUDA PyTorch image holding ONLY these (and what they depend on):
#   torch 2.11 (CUDA), transformers 5.17, accelerate 1.15, peft, tokenizers 0.23, safetensors, numpy, pandas,
#   pyarrow, pyyaml, requests, tqdm.
# The bundle brings what disco-trl needs beyond them: trl, datasets and its missing dependencies, math-verify and its
# dependencies, DeepSpeed (sdist-only on PyPI: a wheel is built here with `pip wheel --no-deps`; it is pure Python,
# its CUDA ops are JIT-compiled on first use) and its dependencies, and transformers because the node's 5.17 is older
# than our pin (setup.cfg). The versions are the ones the test suite runs with: those installed in $PYTHON when it has
# all five (run it with the test environment's python: PYTHON=.venv/bin/python), else the ones recorded below, last
# tested; the dry run says which.
# pip: the resolution runs `pip install --dry-run --report` for another platform with --target, which pip before 23.3
# requires for platform options (tested with the pip 23.2.1 of a fresh Python 3.11 venv, and pip 26). The script first
# checks, offline, that $PYTHON's pip accepts those options, and otherwise names the upgrade in one line.
# NOT in the bundle: vLLM. Its wheel alone is far larger than the whole bundle (hundreds of MiB, plus its own CUDA
# libraries), and it pins its own torch, which would replace the node's; gpu_check.sh generates with transformers.
# The bundle must stay under 60 MiB; the script fails if it does not.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
MAX_MIB=60
NODE_TRANSFORMERS=5.17.0
# The node, as pip requirements (the GPU image described above; versions where it is known).
NODE_PACKAGES=("torch==2.11.*" "transformers==5.17.*" "accelerate==1.15.*" peft "tokenizers==0.23.*" safetensors
  numpy pandas pyarrow pyyaml requests tqdm)
# What we bring: the versions installed in $PY, else these.
RECORDED=(trl==1.16.0 datasets==5.2.0 math-verify==0.9.0 transformers==5.25.0 deepspeed==0.19.8)
PIN_TRANSFORMERS=$(sed -n 's/^ *transformers>=\([0-9.]*\).*/\1/p' setup.cfg)
# DeepSpeed's own requirements (its wheel is built here without them; they are resolved like the others).
DEEPSPEED_DEPS=(hjson msgpack ninja "numpy" packaging psutil py-cpuinfo "pydantic>=2.0.0" "torch" tqdm einops)
TARGET=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312
  --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_31_x86_64
  --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 --platform manylinux_2_39_x86_64)

fail() { echo "offline_bundle: error: $*" >&2; exit 1; }
usage() { echo "usage: bash scripts/offline_bundle.sh DIR [--dry-run]" >&2; exit 2; }
DIR=""
DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h | --help) sed -n '2,23p' "$0"; exit 0 ;;
    -*) echo "offline_bundle: error: unknown option $arg" >&2; usage ;;
    *) [ -z "$DIR" ] || usage; DIR=$arg ;;
  esac
done
[ -n "$DIR" ] || usage
"$PY" -c "import sys" 2>/dev/null || fail "PYTHON=$PY is not a Python interpreter"
PIP_VERSION=$("$PY" -m pip --version 2>/dev/null | awk '{print $2}') || true
[ -n "$PIP_VERSION" ] || fail "$PY has no pip: install it with $PY -m ensurepip --upgrade"

choose_pins() {  # PINS (name==version for RECORDED's names) and PINS_FROM: $PY's installed versions, else RECORDED
  local installed
  installed=$("$PY" - "${RECORDED[@]%%==*}" <<'PYEOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        print(f"{name} missing")
PYEOF
)
  if grep -q " missing$" <<<"$installed"; then
    PINS=("${RECORDED[@]}")
    PINS_FROM="recorded in this script: $PY lacks $(sed -n 's/ missing$//p' <<<"$installed" | paste -sd' ') (run with \
PYTHON=the test environment's python to bundle the versions it runs)"
  else
    mapfile -t PINS <<<"$installed"
    PINS_FROM="installed in $PY"
  fi
}
pin() { printf '%s\n' "${PINS[@]}" | grep "^$1=="; }
choose_pins
# math-verify's extra in its normalised spelling (the name its metadata gives): pip before 23.3 matches extras
# literally and would skip `antlr4_13_2` with a warning.
OURS=("$(pin trl)" "$(pin datasets)" "$(pin math-verify | sed 's/^math-verify==/math-verify[antlr4-13-2]==/')")
DEEPSPEED=$(pin deepspeed)
newer=$("$PY" -c "import sys; v=lambda s: tuple(int(x) for x in s.split('.')[:2]); print(int(v(sys.argv[1]) < v(sys.argv[2])))" \
  "$NODE_TRANSFORMERS" "$PIN_TRANSFORMERS")
if [ "$newer" = 1 ]; then
  OURS+=("$(pin transformers)")  # node's transformers $NODE_TRANSFORMERS < our pin >=$PIN_TRANSFORMERS
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# torch stands in as a metadata-only wheel (version 2.11.0+node): resolving the real CUDA torch would pull the
# metadata of its nvidia-* wheels, which are on the node already and need not be on any index.
"$PY" - "$work/stub" <<'STUB'
import sys, zipfile
from pathlib import Path
out = Path(sys.argv[1]); out.mkdir()
info = "torch-2.11.0+node.dist-info"
deps = ["filelock", "typing-extensions>=4.10.0", "sympy>=1.13.3", "networkx>=2.5.1", "jinja2", "fsspec>=0.8.5"]
meta = "Metadata-Version: 2.1\nName: torch\nVersion: 2.11.0+node\n" + "".join(f"Requires-Dist: {d}\n" for d in deps)
with zipfile.ZipFile(out / "torch-2.11.0+node-py3-none-any.whl", "w") as whl:
    whl.writestr(f"{info}/METADATA", meta)
    whl.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: offline_bundle\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    whl.writestr(f"{info}/RECORD", "")
STUB
# pip install --dry-run for the target platform: --target (never written to) makes pip < 23.3 accept --platform.
RESOLVE=(-m pip install --dry-run --ignore-installed --target "$work/target" --quiet --disable-pip-version-check
  "${TARGET[@]}")
# Offline first: the options above on the stub alone. A pip that refuses them would fail later, after fetching.
preflight=$("$PY" "${RESOLVE[@]}" --report "$work/preflight.json" --no-deps --no-index --find-links "$work/stub" \
  "torch==2.11.0+node" 2>&1 | grep -v "^WARNING: Location") || true
[ -s "$work/preflight.json" ] || fail "pip $PIP_VERSION of $PY refuses the options the bundle resolves with \
($(tail -n 1 <<<"$preflight")): upgrade it with $PY -m pip install --upgrade pip"

if [ "$DRY_RUN" = 1 ]; then
  echo "offline_bundle: dry run, nothing is fetched. Target: Python 3.12, manylinux x86_64, binary wheels only."
  echo "pip $PIP_VERSION of $PY: accepts the resolve options (checked offline on a stub wheel)"
  echo "versions: ${PINS[*]} ($PINS_FROM)"
  echo "node has (not bundled): ${NODE_PACKAGES[*]} (and their dependencies)"
  echo "transformers: node $NODE_TRANSFORMERS, our pin >=$PIN_TRANSFORMERS -> $([ "$newer" = 1 ] && echo bundled || echo 'not bundled')"
  echo "would fetch: ${OURS[*]} $DEEPSPEED, and every dependency of them the node lacks"
  echo "deepspeed: sdist only on PyPI; built here: $PY -m pip wheel --no-deps --no-build-isolation $DEEPSPEED -w $DIR"
  echo "deepspeed dependencies resolved with the others: ${DEEPSPEED_DEPS[*]}"
  echo "resolve: $PY ${RESOLVE[*]/$work/<tmp>} --report <report.json> <requirements>"
  echo "download: $PY -m pip download --no-deps ${TARGET[*]} -d $DIR NAME==VERSION (each package the node lacks)"
  echo "not bundled: vLLM (its wheel alone is far larger than the ${MAX_MIB} MiB bundle and it pins its own torch)"
  echo "limit: ${MAX_MIB} MiB"
  exit 0
fi

"$PY" -c "import torch, setuptools" 2>/dev/null || fail "building the DeepSpeed wheel needs torch and setuptools in \
$PY (any build; e.g. pip install torch --index-url https://download.pytorch.org/whl/cpu)"
mkdir -p "$DIR"

resolve() {  # report file, requirements...: what pip would install for the target, as name==version lines
  local report=$1
  shift
  "$PY" "${RESOLVE[@]}" --report "$report" --find-links "$work/stub" "$@" 2>&1 | grep -v "^WARNING: Location" || true
  [ -s "$report" ] || fail "pip could not resolve: $*"
}
# Only the listed packages count as present; every other dependency is bundled even if the node may have it (a few
# MiB): pip keeps what the node has when it satisfies the pins, and finds the rest in the bundle, never online.
CONSTRAINTS=("torch==2.11.0+node" "accelerate==1.15.*" "tokenizers==0.23.*")
printf '%s\n' "${CONSTRAINTS[@]}" >"$work/constraints.txt"
echo "[bundle] versions: ${PINS[*]} ($PINS_FROM)"
echo "[bundle] resolving ours against the node (metadata only)"
resolve "$work/ours.json" -c "$work/constraints.txt" "${OURS[@]}" "${DEEPSPEED_DEPS[@]}"
"$PY" - "$work/ours.json" "${NODE_PACKAGES[@]}" >"$work/fetch.txt" <<'EOF'
import json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
node = {norm(re.split(r"[=<>\[]", p)[0]) for p in sys.argv[2:]} - {"transformers"}  # ours is newer: bundled
for item in json.load(open(sys.argv[1]))["install"]:
    name, version = item["metadata"]["name"], item["metadata"]["version"]
    if norm(name) not in node:
        print(f"{name}=={version}")
EOF
echo "[bundle] fetching $(wc -l <"$work/fetch.txt") wheels: $(tr '\n' ' ' <"$work/fetch.txt")"
"$PY" -m pip download --quiet --no-deps "${TARGET[@]}" -d "$DIR" -r "$work/fetch.txt" 2>&1 | grep -v "^WARNING: Location" || true
echo "[bundle] building the DeepSpeed wheel ($DEEPSPEED, no compiled ops)"
DS_BUILD_OPS=0 "$PY" -m pip wheel --quiet --no-deps --no-build-isolation "$DEEPSPEED" -w "$DIR" 2>&1 \
  | grep -v "^WARNING: Location" || true
ls "$DIR"/deepspeed-*.whl >/dev/null 2>&1 || fail "no DeepSpeed wheel was built"
printf '%s\n' "${OURS[@]}" "$DEEPSPEED" >"$DIR/requirements.txt"  # what gpu_check.sh installs

echo "[bundle] content of $DIR:"
ls -l "$DIR" | awk 'NR > 1 {printf "  %8.2f MiB  %s\n", $5 / 1048576, $NF}'
bytes=$(du -sb "$DIR" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN {printf "%.1f", b / 1048576}')
echo "[bundle] total: $mib MiB in $(ls "$DIR" | wc -l) files (limit $MAX_MIB MiB). No vLLM (see the header)."
awk -v b="$bytes" -v m="$MAX_MIB" 'BEGIN {exit !(b <= m * 1048576)}' || fail "the bundle is $mib MiB, over the \
$MAX_MIB MiB limit"
