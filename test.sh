#!/usr/bin/env bash
# Sets up the virtual environments if needed, checks the tree with ruff (a lint error fails here, as in CI), then runs
# the whole test suite (CPU only; GPU tests skip themselves):
#   1. the main suite in $DISCO_VENV (default .venv, scripts/setup_env.sh), where the vLLM tests skip, on
#      $DISCO_TEST_WORKERS pytest-xdist workers (default 2, one a core of the 2-core CI machine; a file's tests stay on
#      one worker, so module fixtures are built once);
#   2. the vLLM tests (tests/test_vllm_*.py, marker `vllm`) in $DISCO_VLLM_VENV (default .venv-vllm,
#      scripts/setup_vllm.sh: .venv plus vLLM's CPU build), on as many workers (each test file holds a vLLM engine;
#      measured with 2: 15 GB used at the peak, the real model's file beside another), with DISCO_REQUIRE_VLLM=1 so
#      that a missing vLLM fails them.
# Both runs use OMP_NUM_THREADS=1 unless it is set: with two workers, or a trainer beside a vLLM engine, on 2 cores,
# torch's default threads thrash (measured: the vLLM tests took 111 s instead of 178 s with 2 threads).
# .venv is set up first; .venv-vllm, layered on it, is set up in the background while the main suite runs (measured on
# a fresh clone: 72 s alone; beside the main suite it took 134-164 s and slowed the suite by about 40 s, a net gain of
# about 30 s), and its lines print when the vLLM tests are about to start. A failed vLLM set-up still lets the main
# suite run, and is reported after it.
# Arguments go to both pytest runs, after the defaults (`-n 0` runs a suite in one process). The exit status is
# non-zero if either run or a set-up fails; the last line says it, after the two pytest summaries (nothing is printed
# after them: triton, whose exit messages used to follow, is left out of .venv-vllm).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup_env.sh
vllm_setup_log=$(mktemp)
setsid bash scripts/setup_vllm.sh >"$vllm_setup_log" 2>&1 &  # its own process group: stopped with its pip
vllm_setup_pid=$!
stop_vllm_setup() { kill -- "-$vllm_setup_pid" 2>/dev/null || true; rm -f "$vllm_setup_log"; }
trap 'stop_vllm_setup; exit 130' INT TERM  # an interrupted run stops the set-up too
VENV=${DISCO_VENV:-.venv}
VLLM_VENV=${DISCO_VLLM_VENV:-.venv-vllm}
[[ "$VENV" = /* ]] || VENV="$PWD/$VENV"
[[ "$VLLM_VENV" = /* ]] || VLLM_VENV="$PWD/$VLLM_VENV"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
ruff_status=0
"$VENV/bin/ruff" check --no-cache . || ruff_status=$?
if [ "$ruff_status" -ne 0 ]; then  # a lint error ends the run at once (the set-up is run again next time)
  stop_vllm_setup
  exit "$ruff_status"
fi
status=0
"$VENV/bin/python" -m pytest tests -n "${DISCO_TEST_WORKERS:-2}" --dist loadfile "$@" || status=$?
vllm_setup_status=0
wait "$vllm_setup_pid" || vllm_setup_status=$?
trap - INT TERM
cat "$vllm_setup_log"
rm -f "$vllm_setup_log"
if [ "$vllm_setup_status" -ne 0 ]; then
  echo "[test] exit status $vllm_setup_status (main suite $status, vLLM set-up failed: see above)"
  exit "$vllm_setup_status"
fi
vllm_status=0
DISCO_REQUIRE_VLLM=1 "$VLLM_VENV/bin/python" -m pytest tests -m vllm -o "python_files=test_vllm_*.py" \
  -n "${DISCO_TEST_WORKERS:-2}" --dist loadfile "$@" || vllm_status=$?
if [ "$vllm_status" -eq 5 ]; then  # no vLLM test among the arguments' selection
  vllm_status=0
fi
main_status=$status
if [ "$status" -eq 0 ]; then
  status=$vllm_status
fi
echo "[test] exit status $status (main suite $main_status, vLLM tests $vllm_status)"
exit "$status"
