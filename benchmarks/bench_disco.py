#!/usr/bin/env python
"""DisCO vs GRPO cost benchmark: step time, loss-only time and peak memory, side by side, in one process.

What it measures (see benchmarks/README.md and docs/performance.md):

* Trainer runs. For each method, a name of the registry `disco_trl.demo.methods` (by default TRL's GRPOTrainer with
  its default loss, ``trl-default``; with ``loss_type="grpo"``, ``grpo-beta0``; with a reference-model KL ``beta>0``,
  ``trl-default-ref-kl``; DiscoTrainer with the log-L and L-ratio scores, DRO objective, ``disco`` and
  ``disco-lratio``) it builds a fresh trainer on the same locally saved model, data, batch geometry, completion
  length and seed, trains a few steps and records
  - the median wall time of an optimizer step (``on_step_begin`` -> ``on_step_end``: preparing the batch, i.e. fixed
    "generation", rewards, reference-model forward where there is one, then forward+backward of every micro-batch,
    gradient clipping and the optimizer step), after warm-up steps;
  - the loss-only time: ``trainer.compute_loss(model, inputs)`` + ``backward()`` on one fixed micro-batch prepared by
    the trainer's own ``_prepare_inputs`` (so DisCO gets its ``disco_labels``/``disco_group_ids``, GRPO its
    advantages and, with beta>0, the reference log-probs);
  - peak memory, in tensor bytes, measured in one extra untimed step and one extra untimed loss call: on CUDA
    ``torch.cuda.max_memory_allocated``; on CPU the allocator events of ``torch.profiler`` (``profile_memory=True``),
    plus, for the step, the training state kept between steps (see `MemoryMeter`).
  Generation is replaced by fixed completions (a deterministic function of the prompt and of the sample index), so all
  trainers see identical tokens and no sampling noise; a checksum of every completion served is recorded per run.
  Methods alternate at the finest grain the Trainer allows: in each repetition every method's trainer runs its own
  ``train()`` in a thread, and a baton lets one run at a time, handing over after every optimizer step (the order
  rotates between repetitions); the loss-only calls alternate the same way. A slow phase of a shared machine therefore
  hits every method alike. Every number is reported as a ratio to the baseline (``trl-default``) of the same
  repetition, with min and max across repetitions.

* Scaling sweep. How the cost of the loss grows with completions per question, completion length and questions per
  micro-batch: the pure loss functions alone (``disco_trl.losses`` vs TRL's clipped token loss, on (B, T) log-prob
  tensors, forward+backward) and, optionally, ``compute_loss`` + backward through a small model, from which the DisCO
  overhead's share of the loss step is derived.

The code: the timing protocol is in ``benchlib/timing.py``, how the compared trainers are built (fixed completions,
model presets) in ``benchlib/methods.py``, the sweep in ``benchlib/sweep.py``, the report (ratios, Markdown) in
``benchlib/report.py``; this file holds the command line and the main run.

Run ``python benchmarks/bench_disco.py --help``. ``--quick`` is the small smoke configuration used by the tests.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from benchlib.methods import BASELINE, MODEL_PRESETS, REF_KL_METHOD, Workload, build_prompts, make_model_dir
from benchlib.report import machine_info, markdown, summarise
from benchlib.sweep import run_sweep, sweep_verdict
from benchlib.timing import MemoryMeter, run_repetition
from datasets import Dataset
from transformers.utils import logging as hf_logging

from disco_trl.demo.methods import BENCHMARK_METHODS, METHODS


# ---------------------------------------------------------------------------------------------------------- options
def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"error: {name} must be a comma-separated list of integers, e.g. '4,8,16'; got {text!r}.") \
            from None
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"error: {name} must list positive integers; got {text!r}.")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench_disco.py",
        description="Time DiscoTrainer against TRL's GRPOTrainer (steps, loss-only, peak memory) and sweep the loss "
        "cost over completions per question, completion length and questions per micro-batch.",
    )
    p.add_argument("--quick", action="store_true",
                   help="Small smoke configuration (tiny model, short completions, 2 repetitions, small sweep).")
    p.add_argument("--output-dir", default="outputs/benchmarks",
                   help="Where results.json and results.md go (default outputs/benchmarks, git-ignored).")
    p.add_argument("--reps", type=int, default=None, help="Repetitions of every method (default 10; --quick: 2).")
    p.add_argument("--steps", type=int, default=None, help="Timed optimizer steps per run (default 3; --quick: 1).")
    p.add_argument("--warmup-steps", type=int, default=None, help="Untimed steps before (default 1).")
    p.add_argument("--loss-reps", type=int, default=None,
                   help="Timed compute_loss+backward calls per run (default 3; --quick: 2), after one warm-up call.")
    p.add_argument("--methods", default=",".join(BENCHMARK_METHODS),
                   help=f"Comma-separated names of disco_trl.demo.methods (default {','.join(BENCHMARK_METHODS)}; "
                   f"any of {list(METHODS)}); must include the baseline '{BASELINE}'.")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="'auto': CUDA when available, else CPU.")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: 1 on CPU, the reproducible choice on a shared machine; "
                   "unchanged on CUDA).")
    p.add_argument("--model", default=None,
                   help="A real model (hub id or local path) to benchmark instead of a locally built preset; its "
                   "tokenizer is loaded from the same place.")
    p.add_argument("--model-preset", choices=list(MODEL_PRESETS), default=None,
                   help="Locally built random-weight model (default: cpu-small; --quick: tiny).")
    p.add_argument("--num-generations", type=int, default=None,
                   help="Completions per question G (default 8; quick 4).")
    p.add_argument("--questions-per-microbatch", type=int, default=2,
                   help="Questions per micro-batch Q (per_device_train_batch_size = Q * G).")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="gradient_accumulation_steps, micro-batches per optimizer step (default 2; --quick: 1).")
    p.add_argument("--completion-length", type=int, default=None,
                   help="Tokens in every completion (default 128; --quick: 32).")
    p.add_argument("--prompt-tokens", type=int, default=64, help="Approximate prompt length in tokens.")
    p.add_argument("--ref-beta", type=float, default=0.04, help=f"beta of the '{REF_KL_METHOD}' method (> 0).")
    p.add_argument("--model-dtype", choices=["float32", "bfloat16"], default="float32",
                   help="dtype the weights are loaded in (model_init_kwargs), the same for every method.")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="auto",
                   help="Mixed precision for every method alike ('auto': on with CUDA, off on CPU).")
    p.add_argument("--gradient-checkpointing", choices=["on", "off"], default="on",
                   help="Same for every method (TRL's GRPOConfig default is on).")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-sweep", dest="sweep", action="store_false", help="Skip the scaling sweep.")
    p.add_argument("--no-sweep-model", dest="sweep_model", action="store_false",
                   help="In the sweep, time only the pure loss functions (no compute_loss through a model).")
    p.add_argument("--sweep-generations", default=None, help="G values (default 4,8,16,32,64; quick 4,8).")
    p.add_argument("--sweep-lengths", default=None, help="T values (default 128,512,2048,8192; quick 32,64).")
    p.add_argument("--sweep-questions", default=None, help="Q values (default 1,2,4,8; quick 1,2).")
    p.add_argument("--sweep-base-generations", type=int, default=8, help="G while another axis varies.")
    p.add_argument("--sweep-base-length", type=int, default=None, help="T while another axis varies (default 256).")
    p.add_argument("--sweep-reps", type=int, default=None,
                   help="Timed samples per sweep point and method (default 5; quick 2).")
    p.add_argument("--sweep-model-preset", choices=list(MODEL_PRESETS), default="tiny",
                   help="Model for the sweep's compute_loss timings.")
    p.add_argument("--sweep-max-tokens", type=int, default=None,
                   help="Skip the model part of sweep points with more completion tokens per micro-batch than this "
                   "(default: 16384 on CPU, 65536 on CUDA); the pure loss functions are timed at every point.")
    args = p.parse_args(argv)
    _fill_defaults(args)
    _validate(args)
    return args


def _fill_defaults(args: argparse.Namespace) -> None:
    quick = args.quick
    defaults = dict(
        reps=(2, 10), steps=(1, 3), warmup_steps=(1, 1), loss_reps=(2, 3), num_generations=(4, 8), grad_accum=(1, 2),
        completion_length=(32, 128), model_preset=("tiny", "cpu-small"), sweep_generations=("2,4", "4,8,16,32,64"),
        sweep_lengths=("16,32", "128,512,2048,8192"), sweep_questions=("1,2", "1,2,4,8"), sweep_base_length=(16, 256),
        sweep_reps=(2, 5),
    )
    for name, (q, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, q if quick else full)
    if quick:
        args.sweep_base_generations = min(args.sweep_base_generations, 2)
        args.prompt_tokens = min(args.prompt_tokens, 24)


def _validate(args: argparse.Namespace) -> None:
    def fail(msg: str):
        raise SystemExit(f"error: {msg}")

    for name in ("reps", "steps", "loss_reps", "questions_per_microbatch", "grad_accum", "completion_length",
                 "prompt_tokens", "sweep_base_generations", "sweep_base_length", "sweep_reps"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1; got {getattr(args, name)}.")
    if args.warmup_steps < 0:
        fail(f"--warmup-steps must be >= 0; got {args.warmup_steps}.")
    if args.num_generations < 2:
        fail(f"--num-generations must be >= 2 (DisCO compares a question's completions); got {args.num_generations}.")
    if args.threads is not None and args.threads < 1:
        fail(f"--threads must be >= 1; got {args.threads}.")
    if not args.ref_beta > 0:
        fail(f"--ref-beta must be > 0 (it is the reference-model KL weight of '{REF_KL_METHOD}'); got "
             f"{args.ref_beta}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        fail(f"--methods has unknown name(s) {unknown}; choose from {list(METHODS)}.")
    if BASELINE not in methods:
        fail(f"--methods must include the baseline '{BASELINE}' (every ratio is taken against it).")
    args.methods = list(dict.fromkeys(methods))
    args.sweep_generations = _int_list(args.sweep_generations, "--sweep-generations")
    args.sweep_lengths = _int_list(args.sweep_lengths, "--sweep-lengths")
    args.sweep_questions = _int_list(args.sweep_questions, "--sweep-questions")
    if min(args.sweep_generations) < 2:
        fail("--sweep-generations values must be >= 2.")
    if args.device == "cuda":
        if not torch.cuda.is_available():
            fail("--device cuda was asked for but torch.cuda.is_available() is False; use --device cpu or auto.")


# ---------------------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    t_start = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    if args.device == "auto":
        args.device_resolved = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        args.device_resolved = args.device
    on_cuda = args.device_resolved == "cuda"
    if args.threads is not None or not on_cuda:
        torch.set_num_threads(args.threads or 1)
    args.bf16_enabled = args.bf16 == "on" or (args.bf16 == "auto" and on_cuda)
    if args.sweep_max_tokens is None:
        args.sweep_max_tokens = 65536 if on_cuda else 16384
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    meter = MemoryMeter(args.device_resolved)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    geometry = Workload(args.num_generations, args.questions_per_microbatch, args.completion_length, args.grad_accum)
    prompt_lengths = []

    def dataset_for(tokenizer, n):
        prompts = build_prompts(tokenizer, n, args.prompt_tokens, args.seed)
        prompt_lengths.extend(len(tokenizer(p)["input_ids"]) for p in prompts)
        return Dataset.from_dict({"prompt": prompts})

    with tempfile.TemporaryDirectory(prefix="disco-bench-") as tmp:
        workdir = Path(tmp)
        model_path, tokenizer, model_desc = make_model_dir(
            args, args.model_preset, args.completion_length + 4 * args.prompt_tokens + 64, workdir)
        per_step = geometry.questions_per_microbatch * geometry.grad_accum
        questions_needed = (args.warmup_steps + args.steps + 2) * per_step
        dataset = dataset_for(tokenizer, questions_needed)
        main_prompt_mean = statistics.mean(prompt_lengths)

        print(f"[bench] {args.device_resolved}, {torch.get_num_threads()} threads; model: {model_desc}", flush=True)
        # One untimed run of the baseline first: imports, allocator and kernel warm-up are paid before any measurement.
        run_repetition([BASELINE], geometry, model_path, tokenizer, dataset, args, workdir, meter,
                       steps=1, warmup=1, loss_reps=1)
        # Everything imported so far is long-lived: move it out of the collector's reach, so that the gc.collect()
        # before each measurement is quick (it otherwise walks every module object of torch/transformers/TRL).
        gc.collect()
        gc.freeze()
        runs = []
        for rep in range(args.reps):
            order = args.methods[rep % len(args.methods):] + args.methods[: rep % len(args.methods)]
            results = run_repetition(order, geometry, model_path, tokenizer, dataset, args, workdir, meter,
                                     steps=args.steps, warmup=args.warmup_steps, loss_reps=args.loss_reps)
            for result in results:
                result["rep"] = rep
                runs.append(result)
                print(f"[bench] rep {rep} {result['method']:>15}: step {1e3 * result['step_median_s']:8.1f} ms, "
                      f"loss-only {1e3 * result['loss_median_s']:8.1f} ms, peak step "
                      f"{result['step_peak_bytes'] / 2**20:7.1f} MiB", flush=True)
        checksums = {r["rep"]: set() for r in runs}
        for r in runs:
            checksums[r["rep"]].add(r["completion_checksum"])
        identical = all(len(v) == 1 for v in checksums.values())

        sweep = sweep_rows = None
        if args.sweep:
            sweep_rows = run_sweep(args, meter, workdir, dataset_for)
            sweep = sweep_rows

    load_after = [round(x, 2) for x in os.getloadavg()]
    cfg = {
        "model_description": model_desc, "model_preset": None if args.model else args.model_preset,
        "model": args.model, "model_dtype": args.model_dtype, "bf16": args.bf16_enabled,
        "gradient_checkpointing": args.gradient_checkpointing, "num_generations": geometry.num_generations,
        "questions_per_microbatch": geometry.questions_per_microbatch,
        "per_device_train_batch_size": geometry.batch_size, "grad_accum": geometry.grad_accum,
        "completion_length": geometry.completion_length, "prompt_tokens_mean": main_prompt_mean,
        "reps": args.reps, "steps": args.steps, "warmup_steps": args.warmup_steps, "loss_reps": args.loss_reps,
        "methods": args.methods, "ref_beta": args.ref_beta, "seed": args.seed, "quick": args.quick,
        "sweep_model_description": getattr(args, "sweep_model_description", None),
        "sweep_max_tokens": args.sweep_max_tokens,
    }
    result = {
        "command": " ".join(["python", "benchmarks/bench_disco.py", *(sys.argv[1:] if argv is None else argv)]),
        "config": cfg,
        "machine": machine_info(args.device_resolved),
        "memory_method": meter.method,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "identical_completions_across_methods": identical,
        "summary": summarise(runs, args.methods),
        "runs": runs,
        "sweep": sweep,
        "sweep_verdict": sweep_verdict(sweep_rows) if sweep_rows else None,
        "wall_s": time.perf_counter() - t_start,
    }
    (out_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown(result))
    print(markdown(result))
    print(f"[bench] wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}", flush=True)
    return result


if __name__ == "__main__":
    main()
