#!/usr/bin/env python
"""The GPU check: four measurements on one GPU, offline, in a few minutes (run it through scripts/gpu_check.sh).

1. ``interleaved``: step time and peak memory of DisCO (``disco``, ``disco-lratio``) against TRL's GRPOTrainer
   (``trl-default``: its default loss, beta 0) and the same with beta 0.04 (``trl-default-ref-kl``), in one run,
   methods interleaved one optimizer step at a time, as ratios to ``trl-default`` (the protocol of
   benchmarks/bench_disco.py, `benchlib.timing`), on a random model of Qwen2.5-1.5B's shape, bf16, gradient
   checkpointing, 8 completions x 4 questions per optimizer step (1 question per micro-batch x 4
   accumulation steps), fixed completions of 1024 tokens.
2. ``split_groups``: the same with 4 sequences per micro-batch and groups of 8 (DisCO's score look-ahead).
3. ``loss_only_large``: the pure loss functions (DisCO's and TRL's clipped token loss, forward+backward) at 64
   completions x 8192 tokens, and how many operations synchronize the host with the GPU in each.
4. ``zero3``: examples/train_disco.py under DeepSpeed ZeRO-3 (accelerate launch with recipes/accelerate/zero3.yaml)
   on one GPU, 3 optimizer steps with transformers generation of short completions on the random model, rewarded by
   `benchlib.rewards.one_right_per_group` so that every question has right and wrong completions: exit status, losses
   finite and non-zero, every question mixed, DisCO metrics, step time.

``--cpu-smoke`` runs the same code path at tiny size on CPU (the suite's test; the ZeRO-3 run on DeepSpeed's CPU
accelerator); ``--dry-run`` prints the plan.
Writes gpu_check.json and gpu_check.md to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from benchlib.gpu_report import markdown
from benchlib.methods import BASELINE, Workload, build_prompts
from benchlib.random_model import SHAPES, expected_parameter_count, save_random_model
from benchlib.report import machine_info, summarise
from benchlib.sweep import disco_pure_loss, grpo_token_loss, pure_loss_inputs, time_pure_losses
from benchlib.timing import MemoryMeter, run_repetition
from datasets import Dataset
from transformers import AutoTokenizer
from transformers.utils import logging as hf_logging


_REPO = Path(__file__).resolve().parents[1]  # examples/ and recipes/ of this checkout (the ZeRO-3 run)
_HERE = Path(__file__).resolve().parent  # benchmarks/: benchlib for the launched run (its reward)
METHODS = [BASELINE, "trl-default-ref-kl", "disco", "disco-lratio"]  # names of disco_trl.demo.methods

# What each measurement runs, on a GPU and in --cpu-smoke.
PLANS: dict[str, dict[str, Any]] = {
    "gpu": dict(
        shape="qwen2.5-1.5b", dtype="bfloat16", prompt_tokens=96,
        # 4 trainers are alive at once (interleaving): ~4 x 12.4 GB of bf16 weights, gradients and AdamW state, plus
        # the reference model of beta 0.04; 1 question (8 sequences) per micro-batch keeps the activations small.
        interleaved=dict(num_generations=8, questions_per_microbatch=1, grad_accum=4, completion_length=1024,
                         reps=3, warmup=1, steps=2, loss_reps=2),
        split_groups=dict(num_generations=8, micro_batch=4, grad_accum=8, completion_length=1024,
                          reps=2, warmup=1, steps=1, loss_reps=2),
        loss_only_large=dict(num_generations=8, questions=8, completion_length=8192, reps=5),
        zero3=dict(max_steps=3, num_generations=8, per_device_train_batch_size=8, gradient_accumulation_steps=2,
                   max_completion_length=64, timeout_s=300),
    ),
    "cpu-smoke": dict(
        shape="tiny", dtype="float32", prompt_tokens=16,
        interleaved=dict(num_generations=8, questions_per_microbatch=1, grad_accum=2, completion_length=16,
                         reps=1, warmup=1, steps=1, loss_reps=1),
        split_groups=dict(num_generations=8, micro_batch=4, grad_accum=4, completion_length=16,
                          reps=1, warmup=0, steps=1, loss_reps=1),
        loss_only_large=dict(num_generations=8, questions=2, completion_length=64, reps=2),
        zero3=dict(max_steps=3, num_generations=4, per_device_train_batch_size=4, gradient_accumulation_steps=1,
                   max_completion_length=8, timeout_s=240),
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="outputs/gpu_check", help="Where gpu_check.json and gpu_check.md go.")
    p.add_argument("--cpu-smoke", action="store_true", help="The whole code path at tiny size on CPU.")
    p.add_argument("--dry-run", action="store_true", help="Print the plan (JSON) and exit; needs no GPU.")
    p.add_argument("--only", default="interleaved,split_groups,loss_only_large,zero3",
                   help="Comma-separated subset of the four measurements.")
    args = p.parse_args(argv)
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(args.only) - {"interleaved", "split_groups", "loss_only_large", "zero3"}
    if unknown:
        p.error(f"--only has unknown measurement(s) {sorted(unknown)}")
    return args


def plan_for(args: argparse.Namespace) -> dict[str, Any]:
    plan = json.loads(json.dumps(PLANS["cpu-smoke" if args.cpu_smoke else "gpu"]))
    shape = SHAPES[plan["shape"]]
    plan["model"] = {**shape, "parameters": expected_parameter_count(shape), "dtype": plan["dtype"],
                     "gradient_checkpointing": True, "tokenizer": f"word-level, {shape['vocab_size']} tokens"}
    plan["methods"] = METHODS
    plan["device"] = "cpu" if args.cpu_smoke else "cuda"
    plan["measurements"] = args.only
    return plan


def bench_namespace(plan: dict[str, Any], device: str) -> argparse.Namespace:
    """The options `benchlib.methods.build_trainer` reads (what bench_disco.py's command line would give)."""
    return argparse.Namespace(ref_beta=0.04, bf16_enabled=device == "cuda", device_resolved=device,
                              gradient_checkpointing="on", seed=0, model_dtype=plan["dtype"], model=None)


# ---------------------------------------------------------------------------------------------- 1 and 2: trainers
def interleaved(spec: dict[str, Any], plan, model_path: str, tokenizer, workdir: Path, meter) -> dict[str, Any]:
    """Every method's trainer on the same fixed completions, steps interleaved (benchlib.timing), ratios to the
    baseline."""
    geometry = Workload(spec["num_generations"], spec.get("questions_per_microbatch", 0), spec["completion_length"],
                        spec["grad_accum"], spec.get("micro_batch"))
    per_step = geometry.batch_size * geometry.grad_accum // geometry.num_generations
    prompts = build_prompts(tokenizer, (spec["warmup"] + spec["steps"] + 3) * per_step, plan["prompt_tokens"], 0)
    dataset = Dataset.from_dict({"prompt": prompts})
    args = bench_namespace(plan, meter.device)
    runs = []
    for rep in range(spec["reps"]):
        order = METHODS[rep % len(METHODS):] + METHODS[: rep % len(METHODS)]
        for result in run_repetition(order, geometry, model_path, tokenizer, dataset, args, workdir, meter,
                                     steps=spec["steps"], warmup=spec["warmup"], loss_reps=spec["loss_reps"]):
            result["rep"] = rep
            runs.append(result)
            print(f"[gpu_check] rep {rep} {result['method']:>13}: step {1e3 * result['step_median_s']:9.1f} ms, "
                  f"peak step {result['step_peak_bytes'] / 2**30:6.2f} GiB", flush=True)
    identical = all(len({r["completion_checksum"] for r in runs if r["rep"] == rep}) == 1
                    for rep in range(spec["reps"]))
    return {"geometry": {"num_generations": geometry.num_generations, "sequences_per_microbatch": geometry.batch_size,
                         "gradient_accumulation_steps": geometry.grad_accum, "questions_per_step": per_step,
                         "completion_length": geometry.completion_length},
            "identical_completions_across_methods": identical, "summary": summarise(runs, METHODS), "runs": runs}


# ---------------------------------------------------------------------------------------------- 3: the loss alone
def count_syncs(fn) -> int | None:
    """How many operations of `fn()` synchronize the host with the GPU (torch.cuda sync debug mode); None on CPU."""
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def loss_only_large(spec: dict[str, Any], device: str, meter) -> dict[str, Any]:
    g, q, t = spec["num_generations"], spec["questions"], spec["completion_length"]
    times = time_pure_losses(g, q, t, spec["reps"], meter, device, seed=0)
    logps, old, mask, rewards, group_ids, adv = pure_loss_inputs(g, q, t, device, seed=0)
    x = logps.clone().requires_grad_(True)
    syncs = {
        BASELINE: count_syncs(lambda: grpo_token_loss(x, old, adv, mask).backward()),
        "disco": count_syncs(lambda: disco_pure_loss(x, old, rewards, group_ids, mask, score_type="log_l", tau=10.0,
                                                     num_questions=q).backward()),
    }
    ratios = {m: times[m] / times[BASELINE] for m in ("disco", "disco-lratio")}
    return {"completions": g * q, "questions": q, "completion_length": t, "time_s": times,
            "ratio_to_baseline": ratios, "host_syncs": syncs}


# ---------------------------------------------------------------------------------------------- 4: ZeRO-3 run
def zero3_command(spec: dict[str, Any], model_path: str, data: Path, out: Path, cpu_smoke: bool) -> list[str]:
    """The training script under `accelerate launch` of zero3.yaml, one process; on CPU with DeepSpeed's CPU
    accelerator (the overrides of tests/test_deepspeed.py: no mixed precision, use_cpu)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(_REPO / "recipes" / "accelerate" / "zero3.yaml"), "--num_processes", "1", "--main_process_port", "0"]
    if cpu_smoke:
        launch += ["--mixed_precision", "no", str(_REPO / "examples" / "train_disco.py"), "--use_cpu", "true",
                   "--bf16", "false"]
    else:
        launch += [str(_REPO / "examples" / "train_disco.py"), "--bf16", "true"]
    options = {k: v for k, v in spec.items() if k != "timeout_s"}
    return launch + [
        "--model_name_or_path", model_path, "--dataset_name", str(data), "--conversational", "false",
        "--dtype", "bfloat16" if not cpu_smoke else "float32", "--gradient_checkpointing", "true",
        *[w for k, v in options.items() for w in (f"--{k}", str(v))],
        "--reward_funcs", "boxed_math_reward", "benchlib.rewards.one_right_per_group",
        "--learning_rate", "1e-6", "--temperature", "1.0", "--logging_steps", "1", "--save_strategy", "no",
        "--report_to", "none", "--use_vllm", "false", "--output_dir", str(out),
    ]


def zero3_env(cpu_smoke: bool) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(_REPO), str(_HERE), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    if cpu_smoke:  # DeepSpeed's CPU accelerator (gloo), even where a GPU is visible
        env.update(DS_ACCELERATOR="cpu", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"))
    return env


def zero3_run(spec: dict[str, Any], model_path: str, workdir: Path, cpu_smoke: bool) -> dict[str, Any]:
    data = workdir / "arithmetic.jsonl"
    with data.open("w") as f:
        for i in range(64):
            f.write(json.dumps({"problem": f"Compute {i} + {2 * i}.", "answer": str(3 * i)}) + "\n")
    out = workdir / "zero3"
    cmd = zero3_command(spec, model_path, data, out, cpu_smoke)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=zero3_env(cpu_smoke), timeout=spec["timeout_s"])
    result: dict[str, Any] = {"command": " ".join(cmd), "returncode": proc.returncode,
                              "wall_s": time.perf_counter() - t0, "log_tail": (proc.stdout + proc.stderr)[-4000:]}
    state = out / "trainer_state.json"
    history = json.loads(state.read_text())["log_history"] if state.is_file() else []
    steps = [h for h in history if "loss" in h]
    result["steps_logged"] = len(steps)
    result["losses"] = [h["loss"] for h in steps]
    result["losses_finite"] = bool(steps) and all(math.isfinite(h["loss"]) for h in steps)
    result["losses_nonzero"] = bool(steps) and all(h["loss"] != 0 for h in steps)
    result["frac_mixed_questions"] = [h.get("disco/frac_mixed_questions") for h in steps]
    result["disco_metrics"] = sorted({k for h in steps for k in h if k.startswith("disco/")})
    result["step_time_s"] = [h["step_time"] for h in steps if "step_time" in h]
    # on CPU, DeepSpeed's CPU accelerator loads its communication op when DeepSpeed starts the process group
    result["deepspeed_cpu_accelerator"] = ("deepspeed_shm_comm_op" in proc.stdout + proc.stderr) if cpu_smoke else None
    result["ok"] = (proc.returncode == 0 and result["losses_finite"] and result["losses_nonzero"]
                    and len(steps) == spec["max_steps"] and bool(result["disco_metrics"]))
    return result


# ---------------------------------------------------------------------------------------------- main
def run_all(args: argparse.Namespace, plan: dict[str, Any], workdir: Path) -> dict[str, Any]:
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    device = plan["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: error: torch sees no CUDA GPU (use --cpu-smoke on a CPU machine).")
    if device == "cpu":
        torch.set_num_threads(1)
    meter = MemoryMeter(device)
    phases: dict[str, float] = {}
    t0 = time.perf_counter()
    model = save_random_model(plan["shape"], workdir / "model", device=device, dtype=plan["dtype"])
    phases["build_model_s"] = time.perf_counter() - t0
    print(f"[gpu_check] {model['description']} in {phases['build_model_s']:.0f} s", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(model["path"])
    result: dict[str, Any] = {"model": model, "memory_method": meter.method}
    for name in args.only:
        t0 = time.perf_counter()
        print(f"[gpu_check] measurement: {name}", flush=True)
        if name in ("interleaved", "split_groups"):
            result[name] = interleaved(plan[name], plan, model["path"], tokenizer, workdir / name, meter)
        elif name == "loss_only_large":
            result[name] = loss_only_large(plan[name], device, meter)
        else:
            result[name] = zero3_run(plan[name], model["path"], workdir, args.cpu_smoke)
        phases[f"{name}_s"] = time.perf_counter() - t0
        meter.settle()
    result["phases"] = phases
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    plan = plan_for(args)
    if args.dry_run:
        print(json.dumps(plan, indent=2))
        return plan
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="disco-gpu-check-") as tmp:
        result = run_all(args, plan, Path(tmp))
    result = {"command": " ".join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
              "plan": plan, "machine": machine_info(plan["device"]), **result,
              "wall_s": time.perf_counter() - t_start}
    (out / "gpu_check.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(result))
    print(markdown(result))
    print(f"[gpu_check] wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}", flush=True)
    failed = "zero3" in result and not result["zero3"]["ok"]
    if failed:
        print("[gpu_check] error: the ZeRO-3 run failed; its log tail is in gpu_check.json", file=sys.stderr)
    return result if not failed else sys.exit(1)


if __name__ == "__main__":
    main()
