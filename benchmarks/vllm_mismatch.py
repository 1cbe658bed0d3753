#!/usr/bin/env python
"""How far vLLM's samples are from pi_old's on a model: per token and per completion, at its completion lengths.

vLLM samples with its own kernels, dtype and sampler; DisCO's objective is an expectation under the trainer's pi_old
(docs/method.md, "vLLM's samples are not pi_old's"). This script samples completions of a model folder with vLLM as a
DisCO run does (`logprobs_mode="processed_logprobs"`, the run's temperature, vLLM's `dtype`, default `auto`: bf16 for
a bf16 or float32 checkpoint), scores the same tokens with transformers as the trainer does (`--trainer-dtype`,
default float32: DiscoConfig's default on CPU; the logits divided by the temperature, TRL's `selective_log_softmax`),
and reports, with d = log pi_old - log pi_vLLM on each completion token and D = sum_t d per completion:

* per token: mean and quantiles of |d|, its largest value, the mean of d (a bias), the token estimate of
  KL(pi_vLLM || pi_old) (k3: e^d - 1 - d), the fraction of tokens whose ratio e^d lies outside the bounds;
* per completion: the quantiles of D and of the ratio e^D, the fraction outside [clip_min, clip_max] (what
  `sequence_mask` drops), the effective sample size of the ratios within each question (how much a
  `sequence_*` correction reweights), all by completion-length quartile too;
* the `sampling/*` metrics a DisCO run logs on the same completions (disco_trl.metrics).

Run it in the vLLM environment (scripts/setup_vllm.sh), on any model folder vLLM can serve:

    .venv-vllm/bin/python benchmarks/vllm_mismatch.py --model PATH --data math500 --num-prompts 32 \\
        --num-generations 8 --max-completion-length 1024 --output mismatch.json

`--data` is anything `disco_trl.data.load_math_dataset` reads (a known name, a local .jsonl, a folder), turned into
the paper's prompt; without it, a few arithmetic questions. On CPU, `VLLM_CPU_KVCACHE_SPACE` (GiB, default 1 here)
sizes vLLM's KV cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch


os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="a model folder (or Hub id) vLLM and transformers can load")
    parser.add_argument("--data", default=None, help="prompts: anything load_math_dataset reads (default: arithmetic)")
    parser.add_argument("--num-prompts", type=int, default=16)
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt (a DisCO group)")
    parser.add_argument("--max-completion-length", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.6, help="DiscoConfig's default")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--vllm-dtype", default="auto", help="vLLM's dtype (default auto, as in a DisCO run)")
    parser.add_argument("--trainer-dtype", default="float32", choices=["float32", "bfloat16", "float64"])
    parser.add_argument("--clip-min", type=float, default=None, help="lower bound of the ratios (TRL's default none)")
    parser.add_argument("--clip-max", type=float, default=3.0, help="upper bound of the ratios (TRL's default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enforce-eager", action="store_true", help="vLLM without torch.compile (starts faster)")
    parser.add_argument("--output", type=Path, default=None, help="also write the report as JSON here")
    args = parser.parse_args(argv)
    if args.num_prompts < 1 or args.num_generations < 1 or args.max_completion_length < 1:
        parser.error("--num-prompts, --num-generations and --max-completion-length must be >= 1")
    return args


def prompt_token_ids(args, tokenizer) -> list[list[int]]:
    """The paper's prompt of each problem (or a few arithmetic questions), rendered as TRL renders it."""
    conversational = tokenizer.chat_template is not None
    if args.data is None:
        problems = [f"What is {i} + {2 * i}?" for i in range(args.num_prompts)]
        from disco_trl.data import format_prompt  # noqa: PLC0415 - one place builds the paper's prompt

        prompts = [format_prompt(p, conversational=conversational) for p in problems]
    else:
        from disco_trl.data import load_math_dataset  # noqa: PLC0415

        prompts = load_math_dataset(args.data, conversational=conversational, limit=args.num_prompts)["prompt"]
    if conversational:
        return [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=False)
                for p in prompts]
    return [tokenizer(p)["input_ids"] for p in prompts]


def sample_with_vllm(args, prompts: list[list[int]]):
    """(prompt ids, completion ids, vLLM's sampling log-prob of each completion token), one row per completion."""
    from vllm import LLM, SamplingParams  # noqa: PLC0415 - installed only in the vLLM environment

    longest = max(len(p) for p in prompts)
    llm = LLM(model=args.model, dtype=args.vllm_dtype, max_model_len=longest + args.max_completion_length,
              gpu_memory_utilization=0.3, logprobs_mode="processed_logprobs", seed=args.seed,
              enforce_eager=args.enforce_eager, max_num_batched_tokens=max(4096, longest + args.max_completion_length))
    params = SamplingParams(n=args.num_generations, temperature=args.temperature, top_p=args.top_p,
                            top_k=args.top_k if args.top_k > 0 else -1, max_tokens=args.max_completion_length,
                            logprobs=0)  # the engine's seed; a per-request seed crashes vLLM's CPU build
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], sampling_params=params, use_tqdm=True)
    seconds = time.perf_counter() - start
    rows = []
    for prompt, output in zip(prompts, outputs):
        for completion in output.outputs:
            ids = list(completion.token_ids)
            logps = [step[token].logprob for step, token in zip(completion.logprobs, ids)]
            rows.append((prompt, ids, logps))
    del llm
    return rows, seconds


@torch.no_grad()
def trainer_logps(args, rows) -> list[torch.Tensor]:
    """Each completion's per-token log-probs under the model as the trainer computes them (TRL's way)."""
    from transformers import AutoModelForCausalLM  # noqa: PLC0415
    from trl.trainer.utils import selective_log_softmax  # noqa: PLC0415

    dtype = getattr(torch, args.trainer_dtype)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).eval()
    out = []
    for prompt, ids, _ in rows:  # one completion per forward pass: no padding to get wrong
        tokens = torch.tensor([prompt + ids])
        logits = model(input_ids=tokens).logits[:, len(prompt) - 1 : -1].float() / args.temperature
        out.append(selective_log_softmax(logits, tokens[:, len(prompt):])[0].double())
    return out


def quantiles(values: torch.Tensor) -> dict[str, float]:
    if values.numel() == 0:
        return {}
    qs = torch.quantile(values.double(), torch.tensor(QUANTILES, dtype=torch.float64))
    return {f"p{round(100 * q)}": float(v) for q, v in zip(QUANTILES, qs)}


def outside(ratios: torch.Tensor, clip_min, clip_max) -> float:
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    return float(((ratios < low) | (ratios > high)).double().mean()) if ratios.numel() else math.nan


def sequence_report(diffs: list[torch.Tensor], group: int, clip_min, clip_max) -> dict:
    """Per completion: D = sum_t d, its ratio e^D, what lies outside the bounds, and the ratios' effective sample size
    within each question (1: a sequence correction weighs every completion alike; 1/n: one completion takes all)."""
    log_ratio = torch.stack([d.sum() for d in diffs])
    ratios = torch.exp(log_ratio)
    ess = []
    for start in range(0, len(diffs) - group + 1, group):
        w = torch.softmax(log_ratio[start : start + group], dim=0)
        ess.append(float(1.0 / (w**2).sum() / group))
    return {"completions": len(diffs), "log_ratio": {"mean": float(log_ratio.mean()), **quantiles(log_ratio)},
            "ratio": {"min": float(ratios.min()), "max": float(ratios.max()), **quantiles(ratios)},
            "frac_outside_bounds": outside(ratios, clip_min, clip_max),
            "ess_fraction_per_question": statistics.mean(ess) if ess else None}


def token_report(diffs: list[torch.Tensor], clip_min, clip_max) -> dict:
    d = torch.cat(diffs) if diffs else torch.zeros(0, dtype=torch.float64)
    return {"tokens": int(d.numel()), "abs_difference": {"mean": float(d.abs().mean()), "max": float(d.abs().max()),
                                                         **quantiles(d.abs())},
            "mean_difference": float(d.mean()), "kl_vllm_old_k3": float((torch.expm1(d) - d).mean()),
            "frac_tokens_outside_bounds": outside(torch.exp(d), clip_min, clip_max)}


def by_length(diffs: list[torch.Tensor], group: int, clip_min, clip_max) -> list[dict]:
    """The per-token and per-completion reports of each completion-length quartile."""
    lengths = torch.tensor([len(d) for d in diffs], dtype=torch.float64)
    edges = torch.quantile(lengths, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    bins = [(-math.inf, edges[0]), (edges[0], edges[1]), (edges[1], edges[2]), (edges[2], math.inf)]
    out = []
    for low, high in bins:
        chosen = [d for d in diffs if low < len(d) <= high]
        if chosen:
            out.append({"lengths": [min(map(len, chosen)), max(map(len, chosen))],
                        **token_report(chosen, clip_min, clip_max),
                        "per_completion": sequence_report(chosen, 1, clip_min, clip_max)})
    return out


def logged_metrics(rows, old: list[torch.Tensor], clip_min, clip_max) -> dict:
    """The `sampling/*` metrics a DisCO run would log on these completions (sequence_mask's ratios)."""
    from disco_trl.metrics import log_sampling_mismatch, sampling_mismatch_stats  # noqa: PLC0415

    width = max(len(o) for o in old)
    padded_old = torch.zeros(len(old), width, dtype=torch.float64)
    padded_sampling = torch.zeros_like(padded_old)
    mask = torch.zeros_like(padded_old)
    for i, ((_, _, logps), o) in enumerate(zip(rows, old)):
        padded_old[i, : len(o)], padded_sampling[i, : len(o)], mask[i, : len(o)] = o, torch.tensor(logps), 1.0
    stats = sampling_mismatch_stats(padded_old, padded_sampling, mask, mode="sequence_mask", clip_min=clip_min,
                                    clip_max=clip_max)
    metrics = defaultdict(list)
    log_sampling_mismatch(metrics, stats[None])
    return {k: v[-1] for k, v in metrics.items()}


def report(args, rows, old: list[torch.Tensor], sampling_seconds: float) -> dict:
    diffs = [o - torch.tensor(logps, dtype=torch.float64) for (_, _, logps), o in zip(rows, old)]
    nan = sum(int(torch.isnan(d).sum()) for d in diffs)
    diffs = [torch.nan_to_num(d, nan=0.0) for d in diffs]  # as TRL: a token vLLM gave no log-prob has ratio 1
    lengths = [len(d) for d in diffs]
    return {
        "model": args.model, "data": args.data, "prompts": args.num_prompts, "group": args.num_generations,
        "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "vllm_dtype": args.vllm_dtype,
        "trainer_dtype": args.trainer_dtype, "bounds": [args.clip_min, args.clip_max],
        "max_completion_length": args.max_completion_length, "completion_length": {
            "mean": statistics.mean(lengths), "min": min(lengths), "max": max(lengths)},
        "tokens_without_vllm_logprob": nan, "vllm_sampling_seconds": sampling_seconds,
        "per_token": token_report(diffs, args.clip_min, args.clip_max),
        "per_completion": sequence_report(diffs, args.num_generations, args.clip_min, args.clip_max),
        "by_length_quartile": by_length(diffs, args.num_generations, args.clip_min, args.clip_max),
        "logged_metrics": logged_metrics(rows, old, args.clip_min, args.clip_max),
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    from transformers import AutoTokenizer  # noqa: PLC0415

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prompts = prompt_token_ids(args, tokenizer)
    rows, seconds = sample_with_vllm(args, prompts)
    old = trainer_logps(args, rows)
    result = report(args, rows, old, seconds)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
