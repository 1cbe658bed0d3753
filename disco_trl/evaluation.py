r"""`disco-trl eval`: Pass@1 averaged over samples, and pass@k, on the paper's math benchmarks.

    disco-trl eval --model ./outputs/disco-1.5b --benchmarks aime24 aime25 math500 amc23 minerva olympiadbench
    disco-trl eval --model Qwen/Qwen2.5-Math-1.5B --benchmarks aime24 --num-samples 16 --output-dir eval/q15

    from disco_trl.evaluation import evaluate
    results = evaluate("./outputs/disco-1.5b", ["aime24", "math500"], num_samples=16)
    results = evaluate(model, ["aime24"], tokenizer=tokenizer, num_samples=2, max_new_tokens=64, limit=5)

For every problem, `num_samples` completions are sampled (temperature 0.6, top-p 0.95, up to 8,192 new tokens by
default: the paper's protocol) with vLLM when it is installed and a GPU is present, else with plain
`transformers` generation. Completion j of a problem is drawn with its own seed, a function of `seed`, the problem
and j only (`disco_trl.eval_generation.sample_seed`): a resumed or extended run (``--num-samples`` raised in an
existing folder) gives the samples a fresh run would. Each completion is graded with
`disco_trl.rewards.boxed_math_reward` (last ``\boxed{}`` after ``</think>``, math-verify equivalence). Reported per
benchmark: Pass@1 averaged over the samples (the paper's metric: the mean over problems of c/n, c correct out of n
samples) and pass@k from the unbiased estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``; then their
average over benchmarks (the paper's "Avg."). Metrics: `disco_trl.eval_metrics`; generation:
`disco_trl.eval_generation`; the output folder and resuming: `disco_trl.eval_records`.

Output folder (when `output_dir` is given; the CLI defaults to ``eval_results/<model name>``):

* ``samples.jsonl``: one record per completion (benchmark, problem_id, sample, completion, answer, solution,
  reward, completion_tokens, finish_reason), appended as generation goes, so an interrupted run resumes where it
  stopped (run the same command again; a partial last line left by the interruption is dropped, with a warning)
  and a finished one can be inspected or re-graded;
* ``problems.jsonl``: one record per problem (benchmark, problem_id, problem, solution, prompt);
* ``results.json`` and ``results.md``: the metrics (JSON, and a Markdown table);
* ``config.json``: the generation settings; resuming with different settings is refused (use a new folder).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .eval_generation import check_model_source, make_generator, sample_seed
from .eval_metrics import BENCHMARK_TITLES, format_markdown, pass_at_k, summarize
from .eval_records import SAMPLE_SEEDS, RunRecords

__all__ = [
    "BENCHMARK_TITLES",
    "DEFAULT_BENCHMARKS",
    "evaluate",
    "format_markdown",
    "main",
    "pass_at_k",
    "summarize",
]

DEFAULT_BENCHMARKS = ("aime24", "aime25", "math500", "amc23", "minerva", "olympiadbench")


# --------------------------------------------------------------------------------------------------------------------
# Benchmarks and problems
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


# --------------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------------


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
        seed: the run's seed; sample j of a problem is drawn with `sample_seed(seed, problem, j)` whatever the
            batching, so resuming or raising `num_samples` gives the samples a fresh run would.
        resume: reuse the records already in `output_dir` (same settings required); False starts over.

    Returns ``{"benchmarks": {name: {"pass@1", "pass@k"..., "num_problems", ...}}, "average": {...},
    "config": {...}, "timing": {...}}``.
    """
    model_is_path = _check_arguments(model, tokenizer, num_samples=num_samples, max_new_tokens=max_new_tokens,
                                     top_p=top_p, temperature=temperature, backend=backend)
    datasets_by_name = _resolve_benchmarks(
        benchmarks, conversational=conversational, system_prompt=system_prompt, prompt_template=prompt_template,
        limit=limit,
    )
    config = _run_config(
        model, model_is_path, datasets_by_name, num_samples=num_samples, temperature=temperature, top_p=top_p,
        max_new_tokens=max_new_tokens, conversational=conversational, system_prompt=system_prompt,
        prompt_template=prompt_template, limit=limit, seed=seed,
    )
    records = RunRecords.open(output_dir, config, resume=resume)
    problems = _plan_problems(datasets_by_name, records, num_samples)
    started = time.perf_counter()
    generator = make_generator(model, tokenizer, backend=backend, batch_size=batch_size, seed=seed, dtype=dtype,
                               device=device, vllm_kwargs=dict(vllm_kwargs or {}))
    load_seconds = time.perf_counter() - started
    try:
        _render_prompts(problems, generator.tokenizer if model_is_path else tokenizer)
        records.add_problems(_problem_rows(problems))
        sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
        timing = _generate_missing(generator, problems, records, sampling=sampling, seed=seed, progress=progress)
    finally:
        if hasattr(generator, "close"):
            generator.close()
        records.close()
    timing = dict(load_seconds=round(load_seconds, 3), **timing,
                  samples_reused=records.count() - timing["samples_generated"])
    summary = _summarize_run(problems, records, datasets_by_name, num_samples, k_values)
    summary["config"] = dict(config, backend=generator.name)
    summary["timing"] = timing
    records.write_results(summary, format_markdown(summary, title=f"{config['model']}"))
    return summary


def _check_arguments(model: Any, tokenizer: Any, *, num_samples: int, max_new_tokens: int, top_p: float,
                     temperature: float, backend: str) -> bool:
    """ValueError / FileNotFoundError for bad settings, before anything loads; whether `model` is a path or id."""
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
    if model_is_path:
        check_model_source(model, role="model")
    if isinstance(tokenizer, str | os.PathLike):
        check_model_source(tokenizer, role="tokenizer")
    return model_is_path


def _run_config(model: Any, model_is_path: bool, datasets_by_name: Mapping[str, Any], **settings: Any) -> dict:
    """What config.json records (and what a resumed run must match, see `eval_records.RESUME_KEYS`)."""
    if model_is_path:
        name = str(model)
    else:
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        name = f"<in-memory {name}>"
    return {"model": name, "benchmarks": list(datasets_by_name), **settings, "sample_seeds": SAMPLE_SEEDS}


def _plan_problems(datasets_by_name: Mapping[str, Any], records: RunRecords, num_samples: int) -> list[dict]:
    """One entry per problem: its identity, reference and the sample indices still missing."""
    problems = []
    for name, dataset in datasets_by_name.items():
        for pid, row in enumerate(dataset):
            problem_text = row.get("problem") or (
                row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][-1]["content"]
            )
            key = _problem_key(str(problem_text), str(row["solution"]))
            problems.append(dict(
                benchmark=name, problem_id=pid, key=key, problem=problem_text, solution=str(row["solution"]),
                messages=row["prompt"], missing=records.missing(name, pid, key, num_samples),
            ))
    return problems


def _render_prompts(problems: list[dict], tokenizer: Any) -> None:
    for p in problems:
        p["prompt"] = _prompt_text(p["messages"], tokenizer)


def _problem_rows(problems: list[dict]) -> list[dict]:
    fields = ("benchmark", "problem_id", "key", "problem", "solution", "prompt")
    return [{f: p[f] for f in fields} for p in problems]


# --------------------------------------------------------------------------------------------------------------------
# Generation and grading
# --------------------------------------------------------------------------------------------------------------------


def _generate_missing(generator: Any, problems: list[dict], records: RunRecords, *, sampling: Mapping[str, Any],
                      seed: int, progress: bool) -> dict[str, float]:
    """Generate and grade every missing sample, batch by batch, saving each batch; the time spent on each part."""
    todo = [p for p in problems if p["missing"]]
    # longest prompts first: a batch holds prompts of similar length (less padding), and memory problems show up in
    # the first batch rather than at the end
    pending = [(p, j) for p in sorted(todo, key=lambda p: -len(p["prompt"])) for j in p["missing"]]
    remaining = {id(p): len(p["missing"]) for p in todo}
    timing = {"generation_seconds": 0.0, "grading_seconds": 0.0, "samples_generated": 0}
    bar = _progress_bar(len(problems), len(problems) - len(todo)) if progress else None
    try:
        for start in range(0, len(pending), generator.batch_size):
            part = pending[start : start + generator.batch_size]
            t0 = time.perf_counter()
            outs = generator.generate(
                [p["prompt"] for p, _ in part], seeds=[sample_seed(seed, p["key"], j) for p, j in part], **sampling
            )
            t1 = time.perf_counter()
            records.add_samples(_graded_records(part, outs))
            timing["generation_seconds"] += t1 - t0
            timing["grading_seconds"] += time.perf_counter() - t1
            timing["samples_generated"] += len(part)
            for p, _ in part:
                remaining[id(p)] -= 1
            finished = sum(remaining[id(p)] == 0 for p in {id(p): p for p, _ in part}.values())
            if bar is not None and finished:
                bar.update(finished)
    finally:
        if bar is not None:
            bar.close()
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in timing.items()}


def _progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="eval problems", unit="problem", dynamic_ncols=True)


def _graded_records(part: list[tuple[dict, int]], outs: list[tuple[str, int, str]]) -> list[dict]:
    """The sample records of one batch: completion, extracted answer and reward."""
    from .rewards import boxed_math_reward, extract_boxed_answer

    rewards = boxed_math_reward([text for text, _, _ in outs], [p["solution"] for p, _ in part])
    return [
        dict(benchmark=p["benchmark"], problem_id=p["problem_id"], key=p["key"], sample=j, completion=text,
             answer=extract_boxed_answer(text), solution=p["solution"], reward=reward, completion_tokens=n_tokens,
             finish_reason=finish)
        for (p, j), (text, n_tokens, finish), reward in zip(part, outs, rewards)
    ]


def _summarize_run(problems: list[dict], records: RunRecords, datasets_by_name: Mapping[str, Any], num_samples: int,
                   k_values: Iterable[int] | None) -> dict[str, Any]:
    per_benchmark: dict[str, list[list[float]]] = {name: [] for name in datasets_by_name}
    for p in problems:
        per_benchmark[p["benchmark"]].append(records.rewards(p["benchmark"], p["problem_id"], num_samples))
    return summarize(per_benchmark, k_values)


# --------------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`disco-trl eval` (flags and one-line errors: `disco_trl.eval_cli`)."""
    from .eval_cli import main as cli_main

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
