r"""`disco-trl eval`: Pass@1 averaged over samples, and pass@k, on the paper's math benchmarks.

    disco-trl eval --model ./outputs/disco-1.5b --benchmarks aime24 aime25 math500 amc23 minerva olympiadbench
    disco-trl eval --model Qwen/Qwen2.5-Math-1.5B --benchmarks aime24 --num-samples 16 --output-dir eval/q15

    from disco_trl.evaluation import evaluate
    results = evaluate("./outputs/disco-1.5b", ["aime24", "math500"], num_samples=16)
    results = evaluate(model, ["aime24"], tokenizer=tokenizer, num_samples=2, max_new_tokens=64, limit=5)

For every problem, `num_samples` completions are sampled (temperature 0.6, top-p 0.95, up to 8,192 new tokens by
default: the paper's protocol) with vLLM when it is installed and a GPU is present, else with plain
`transformers` generation. Each completion is graded with `disco_trl.rewards.boxed_math_reward` (last ``\boxed{}``
after ``</think>``, math-verify equivalence). Reported per benchmark: Pass@1 averaged over the samples (the paper's
metric: the mean over problems of c/n, c correct out of n samples) and pass@k from the unbiased estimator of Chen
et al. (2021), ``1 - C(n-c, k) / C(n, k)``; then their average over benchmarks (the paper's "Avg.").

Output folder (when `output_dir` is given; the CLI defaults to ``eval_results/<model name>``):

* ``samples.jsonl``: one record per completion (benchmark, problem_id, sample, completion, answer, solution,
  reward, completion_tokens, finish_reason), appended as generation goes, so an interrupted run resumes where it
  stopped (run the same command again) and a finished one can be inspected or re-graded;
* ``problems.jsonl``: one record per problem (benchmark, problem_id, problem, solution, prompt);
* ``results.json`` and ``results.md``: the metrics (JSON, and a Markdown table);
* ``config.json``: the generation settings; resuming with different settings is refused (use a new folder).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_BENCHMARKS",
    "evaluate",
    "format_markdown",
    "main",
    "pass_at_k",
    "summarize",
]

DEFAULT_BENCHMARKS = ("aime24", "aime25", "math500", "amc23", "minerva", "olympiadbench")
BENCHMARK_TITLES = {
    "aime24": "AIME 2024",
    "aime25": "AIME 2025",
    "math500": "MATH-500",
    "amc23": "AMC 2023",
    "minerva": "Minerva",
    "olympiadbench": "OlympiadBench",
}
# Settings that must match to resume into an existing output folder (num_samples and limit may grow).
_RESUME_KEYS = ("model", "temperature", "top_p", "max_new_tokens", "conversational", "system_prompt", "prompt_template")


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as a running product (no huge binomials). Requires 0 <= c <= n and 1 <= k <= n.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k expects integers, got n={n!r}, c={c!r}, k={k!r}.")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need n >= 1 and 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be between 1 and the number of samples n={n}, got k={k}.")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def _default_ks(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def summarize(
    correct: Mapping[str, Sequence[Sequence[float]]], k_values: Iterable[int] | None = None
) -> dict[str, Any]:
    """Metrics from per-sample rewards: ``{benchmark: [[r_11, r_12, ...], ...]}`` (one list per problem).

    Returns ``{"benchmarks": {name: {...}}, "average": {...}}`` where each entry has ``pass@1`` (mean over problems
    of the fraction of correct samples: Pass@1 averaged over samples), ``pass@k`` for each k, ``num_problems`` and
    ``samples_per_problem``; `average` is the unweighted mean over benchmarks (as the paper's tables).
    """
    out: dict[str, Any] = {"benchmarks": {}, "average": {}}
    wanted = None if k_values is None else sorted({int(k) for k in k_values})
    for name, problems in correct.items():
        problems = [list(p) for p in problems if len(p) > 0]
        if not problems:
            continue
        n_min = min(len(p) for p in problems)
        ks = [k for k in (wanted or _default_ks(n_min)) if 1 <= k <= n_min]
        entry: dict[str, Any] = {
            "num_problems": len(problems),
            "samples_per_problem": n_min if n_min == max(len(p) for p in problems) else [n_min, max(len(p) for p in problems)],
            "num_correct": [int(sum(1 for r in p if r > 0.5)) for p in problems],
        }
        entry["pass@1"] = sum(c / len(p) for c, p in zip(entry["num_correct"], problems)) / len(problems)
        for k in ks:
            entry[f"pass@{k}"] = sum(
                pass_at_k(len(p), c, k) for c, p in zip(entry["num_correct"], problems)
            ) / len(problems)
        out["benchmarks"][name] = entry
    if out["benchmarks"]:
        common = set.intersection(*({key for key in e if key.startswith("pass@")} for e in out["benchmarks"].values()))
        for key in sorted(common, key=lambda s: int(s.split("@")[1])):
            out["average"][key] = sum(e[key] for e in out["benchmarks"].values()) / len(out["benchmarks"])
        out["average"]["num_benchmarks"] = len(out["benchmarks"])
    return out


def format_markdown(summary: Mapping[str, Any], title: str | None = None) -> str:
    """A Markdown table: one row per benchmark and an average row; Pass@1 (avg over samples) and pass@k in %."""
    benchmarks = summary.get("benchmarks", {})
    if not benchmarks:
        return "(no results)\n"
    keys = sorted(
        set.intersection(*({k for k in e if k.startswith("pass@")} for e in benchmarks.values())),
        key=lambda s: int(s.split("@")[1]),
    )
    header = ["Benchmark", "Problems", "Samples"] + [
        ("Pass@1 (avg)" if k == "pass@1" else k) for k in keys
    ]
    lines = [f"### {title}\n" if title else "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in benchmarks.items():
        samples = entry["samples_per_problem"]
        samples = samples if isinstance(samples, int) else f"{samples[0]}-{samples[1]}"
        row = [BENCHMARK_TITLES.get(name, name), str(entry["num_problems"]), str(samples)]
        row += [f"{100 * entry[k]:.1f}" for k in keys]
        lines.append("| " + " | ".join(row) + " |")
    average = summary.get("average", {})
    if len(benchmarks) > 1:
        lines.append("| **Average** | | | " + " | ".join(f"**{100 * average[k]:.1f}**" for k in keys) + " |")
    return "\n".join(line for line in lines if line != "") + "\n"


# --------------------------------------------------------------------------------------------------------------------
# Generation backends
# --------------------------------------------------------------------------------------------------------------------


def _vllm_usable() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


class _TransformersGenerator:
    """Batched sampling with `model.generate` (any device; the CPU fallback and the in-memory-model path)."""

    name = "transformers"

    def __init__(self, model, tokenizer, *, batch_size: int, seed: int):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = max(1, int(batch_size))
        self.seed = seed
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.was_training = bool(getattr(model, "training", False))
        self.model.eval()

    def close(self) -> None:
        if self.was_training:  # an in-memory model goes back to training mode (evaluate between training phases)
            self.model.train()

    def generate(self, prompts: list[str], *, temperature: float, top_p: float, max_new_tokens: int, seed: int):
        import torch

        tok = self.tokenizer
        old_side = tok.padding_side
        tok.padding_side = "left"
        try:
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            tok.padding_side = old_side
        device = next(self.model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items()}
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        sampling = temperature > 0
        kwargs = dict(max_new_tokens=max_new_tokens, do_sample=sampling, pad_token_id=tok.pad_token_id)
        if sampling:
            # exactly the protocol's sampler: no top-k and no repetition penalty from the model's generation_config
            kwargs.update(temperature=temperature, top_p=top_p, top_k=0, repetition_penalty=1.0)
        torch.manual_seed(seed)
        with torch.no_grad():
            out = self.model.generate(**enc, **kwargs)
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        results = []
        for ids in new:
            length, finish = len(ids), "length"
            for pos, tid in enumerate(ids):
                if tid in eos_ids:
                    length, finish = pos + 1, "stop"
                    break
            text = tok.decode(ids[:length], skip_special_tokens=True)
            results.append((text, length, finish))
        return results


class _VLLMGenerator:
    name = "vllm"

    def __init__(self, model_path: str, tokenizer_path: str | None, *, seed: int, dtype: str, **llm_kwargs: Any):
        from vllm import LLM

        kwargs = {k: v for k, v in llm_kwargs.items() if v is not None}
        # vLLM's own sampling defaults, not the model's generation_config.json (which may set top_k, a repetition
        # penalty...): the protocol is temperature and top-p only
        kwargs.setdefault("generation_config", "vllm")
        self.llm = LLM(model=model_path, tokenizer=tokenizer_path or model_path, seed=seed, dtype=dtype, **kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.batch_size = 1 << 30

    def generate_n(self, prompts: list[str], ns: list[int], *, temperature, top_p, max_new_tokens, seed):
        from vllm import SamplingParams

        params = [
            SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens, seed=seed + i)
            for i, n in enumerate(ns)
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            [(o.text, len(o.token_ids), o.finish_reason or "stop") for o in request.outputs] for request in outputs
        ]


def _load_transformers(model_path: str, tokenizer_path: str | None, dtype: str, device: str | None):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path or model_path)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch_dtype)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device), tokenizer


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


def _prompt_text(prompt: Any, tokenizer) -> str:
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    # No chat template (a base model): the messages' text, one per paragraph.
    return "\n\n".join(m["content"] for m in prompt)


def _problem_key(problem: str, solution: str) -> str:
    return hashlib.sha1(f"{problem}\x00{solution}".encode()).hexdigest()[:16]


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except ValueError:  # a line cut by an interruption: that sample is generated again
                continue
    return rows


def _resolve_benchmarks(benchmarks: Any, *, conversational: bool, system_prompt: str | None, prompt_template: str | None,
                        limit: int | None) -> dict[str, Any]:
    from .data import PROMPT_TEMPLATE, load_math_dataset

    template = prompt_template or PROMPT_TEMPLATE
    if benchmarks is None:
        benchmarks = DEFAULT_BENCHMARKS
    if isinstance(benchmarks, str):
        benchmarks = [b for b in benchmarks.replace(",", " ").split() if b]
    items: list[tuple[str, Any]]
    if isinstance(benchmarks, Mapping):
        items = list(benchmarks.items())
    else:
        items = []
        for entry in benchmarks:
            if isinstance(entry, tuple | list) and len(entry) == 2:
                items.append((str(entry[0]), entry[1]))
            elif isinstance(entry, str):
                if entry == "all":
                    items += [(name, name) for name in DEFAULT_BENCHMARKS]
                else:
                    items.append((Path(entry).stem if os.sep in entry or "." in entry else entry, entry))
            else:
                raise TypeError(
                    f"evaluate: a benchmark must be a name, a file path, (name, Dataset) or a dict of them; got {entry!r}."
                )
    resolved: dict[str, Any] = {}
    for name, spec in items:
        if isinstance(spec, str):
            from .data import canonical_source

            canonical = canonical_source(spec)
            if canonical is not None and name == spec:
                name = canonical
            dataset = load_math_dataset(
                spec, conversational=conversational, limit=limit, prompt_template=template, system_prompt=system_prompt
            )
        else:
            dataset = spec
            missing = [c for c in ("prompt", "solution") if c not in dataset.column_names]
            if missing:
                raise ValueError(
                    f"evaluate: benchmark {name!r} has no {missing} column(s) (it has {dataset.column_names}); build it "
                    "with disco_trl.data.load_math_dataset, or add `prompt` and `solution` columns."
                )
            if limit is not None:
                dataset = dataset.select(range(min(limit, len(dataset))))
        resolved[name] = dataset
    if not resolved:
        raise ValueError("evaluate: no benchmarks given.")
    return resolved


def evaluate(
    model: Any,
    benchmarks: Any = DEFAULT_BENCHMARKS,
    *,
    num_samples: int = 16,
    temperature: float = 0.6,
    top_p: float = 0.95,
    max_new_tokens: int = 8192,
    output_dir: str | os.PathLike | None = None,
    tokenizer: Any = None,
    limit: int | None = None,
    backend: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
    k_values: Iterable[int] | None = None,
    conversational: bool = True,
    system_prompt: str | None = None,
    prompt_template: str | None = None,
    dtype: str = "auto",
    device: str | None = None,
    resume: bool = True,
    progress: bool = True,
    vllm_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample `num_samples` completions per problem, grade them, and return the metrics dict.

    Args:
        model: a model path or Hub id, or an already loaded causal LM (then pass `tokenizer` too).
        benchmarks: names (``"aime24"``, ``"aime25"``, ``"math500"``, ``"amc23"``, ``"minerva"``,
            ``"olympiadbench"``, ``"all"``), local files, ``(name, Dataset)`` pairs or a ``{name: Dataset}`` dict
            (a Dataset needs `prompt` and `solution` columns, as `disco_trl.data.load_math_dataset` makes).
        num_samples, temperature, top_p, max_new_tokens: the sampling protocol (the paper: 16, 0.6, 0.95, 8k).
        output_dir: where records and results go (see the module docstring); None keeps everything in memory.
        limit: the first `limit` problems of each benchmark (quick checks).
        backend: ``"auto"`` (vLLM when installed, a GPU is present and `model` is a path), ``"vllm"`` or
            ``"transformers"``.
        batch_size: sequences per `generate` call with transformers.
        k_values: which pass@k to report (default: 1, 2, 4, ... up to num_samples).
        resume: reuse the records already in `output_dir` (same settings required); False starts over.

    Returns ``{"benchmarks": {name: {"pass@1", "pass@k"..., "num_problems", ...}}, "average": {...},
    "config": {...}, "timing": {...}}``.
    """
    from .rewards import boxed_math_reward, extract_boxed_answer

    if num_samples < 1:
        raise ValueError(f"evaluate: num_samples must be >= 1, got {num_samples}.")
    if max_new_tokens < 1:
        raise ValueError(f"evaluate: max_new_tokens must be >= 1, got {max_new_tokens}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"evaluate: top_p must be in (0, 1], got {top_p}.")
    if temperature < 0:
        raise ValueError(f"evaluate: temperature must be >= 0, got {temperature}.")
    if backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"evaluate: backend must be 'auto', 'vllm' or 'transformers', got {backend!r}.")
    model_is_path = isinstance(model, str | os.PathLike)
    if not model_is_path and tokenizer is None:
        raise ValueError("evaluate: an in-memory model needs its tokenizer: evaluate(model, ..., tokenizer=tokenizer).")

    datasets_by_name = _resolve_benchmarks(
        benchmarks, conversational=conversational, system_prompt=system_prompt, prompt_template=prompt_template,
        limit=limit,
    )
    model_name = str(model) if model_is_path else getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    config = {
        "model": model_name if model_is_path else f"<in-memory {model_name}>",
        "benchmarks": list(datasets_by_name),
        "num_samples": num_samples,
        "temperature": temperature,
        "top_p": top_p,
        "max_new_tokens": max_new_tokens,
        "conversational": conversational,
        "system_prompt": system_prompt,
        "prompt_template": prompt_template,
        "limit": limit,
        "seed": seed,
    }

    out_dir = Path(output_dir) if output_dir is not None else None
    done: dict[tuple[str, int], dict[int, dict]] = {}
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        config_path = out_dir / "config.json"
        if resume and config_path.is_file():
            previous = json.loads(config_path.read_text())
            changed = {k: (previous.get(k), config[k]) for k in _RESUME_KEYS if previous.get(k) != config[k]}
            if changed:
                raise ValueError(
                    f"evaluate: {out_dir} holds a run with other settings {changed} (old, new); use another "
                    "output_dir, or resume=False (--overwrite) to start over."
                )
        if not resume:
            for name in ("samples.jsonl", "problems.jsonl", "results.json", "results.md"):
                (out_dir / name).unlink(missing_ok=True)
        for record in _read_jsonl(out_dir / "samples.jsonl"):
            done.setdefault((record["benchmark"], record["problem_id"]), {})[record["sample"]] = record
        config_path.write_text(json.dumps(config, indent=2) + "\n")

    # The work: (benchmark, problem_id) -> sample indices still missing.
    problems: list[dict[str, Any]] = []
    known_problems = set()
    if out_dir is not None:
        for row in _read_jsonl(out_dir / "problems.jsonl"):
            known_problems.add((row["benchmark"], row["problem_id"], row.get("key")))
    new_problem_rows = []
    tokenizer_for_prompts = tokenizer
    generator = None
    started = time.perf_counter()

    if model_is_path:
        use_vllm = backend == "vllm" or (backend == "auto" and _vllm_usable())
        if use_vllm:
            generator = _VLLMGenerator(
                str(model), tokenizer if isinstance(tokenizer, str) else None, seed=seed, dtype=dtype,
                **dict(vllm_kwargs or {}),
            )
        else:
            loaded_model, loaded_tok = _load_transformers(
                str(model), tokenizer if isinstance(tokenizer, str) else None, dtype, device
            )
            generator = _TransformersGenerator(loaded_model, loaded_tok, batch_size=batch_size, seed=seed)
        tokenizer_for_prompts = generator.tokenizer
    else:
        if backend == "vllm":
            raise ValueError("evaluate: backend='vllm' needs a model path, not an in-memory model.")
        generator = _TransformersGenerator(model, tokenizer, batch_size=batch_size, seed=seed)
    load_seconds = time.perf_counter() - started

    for name, dataset in datasets_by_name.items():
        for pid, row in enumerate(dataset):
            problem_text = row.get("problem") or (row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"])
            key = _problem_key(str(problem_text), str(row["solution"]))
            existing = done.get((name, pid), {})
            if existing and any(r.get("key", key) != key for r in existing.values()):
                raise ValueError(
                    f"evaluate: the records in {out_dir} for {name} problem {pid} belong to another problem (the "
                    "benchmark file changed?); use another output_dir or resume=False."
                )
            text = _prompt_text(row["prompt"], tokenizer_for_prompts)
            missing = [j for j in range(num_samples) if j not in existing]
            problems.append(
                dict(benchmark=name, problem_id=pid, key=key, prompt=text, solution=str(row["solution"]), missing=missing)
            )
            if (name, pid, key) not in known_problems:
                new_problem_rows.append(
                    dict(benchmark=name, problem_id=pid, key=key, problem=problem_text, solution=str(row["solution"]),
                         prompt=text)
                )
    if out_dir is not None and new_problem_rows:
        with open(out_dir / "problems.jsonl", "a", encoding="utf-8") as handle:
            for row in new_problem_rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")

    total = len(problems)
    todo = [p for p in problems if p["missing"]]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, initial=total - len(todo), desc="eval problems", unit="problem", dynamic_ncols=True)

    samples_file = open(out_dir / "samples.jsonl", "a", encoding="utf-8") if out_dir is not None else None
    gen_seconds = grade_seconds = 0.0
    generated = 0

    def record(problem: dict, sample: int, text: str, n_tokens: int, finish: str, reward: float) -> None:
        rec = dict(
            benchmark=problem["benchmark"], problem_id=problem["problem_id"], key=problem["key"], sample=sample,
            completion=text, answer=extract_boxed_answer(text), solution=problem["solution"], reward=reward,
            completion_tokens=n_tokens, finish_reason=finish,
        )
        done.setdefault((problem["benchmark"], problem["problem_id"]), {})[sample] = rec
        if samples_file is not None:
            samples_file.write(json.dumps(rec, ensure_ascii=False) + "\n")

    try:
        if isinstance(generator, _VLLMGenerator):
            chunk = 128  # problems per vLLM call: large enough to keep the GPU busy, small enough to save progress
            for start in range(0, len(todo), chunk):
                part = todo[start : start + chunk]
                t0 = time.perf_counter()
                outputs = generator.generate_n(
                    [p["prompt"] for p in part], [len(p["missing"]) for p in part], temperature=temperature,
                    top_p=top_p, max_new_tokens=max_new_tokens, seed=seed + start,
                )
                gen_seconds += time.perf_counter() - t0
                flat = [(p, j, o) for p, outs in zip(part, outputs) for j, o in zip(p["missing"], outs)]
                t0 = time.perf_counter()
                rewards = boxed_math_reward([o[0] for _, _, o in flat], [p["solution"] for p, _, _ in flat])
                grade_seconds += time.perf_counter() - t0
                for (p, j, (text, n_tok, finish)), r in zip(flat, rewards):
                    record(p, j, text, n_tok, finish, r)
                generated += len(flat)
                if samples_file is not None:
                    samples_file.flush()
                if bar is not None:
                    bar.update(len(part))
        else:
            # longest prompts first: a batch holds prompts of similar length (less padding), and memory problems
            # show up in the first batch rather than at the end
            pending = [(p, j) for p in sorted(todo, key=lambda p: -len(p["prompt"])) for j in p["missing"]]
            remaining = {id(p): len(p["missing"]) for p in todo}
            step = generator.batch_size
            for batch_no, start in enumerate(range(0, len(pending), step)):
                part = pending[start : start + step]
                t0 = time.perf_counter()
                outs = generator.generate(
                    [p["prompt"] for p, _ in part], temperature=temperature, top_p=top_p,
                    max_new_tokens=max_new_tokens, seed=seed * 1_000_003 + batch_no,
                )
                gen_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                rewards = boxed_math_reward([o[0] for o in outs], [p["solution"] for p, _ in part])
                grade_seconds += time.perf_counter() - t0
                finished = 0
                for (p, j), (text, n_tok, finish), r in zip(part, outs, rewards):
                    record(p, j, text, n_tok, finish, r)
                    remaining[id(p)] -= 1
                    finished += remaining[id(p)] == 0
                generated += len(part)
                if samples_file is not None:
                    samples_file.flush()
                if bar is not None and finished:
                    bar.update(finished)
    finally:
        if hasattr(generator, "close"):
            generator.close()
        if samples_file is not None:
            samples_file.close()
        if bar is not None:
            bar.close()

    per_benchmark: dict[str, list[list[float]]] = {name: [] for name in datasets_by_name}
    for p in problems:
        samples = done.get((p["benchmark"], p["problem_id"]), {})
        per_benchmark[p["benchmark"]].append([samples[j]["reward"] for j in range(num_samples) if j in samples])
    summary = summarize(per_benchmark, k_values)
    summary["config"] = dict(config, backend=generator.name if generator else None)
    summary["timing"] = {
        "load_seconds": round(load_seconds, 3),
        "generation_seconds": round(gen_seconds, 3),
        "grading_seconds": round(grade_seconds, 3),
        "samples_generated": generated,
        "samples_reused": sum(len(v) for v in done.values()) - generated,
    }
    if out_dir is not None:
        (out_dir / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out_dir / "results.md").write_text(format_markdown(summary, title=f"{config['model']}"))
    return summary


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="disco-trl eval",
        description="Pass@1 averaged over samples and pass@k on math benchmarks (the DisCO paper's protocol).",
    )
    p.add_argument("--model", required=True, help="model path or Hub id")
    p.add_argument("--tokenizer", default=None, help="tokenizer path or Hub id (default: the model's)")
    p.add_argument(
        "--benchmarks", nargs="+", default=list(DEFAULT_BENCHMARKS),
        help="benchmark names (aime24 aime25 math500 amc23 minerva olympiadbench, or all) or local files",
    )
    p.add_argument("--num-samples", type=int, default=16, help="samples per problem (default 16)")
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=int, default=8192)
    p.add_argument("--k", type=int, nargs="+", default=None, help="pass@k values to report (default 1,2,4,..,n)")
    p.add_argument("--output-dir", default=None, help="default: eval_results/<model name>")
    p.add_argument("--limit", type=int, default=None, help="first N problems of each benchmark")
    p.add_argument("--backend", choices=("auto", "vllm", "transformers"), default="auto")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per generate() call (transformers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plain-text", action="store_true", help="plain-text prompts instead of the chat template")
    p.add_argument("--system-prompt", default=None)
    p.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    p.add_argument("--device", default=None, help="transformers backend: cpu, cuda, cuda:1 ...")
    p.add_argument("--tensor-parallel-size", type=int, default=None, help="vLLM")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM")
    p.add_argument("--max-model-len", type=int, default=None, help="vLLM")
    p.add_argument("--overwrite", action="store_true", help="discard records already in the output folder")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    output_dir = args.output_dir or str(Path("eval_results") / Path(args.model.rstrip("/")).name)
    results = evaluate(
        args.model,
        args.benchmarks,
        num_samples=args.num_samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        output_dir=output_dir,
        tokenizer=args.tokenizer,
        limit=args.limit,
        backend=args.backend,
        batch_size=args.batch_size,
        seed=args.seed,
        k_values=args.k,
        conversational=not args.plain_text,
        system_prompt=args.system_prompt,
        dtype=args.dtype,
        device=args.device,
        resume=not args.overwrite,
        progress=not args.no_progress,
        vllm_kwargs=dict(
            tensor_parallel_size=args.tensor_parallel_size,
            gpu_memory_utilization=args.gpu_memory_utilization,
            max_model_len=args.max_model_len,
        ),
    )
    print(format_markdown(results, title=results["config"]["model"]))
    print(f"Records and results: {Path(output_dir).resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
