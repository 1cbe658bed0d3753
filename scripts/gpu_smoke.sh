#!/usr/bin/env bash
# GPU smoke test: a few DisCO steps on a small real model, on one CUDA GPU,
#   1. with vLLM colocated in the training process (accelerate, one process), then
#   2. under DeepSpeed ZeRO-3 on the same single GPU (with vLLM colocated too, as in the 7B/8B recipes),
# and for each run prints the step time, the tokens per second and the peak GPU memory.
#
#   bash scripts/gpu_smoke.sh                 # needs: a CUDA torch build, pip install -e '.[vllm,deepspeed]'
#   SMOKE_RUNS=zero3 bash scripts/gpu_smoke.sh
#
# Knobs (environment): SMOKE_MODEL (Hub id or local dir, default Qwen/Qwen2.5-0.5B-Instruct; the Hub must be reachable
# or the model cached), SMOKE_DATASET (default: a generated local JSONL of arithmetic questions, so only the model is
# downloaded; any disco_trl.data source works, e.g. math), SMOKE_STEPS (optimizer updates per run, default 6),
# SMOKE_COMPLETION (max completion tokens, default 1024), SMOKE_GPU (device index, default 0), SMOKE_OUT (default
# outputs/gpu_smoke), SMOKE_RUNS ("colocate zero3", the default, or one of them), SMOKE_DRY_RUN=1 (print the launch
# commands, one argument per line, and exit without checking for a GPU: used by the tests).
#
# Needs network (the model comes from the Hub) and vLLM. On a node WITHOUT internet, or for the DisCO-vs-GRPO numbers,
# use scripts/gpu_check.sh instead (wheels from scripts/offline_bundle.sh, random model built locally, no vLLM).
#
# The first update of each run includes vLLM start-up and CUDA graph capture; the report gives it apart from the
# steady-state mean.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
MODEL=${SMOKE_MODEL:-Qwen/Qwen2.5-0.5B-Instruct}
STEPS=${SMOKE_STEPS:-6}
COMPLETION=${SMOKE_COMPLETION:-1024}
GPU=${SMOKE_GPU:-0}
OUT=${SMOKE_OUT:-outputs/gpu_smoke}
RUNS=${SMOKE_RUNS:-colocate zero3}
DRY_RUN=${SMOKE_DRY_RUN:-0}
DATASET=${SMOKE_DATASET:-$OUT/arithmetic.jsonl}

fail() {
  echo "gpu_smoke: error: $*" >&2
  exit 1
}

# Training options shared by both runs: the paper's group size and sampling, a small batch geometry (4 questions x 8
# completions per generation, 2 questions per update, so the second update of each generation is KL-constrained), and
# 4 sequences per micro-batch, so each group of 8 spans two micro-steps as in the 7B/8B recipes.
COMMON=(
  --model_name_or_path "$MODEL"
  --dataset_name "$DATASET"
  --dtype bfloat16
  --bf16 true
  --num_generations 8
  --generation_batch_size 32
  --per_device_train_batch_size 4
  --gradient_accumulation_steps 4
  --expected_questions_per_generation 4
  --expected_questions_per_update 2
  --max_completion_length "$COMPLETION"
  --temperature 0.6
  --learning_rate 1.0e-6
  --score_type log_l
  --max_steps "$STEPS"
  --logging_steps 1
  --save_strategy no
  --report_to none
  --use_vllm true
  --vllm_mode colocate
  --vllm_gpu_memory_utilization 0.3
  --vllm_max_model_length $((COMPLETION + 512))
)

launch_args() {  # the full command of one run
  case "$1" in
    colocate) echo accelerate launch --config_file recipes/accelerate/single_gpu.yaml --num_processes 1 ;;
    zero3) echo accelerate launch --config_file recipes/accelerate/zero3.yaml --num_processes 1 ;;
  esac
}

for run in $RUNS; do
  case "$run" in colocate | zero3) ;; *) fail "unknown run '$run' in SMOKE_RUNS (use colocate and/or zero3)" ;; esac
done

if [ "$DRY_RUN" = 1 ]; then
  for run in $RUNS; do
    echo "# run: $run"
    printf '%s\n' $(launch_args "$run") examples/train_disco.py "${COMMON[@]}" --output_dir "$OUT/$run"
  done
  exit 0
fi

# ------------------------------------------------------------------ fail early and clearly without what we need
command -v nvidia-smi >/dev/null 2>&1 || fail "nvidia-smi was not found: this script needs a machine with an NVIDIA \
GPU and its driver. On a CPU machine run the CPU demo instead: bash run.sh"
"$PY" - <<'EOF' || fail "torch cannot see a CUDA GPU (a CPU-only torch build, or CUDA_VISIBLE_DEVICES hides the GPUs). \
Install a CUDA build of torch (pip install torch --index-url https://download.pytorch.org/whl/cu128)."
import sys, torch
sys.exit(0 if torch.cuda.is_available() else 1)
EOF
"$PY" -c "import vllm" >/dev/null 2>&1 || fail "vLLM is not installed: pip install -e '.[vllm]' (vllm>=0.22.0,<=0.31.0, \
the range TRL 1.16 supports)."
case " $RUNS " in *" zero3 "*)
  "$PY" -c "import deepspeed" >/dev/null 2>&1 || fail "DeepSpeed is not installed (needed by the zero3 run): \
pip install -e '.[deepspeed]'" ;;
esac
command -v accelerate >/dev/null 2>&1 || fail "the accelerate command is not on PATH (activate the environment)."

mkdir -p "$OUT"
export CUDA_VISIBLE_DEVICES=$GPU

if [ "$DATASET" = "$OUT/arithmetic.jsonl" ]; then
  "$PY" - "$DATASET" <<'EOF'
import json, random, sys
rng = random.Random(0)
with open(sys.argv[1], "w") as f:
    for _ in range(512):
        a, b, c = rng.randint(10, 99), rng.randint(10, 99), rng.randint(2, 9)
        f.write(json.dumps({"problem": f"Compute {a} + {b} * {c}.", "answer": str(a + b * c)}) + "\n")
EOF
fi

"$PY" - <<'EOF'
import importlib, torch
name = torch.cuda.get_device_name(0)
total = torch.cuda.get_device_properties(0).total_memory / 2**30
versions = {m: getattr(importlib.import_module(m), "__version__", "?") for m in ("torch", "transformers", "trl", "vllm")}
try:
    versions["deepspeed"] = importlib.import_module("deepspeed").__version__
except ImportError:
    versions["deepspeed"] = "not installed"
print(f"gpu_smoke: {name} ({total:.1f} GiB) | " + " | ".join(f"{k} {v}" for k, v in versions.items()))
EOF

report() {  # name, output dir: step time, tokens/s, peak memory from trainer_state.json and the nvidia-smi samples
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
name, run_dir = sys.argv[1], sys.argv[2]
history = json.load(open(f"{run_dir}/trainer_state.json"))["log_history"]
steps = [h for h in history if "step_time" in h]
if not steps:
    sys.exit(f"gpu_smoke: error: no step_time in {run_dir}/trainer_state.json")
times = [h["step_time"] for h in steps]
tokens = max(h.get("num_tokens", 0) for h in steps)
steady = times[1:] or times
lengths = [h["completions/mean_length"] for h in steps if "completions/mean_length" in h]
samples = [float(x) for x in open(f"{run_dir}/gpu_mem.csv").read().split() if x.strip()]
peak = max(samples) / 1024 if samples else float("nan")
print(f"[{name}] {len(steps)} updates | step time: first {times[0]:.1f} s, then mean {sum(steady) / len(steady):.1f} s "
      f"| {tokens / sum(times):.0f} tokens/s (prompt + completion, {int(tokens)} tokens in {sum(times):.0f} s) "
      f"| mean completion {sum(lengths) / max(len(lengths), 1):.0f} tokens | peak GPU memory {peak:.1f} GiB "
      f"(nvidia-smi, device total)")
EOF
}

for run in $RUNS; do
  dir="$OUT/$run"
  rm -rf "$dir"
  mkdir -p "$dir"
  echo "gpu_smoke: run '$run' -> $dir/log.txt"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -i "$GPU" -lms 250 >"$dir/gpu_mem.csv" 2>/dev/null &
  smi=$!
  set +e
  # shellcheck disable=SC2046
  $(launch_args "$run") examples/train_disco.py "${COMMON[@]}" --output_dir "$dir" >"$dir/log.txt" 2>&1
  rc=$?
  set -e
  kill "$smi" 2>/dev/null || true
  if [ "$rc" -ne 0 ]; then
    tail -n 30 "$dir/log.txt" >&2
    fail "run '$run' failed with exit code $rc (full log: $dir/log.txt)"
  fi
  report "$run" "$dir"
done
