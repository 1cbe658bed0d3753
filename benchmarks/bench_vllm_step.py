#!/usr/bin/env python
"""Wall time of a DisCO step with vLLM generation (colocate, vLLM's CPU build) against transformers generation, or
with vLLM's sampling correction on (the default) against off.

Same tiny model, data, reward, seed and batch geometry for every back end; by default the geometry of
tests/test_vllm_colocate.py (8 completions per micro-batch = 2 questions x 4, one micro-batch per update, 2 updates per
generation, completions of up to 6 tokens). Back ends: `transformers` (generation by transformers), `vllm` (vLLM
colocated, the sampling correction on: DiscoConfig's default), `vllm-uncorrected` (the same with
`vllm_importance_sampling_correction=False`; the mismatch is still measured). Run it in the vLLM environment
(scripts/setup_vllm.sh):

    flock /tmp/disco-cpu.lock .venv-vllm/bin/python benchmarks/bench_vllm_step.py --steps 20
    .venv-vllm/bin/python benchmarks/bench_vllm_step.py --max-completion-length 64 --steps 20
    # the correction's cost, on-policy (1 update per generation: its weights come from the update's forward pass)
    .venv-vllm/bin/python benchmarks/bench_vllm_step.py --backends vllm,vllm-uncorrected --steps-per-generation 1

Reported per generation back end, as median [min, max] over `--rounds` runs, each in a fresh process, the back ends
interleaved: the trainer's construction time (for vLLM: the engine start), the step time TRL logs (`step_time`: one
optimizer step, including on every `--steps-per-generation`-th step the generation of the next batch) for steps that
generate (the first, which also warms up, left out) and steps that reuse the batch, the whole `train()` wall time per
step, and the weight sync (vLLM only: DisCO's CPU push through vLLM's reload, the first left out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

from disco_trl import DiscoConfig, DiscoTrainer
from disco_trl.toy import build_tiny_qwen2, build_tokenizer


os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def save_tiny_model(path: Path) -> Path:
    """The vLLM tests' tiny Qwen2: 2 attention heads at hidden 64 (head_dim 32, which vLLM's CPU attention has)."""
    tokenizer = build_tokenizer()
    build_tiny_qwen2(tokenizer, num_attention_heads=2, num_key_value_heads=1).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def parity_reward(completions, **kwargs):
    return [float(zlib.crc32(c.encode()) % 3 == 0) for c in completions]


BACKENDS = ("transformers", "vllm", "vllm-uncorrected")


def build(model_dir: Path, out: Path, backend: str, args):
    vllm = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_enable_sleep_mode=False,
                vllm_max_model_length=128 + args.max_completion_length,
                vllm_importance_sampling_correction=backend == "vllm") if backend != "transformers" else {}
    config = DiscoConfig(output_dir=str(out), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                         steps_per_generation=args.steps_per_generation, num_generations=4,
                         max_completion_length=args.max_completion_length,
                         max_steps=args.steps, learning_rate=1e-2, report_to="none", save_strategy="no",
                         logging_steps=1, seed=7, use_cpu=True, disable_dropout=True, **vllm)
    n = 4 * args.steps
    data = Dataset.from_dict({"prompt": [f"Q{i}: {i} + {2 * i} =" for i in range(n)],
                              "solution": [str(3 * i) for i in range(n)]})
    start = time.perf_counter()
    trainer = DiscoTrainer(model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           reward_funcs=parity_reward, args=config, train_dataset=data,
                           processing_class=AutoTokenizer.from_pretrained(model_dir))
    return trainer, time.perf_counter() - start


def timed_syncs(trainer) -> list[float]:
    times, sync = [], trainer.vllm_generation.sync_weights

    def timed():
        start = time.perf_counter()
        sync()
        times.append(time.perf_counter() - start)

    trainer.vllm_generation.sync_weights = timed
    return times


def median_ms(seconds: list[float]) -> float | None:
    return 1000 * statistics.median(seconds) if seconds else None


def measure(model_dir: Path, backend: str, args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer, init_s = build(model_dir, Path(out), backend, args)
        syncs = timed_syncs(trainer) if backend != "transformers" else []
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    logs = trainer.state.log_history
    steps = [h["step_time"] for h in logs if "step_time" in h]
    every = args.steps_per_generation  # steps 0, every, 2 every, ... generate; the first also warms up
    generating = [t for i, t in enumerate(steps) if i % every == 0][1:]
    reusing = [t for i, t in enumerate(steps) if i % every != 0]
    key = "sampling/sampling_logp_difference/mean"  # vLLM's mismatch, logged in every vLLM run
    mismatch = [h[key] for h in logs if key in h]
    return {"init_s": init_s, "generating_step_ms": median_ms(generating), "reusing_step_ms": median_ms(reusing),
            "train_ms_per_step": 1000 * train_s / len(steps), "sync_ms": median_ms(syncs[1:]),
            "logp_difference_mean": statistics.mean(mismatch) if mismatch else None}


def one_run(backend: str, args) -> dict:
    """One measurement in a fresh process (so that neither back end inherits the other's state)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, __file__, "--one", backend, "--steps", str(args.steps),
                   "--max-completion-length", str(args.max_completion_length),
                   "--steps-per-generation", str(args.steps_per_generation), "--output", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))  # the same torch threads for both back ends
        subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        return json.loads(out.read_text())


def summarise(runs: list[dict]) -> dict:
    keys = [k for k in runs[0] if runs[0][k] is not None]
    digits = {"logp_difference_mean": 5}
    return {k: [round(statistics.median(r[k] for r in runs), digits.get(k, 1)),
                round(min(r[k] for r in runs), digits.get(k, 1)), round(max(r[k] for r in runs), digits.get(k, 1))]
            for k in keys}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-completion-length", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3, help="fresh-process runs per back end, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run (default 1)")
    parser.add_argument("--backends", default="transformers,vllm",
                        help=f"comma-separated, interleaved, from {', '.join(BACKENDS)} (default transformers,vllm)")
    parser.add_argument("--steps-per-generation", type=int, default=2,
                        help="updates per generation batch (1: on-policy; default 2, the tests' geometry)")
    parser.add_argument("--one", choices=BACKENDS, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(save_tiny_model(Path(tmp) / "tiny-qwen2-hd32"), args.one, args)
        args.output.write_text(json.dumps(result))
        return 0
    backends = args.backends.split(",")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        parser.error(f"--backends: unknown {unknown}; choose from {', '.join(BACKENDS)}")
    load_before = os.getloadavg()
    runs = {backend: [] for backend in backends}
    for r in range(args.rounds):
        order = backends[r % len(backends):] + backends[:r % len(backends)]  # each back end first in turn
        for backend in order:
            runs[backend].append(one_run(backend, args))
    report = {"max_completion_length": args.max_completion_length, "steps": args.steps, "rounds": args.rounds,
              "steps_per_generation": args.steps_per_generation, "threads": args.threads,
              "load_avg_before": load_before, "load_avg_after": os.getloadavg(),
              "median_min_max": {b: summarise(rs) for b, rs in runs.items()}, "runs": runs}
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
