"""The problems of a `disco-trl eval` run: benchmarks by name, file or Dataset, and one plan entry per problem."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..data import BENCHMARKS, PROMPT_TEMPLATE, canonical_source, load_math_dataset


DEFAULT_BENCHMARKS = BENCHMARKS  # the paper's six


def resolve_benchmarks(benchmarks: Any, *, conversational: bool, system_prompt: str | None,
                       prompt_template: str | None, limit: int | None) -> dict[str, Any]:
    """{name: Dataset with `prompt` and `solution`} for names, files, (name, Dataset) pairs or a {name: Dataset}."""
    load = dict(conversational=conversational, limit=limit, prompt_template=prompt_template or PROMPT_TEMPLATE,
                system_prompt=system_prompt)
    resolved: dict[str, Any] = {}
    for name, spec in _named_entries(benchmarks):
        if isinstance(spec, str):
            canonical = canonical_source(spec)
            name = canonical if canonical is not None and name == spec else name
            resolved[name] = load_math_dataset(spec, **load)
        else:
            resolved[name] = _checked_dataset(name, spec, limit)
    if not resolved:
        raise ValueError("evaluate: no benchmarks given.")
    return resolved


def _named_entries(benchmarks: Any) -> list[tuple[str, Any]]:
    """(name, name-or-path-or-Dataset) pairs; `"all"` stands for the paper's six benchmarks."""
    if benchmarks is None:
        benchmarks = DEFAULT_BENCHMARKS
    if isinstance(benchmarks, str):
        benchmarks = [b for b in benchmarks.replace(",", " ").split() if b]
    if isinstance(benchmarks, Mapping):
        return list(benchmarks.items())
    items: list[tuple[str, Any]] = []
    for entry in benchmarks:
        if isinstance(entry, tuple | list) and len(entry) == 2:
            items.append((str(entry[0]), entry[1]))
        elif entry == "all":
            items += [(name, name) for name in DEFAULT_BENCHMARKS]
        elif isinstance(entry, str):
            items.append((Path(entry).stem if os.sep in entry or "." in entry else entry, entry))
        else:
            raise TypeError(
                f"evaluate: a benchmark must be a name, a file path, (name, Dataset) or a dict of them; got {entry!r}."
            )
    return _distinct_names(items)


def _is_file_entry(spec: Any) -> bool:
    return isinstance(spec, str) and (os.sep in spec or "." in spec)


def _distinct_names(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Benchmarks keyed by distinct names (results.json has one entry per name): files that share a name
    (v1/test.jsonl, v2/test.jsonl: Hub files are often all test.jsonl) are named by their path, as many folders up as
    tells them apart (v1/test, v2/test); the same benchmark given twice, or two datasets under one name, is refused."""
    names = [name for name, _ in items]
    for name in dict.fromkeys(names):
        clash = [i for i, n in enumerate(names) if n == name]
        files = [i for i in clash if _is_file_entry(items[i][1])]
        paths = {str(Path(items[i][1]).expanduser().resolve()) for i in files}
        if len(clash) > 1 and (len(clash) - len(files) > 1 or len(paths) < len(files)):
            raise ValueError(
                f"evaluate: the benchmark {name!r} is given more than once ({[items[i][1] for i in clash]}); results "
                "keep one entry per name. Drop the repeat, or name them apart with (name, Dataset) pairs."
            )
        if len(clash) > 1:
            for i, label in zip(files, _path_labels([items[i][1] for i in files])):
                names[i] = label
    if len(set(names)) < len(names):
        raise ValueError(f"evaluate: benchmark names {names} are not distinct; name them with (name, Dataset) pairs.")
    return [(name, spec) for name, (_, spec) in zip(names, items)]


def _path_labels(paths: list[str]) -> list[str]:
    """The shortest path endings, with at least one folder, that tell `paths` apart (without the file suffix)."""
    parts = [Path(p).expanduser().resolve().with_suffix("").parts for p in paths]
    for depth in range(2, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-depth:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return ["/".join(p) for p in parts]


def _checked_dataset(name: str, dataset: Any, limit: int | None) -> Any:
    missing = [c for c in ("prompt", "solution") if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"evaluate: benchmark {name!r} has no {missing} column(s) (it has {dataset.column_names}); build it "
            "with disco_trl.data.load_math_dataset, or add `prompt` and `solution` columns."
        )
    return dataset if limit is None else dataset.select(range(min(limit, len(dataset))))


def problem_key(problem: str, solution: str) -> str:
    """What identifies a problem in the records: its text and reference answer."""
    return hashlib.sha1(f"{problem}\x00{solution}".encode()).hexdigest()[:16]


def prompt_text(prompt: Any, tokenizer) -> str:
    """The text a model is prompted with: the chat template applied, or the messages one per paragraph."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)
    return "\n\n".join(m["content"] for m in prompt)  # no chat template (a base model)


def plan_problems(datasets_by_name: Mapping[str, Any], records, num_samples: int) -> list[dict]:
    """One entry per problem: its identity, reference and the sample indices still missing from `records`."""
    problems = []
    for name, dataset in datasets_by_name.items():
        for pid, row in enumerate(dataset):
            prompt = row["prompt"]
            text = row.get("problem") or (prompt if isinstance(prompt, str) else prompt[-1]["content"])
            key = problem_key(str(text), str(row["solution"]))
            problems.append(dict(
                benchmark=name, problem_id=pid, key=key, problem=text, solution=str(row["solution"]),
                messages=row["prompt"], missing=records.missing(name, pid, key, num_samples),
            ))
    return problems


def render_prompts(problems: list[dict], tokenizer: Any) -> None:
    for p in problems:
        p["prompt"] = prompt_text(p["messages"], tokenizer)


def problem_rows(problems: list[dict]) -> list[dict]:
    """What problems.jsonl records of each problem."""
    fields = ("benchmark", "problem_id", "key", "problem", "solution", "prompt")
    return [{f: p[f] for f in fields} for p in problems]
