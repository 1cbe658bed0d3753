"""`evaluate`: sample, grade and summarise (the protocol and the output folder: `disco_trl.eval`)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm
from transformers import AutoTokenizer

from ..preflight import FolderLock, check_tokenizer
from ..rewards import boxed_math_reward, extract_boxed_answer
from .benchmarks import DEFAULT_BENCHMARKS, plan_problems, problem_rows, render_prompts, resolve_benchmarks
from .generation import check_device, check_dtype, check_model_source, make_generator, sample_seed
from .identity import model_identity
from .metrics import format_markdown, summarize
from .records import SAMPLE_SEEDS, RunRecords


EVAL_LOCK_HOLDER = "an evaluation (disco-trl eval)"  # how a second run into the folder names the one holding it


def evaluate(
    model: Any, benchmarks: Any = DEFAULT_BENCHMARKS, *, num_samples: int = 16, temperature: float = 0.6,
    top_p: float = 0.95, max_new_tokens: int = 8192, output_dir: str | os.PathLike | None = None,
    tokenizer: Any = None, limit: int | None = None, backend: str = "auto", batch_size: int = 64, seed: int = 0,
    k_values: Iterable[int] | None = None, conversational: bool = True, system_prompt: str | None = None,
    prompt_template: str | None = None, dtype: str = "auto", device: str | None = None, resume: bool = True,
    progress: bool = True, vllm_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Sample `num_samples` completions per problem, grade them, and return the metrics dict.

    Args:
        model: a model path or Hub id, or an already loaded causal LM (then pass `tokenizer` too).
        benchmarks: names (``"aime24"``, ``"aime25"``, ``"math500"``, ``"amc23"``, ``"minerva"``,
            ``"olympiadbench"``, ``"all"``), local files, ``(name, Dataset)`` pairs or a ``{name: Dataset}`` dict
            (a Dataset needs `prompt` and `solution` columns, as `disco_trl.data.load_math_dataset` makes).
        num_samples, temperature, top_p, max_new_tokens: the sampling protocol (the paper: 16, 0.6, 0.95, 8k).
        output_dir: where records and results go (see `disco_trl.eval`); None keeps everything in memory.
            The folder is held for the run (`disco_trl.preflight.FolderLock`): a second evaluation into it is
            refused while this one runs.
        limit: the first `limit` (>= 1) problems of each benchmark. batch_size: sequences per `generate`
            (transformers, >= 1).
        backend: ``"auto"`` (vLLM when installed, a GPU is present and `model` is a path), ``"vllm"``,
        ``"transformers"``. dtype: ``"auto"``, ``"bfloat16"``, ``"float16"`` or ``"float32"``. device: the
            transformers backend's device (``"cpu"``, ``"cuda"``, ``"cuda:1"``...): it must exist here.
        k_values: which pass@k to report, each in 1..num_samples (default: 1, 2, 4, ... up to num_samples).
        seed: sample j of a problem is drawn with `sample_seed(seed, problem, j)` whatever the batching.
        resume: reuse the records already in `output_dir` (same settings and the same model, by what it is: see
            `disco_trl.eval.identity`); False starts over.

    Returns ``{"benchmarks": {name: {"pass@1", "pass@k"..., "num_problems", ...}}, "average": {...},
    "config": {...}, "timing": {...}}``.
    """
    k_values = None if k_values is None else list(k_values)
    _check_arguments(
        model, tokenizer, output_dir, num_samples=num_samples, max_new_tokens=max_new_tokens, top_p=top_p,
        temperature=temperature, backend=backend, limit=limit, batch_size=batch_size, k_values=k_values, dtype=dtype,
        device=device,
    )
    datasets_by_name = resolve_benchmarks(benchmarks, conversational=conversational, system_prompt=system_prompt,
                                          prompt_template=prompt_template, limit=limit)
    _check_tokenizer(model, tokenizer)
    config = _run_config(
        model, tokenizer, datasets_by_name, output_dir, num_samples=num_samples, temperature=temperature,
        top_p=top_p, max_new_tokens=max_new_tokens, conversational=conversational, system_prompt=system_prompt,
        prompt_template=prompt_template, limit=limit, seed=seed,
    )
    run = dict(backend=backend, batch_size=batch_size, seed=seed, dtype=dtype, device=device,
               vllm_kwargs=dict(vllm_kwargs or {}))
    sampling = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    with FolderLock(output_dir, EVAL_LOCK_HOLDER) if output_dir is not None else contextlib.nullcontext():
        records = RunRecords.open(output_dir, config, resume=resume)
        problems = plan_problems(datasets_by_name, records, num_samples)
        summary, timing, backend_name = _sample_and_summarize(
            model, tokenizer, problems, records, run=run, sampling=sampling, progress=progress,
            summary=dict(datasets_by_name=datasets_by_name, num_samples=num_samples, k_values=k_values),
        )
        summary = dict(summary, config=dict(config, backend=backend_name), timing=timing)
        records.write_results(summary, format_markdown(summary, title=f"{config['model']}"))
    return summary


def _sample_and_summarize(model: Any, tokenizer: Any, problems: list[dict], records: RunRecords, *,
                          run: dict[str, Any], sampling: dict[str, Any], progress: bool,
                          summary: dict[str, Any]) -> tuple[dict, dict, str]:
    """Load the backend, generate what is missing; the metrics, the timing and the backend's name."""
    started = time.perf_counter()
    generator = make_generator(model, tokenizer, **run)
    load_seconds = round(time.perf_counter() - started, 3)
    try:
        render_prompts(problems, generator.tokenizer if isinstance(model, str | os.PathLike) else tokenizer)
        records.add_problems(problem_rows(problems))
        timing = _generate_missing(generator, problems, records, sampling=sampling, seed=run["seed"],
                                   progress=progress)
    finally:
        if hasattr(generator, "close"):
            generator.close()
        records.close()
    timing = dict(load_seconds=load_seconds, **timing, samples_reused=records.count() - timing["samples_generated"])
    metrics = _summarize_run(problems, records, summary["datasets_by_name"], summary["num_samples"],
                             summary["k_values"])
    return metrics, timing, generator.name


def _check_arguments(model: Any, tokenizer: Any, output_dir: Any, *, num_samples: int, max_new_tokens: int,
                     top_p: float, temperature: float, backend: str, **settings: Any) -> None:
    """ValueError / FileNotFoundError for bad settings, before anything loads (or any folder is made)."""
    if not _is_int(num_samples) or num_samples < 1:
        raise ValueError(f"evaluate: num_samples must be >= 1, got {num_samples}.")
    if not _is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"evaluate: max_new_tokens must be >= 1, got {max_new_tokens}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"evaluate: top_p must be in (0, 1], got {top_p}.")
    if temperature < 0:
        raise ValueError(f"evaluate: temperature must be >= 0, got {temperature}.")
    if backend not in ("auto", "vllm", "transformers"):
        raise ValueError(f"evaluate: backend must be 'auto', 'vllm' or 'transformers', got {backend!r}.")
    _check_counts(num_samples, **settings)
    model_is_path = isinstance(model, str | os.PathLike)
    if not model_is_path and tokenizer is None:
        raise ValueError("evaluate: an in-memory model needs its tokenizer: evaluate(model, ..., tokenizer=...).")
    if model_is_path:
        check_model_source(model, role="model")
        _check_output_dir(model, output_dir)
    if isinstance(tokenizer, str | os.PathLike):
        check_model_source(tokenizer, role="tokenizer")


def _check_tokenizer(model: Any, tokenizer: Any) -> None:
    """A local model folder without tokenizer files gives an empty tokenizer (transformers 5), and generation fails
    with "cannot reshape tensor of 0 elements": refused here, before any weights load. A Hub id is not fetched for
    this."""
    if tokenizer is not None and not isinstance(tokenizer, str | os.PathLike):
        check_tokenizer(tokenizer, "evaluate: the tokenizer given")
        return
    source, role = (tokenizer, "tokenizer") if tokenizer is not None else (model, "model")
    if not isinstance(source, str | os.PathLike) or not Path(source).expanduser().is_dir():
        return
    try:
        loaded = AutoTokenizer.from_pretrained(Path(source).expanduser())
    except (OSError, ValueError):
        return  # not a model folder at all: loading the model says what is wrong
    check_tokenizer(loaded, f"evaluate: {role} folder {os.fspath(source)!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_counts(num_samples: int, *, limit: Any, batch_size: Any, k_values: list | None, dtype: Any,
                  device: Any) -> None:
    """The options that used to be corrected or dropped without a word: refused, each naming its flag."""
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(f"evaluate: limit (--limit) must be >= 1 problems per benchmark (or None for all), got "
                         f"{limit!r}.")
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"evaluate: batch_size (--batch-size) must be >= 1 sequences, got {batch_size!r}.")
    if k_values is not None:
        bad = [k for k in k_values if not _is_int(k) or not 1 <= k <= num_samples]
        if bad or not k_values:
            raise ValueError(
                f"evaluate: k_values (--k) must be integers from 1 to num_samples={num_samples} (pass@k needs k of "
                f"the samples per problem), got {k_values}; raise --num-samples or pick k in 1..{num_samples}."
            )
    check_dtype(dtype)
    check_device(device)


def _check_output_dir(model: Any, output_dir: Any) -> None:
    model_path = Path(model).expanduser()
    if output_dir is None or not model_path.is_dir():
        return
    if Path(output_dir).expanduser().resolve() == model_path.resolve():
        raise ValueError(
            f"evaluate: output_dir (--output-dir) {os.fspath(output_dir)!r} is the model's own folder: the "
            "evaluation's config.json would overwrite the model's. Use another folder."
        )


def _run_config(model: Any, tokenizer: Any, datasets_by_name: Mapping[str, Any], output_dir: Any,
                **settings: Any) -> dict:
    """What config.json records (and what a resumed run must match: `records.RESUME_KEYS` and the model identity)."""
    if isinstance(model, str | os.PathLike):
        name = os.fspath(model)
    else:
        name = getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
        name = f"<in-memory {name}>"
    # only an output folder is resumed, so only then is the identity computed (for an in-memory model: one pass over
    # its weights)
    identity = model_identity(model, tokenizer) if output_dir is not None else None
    return {"model": name, "model_identity": identity, "benchmarks": list(datasets_by_name), **settings,
            "sample_seeds": SAMPLE_SEEDS}


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
    return tqdm(total=total, initial=initial, desc="eval problems", unit="problem", dynamic_ncols=True)


def _graded_records(part: list[tuple[dict, int]], outs: list[tuple[str, int, str]]) -> list[dict]:
    """The sample records of one batch: completion, extracted answer and reward."""
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
