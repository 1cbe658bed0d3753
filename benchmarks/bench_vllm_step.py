#!/usr/bin/env python
"""Wall time of a DisCO step with vLLM generation (colocate, vLLM's CPU build) against transformers generation.

Same tiny model, data, reward, seed and batch geometry for both; by default the geometry of
tests/test_vllm_colocate.py (8 completions per micro-batch = 2 questions x 4, one micro-batch per update, 2 updates per
generation, completions of up to 6 tokens). Run it in the vLLM environment (scripts/setup_vllm.sh):

    flock /tmp/disco-cpu.lock .venv-vllm/bin/python benchmarks/bench_vllm_step.py --steps 20
    .venv-vllm/bin/python benchmarks/bench_vllm_step.py --max-completion-length 64 --steps 20

Reported per generation back end: the trainer's construction time (for vLLM: the engine start), the step time TRL
logs (`step_time`, one optimizer step including, on every second step, the generation of the next batch) split into
steps that generate and steps that reuse the batch, the weight sync (vLLM only; DisCO's CPU push through vLLM's reload)
and the whole `train()` wall time per step. The transformers run goes first, so that vLLM's in-process engine (which
binds this process's threads) cannot slow it down.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import zlib
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


def parity_reward(completions, **kwargs):
    return [float(zlib.crc32(c.encode()) % 3 == 0) for c in completions]


def build(model_dir: Path, out: Path, use_vllm: bool, args):
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from disco_trl import DiscoConfig, DiscoTrainer

    vllm = dict(use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.1, vllm_enable_sleep_mode=False,
                vllm_max_model_length=128 + args.max_completion_length) if use_vllm else {}
    config = DiscoConfig(output_dir=str(out), per_device_train_batch_size=8, gradient_accumulation_steps=1,
                         steps_per_generation=2, num_generations=4, max_completion_length=args.max_completion_length,
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


def measure(model_dir: Path, use_vllm: bool, args) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainer, init_s = build(model_dir, Path(out), use_vllm, args)
        syncs = timed_syncs(trainer) if use_vllm else []
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
    steps = [h["step_time"] for h in trainer.state.log_history if "step_time" in h]
    generating, reusing = steps[0::2], steps[1::2]  # steps_per_generation=2: every other step generates
    ms = lambda xs: round(1000 * statistics.median(xs), 1) if xs else None  # noqa: E731
    return {"generation": "vllm" if use_vllm else "transformers", "init_s": round(init_s, 1),
            "step_ms_median": ms(steps), "generating_step_ms_median": ms(generating[1:]),  # the first pays warm-up
            "first_step_ms": ms(steps[:1]), "reusing_step_ms_median": ms(reusing), "sync_ms_median": ms(syncs[1:]),
            "train_wall_ms_per_step": round(1000 * train_s / len(steps), 1), "steps": len(steps)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--max-completion-length", type=int, default=6)
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from vllm_testing import save_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = save_tiny_model(Path(tmp) / "tiny-qwen2-hd32")
        results = [measure(model_dir, use_vllm, args) for use_vllm in (False, True)]
    report = {"max_completion_length": args.max_completion_length, "load_avg_after": os.getloadavg(),
              "results": results}
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
