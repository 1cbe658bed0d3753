"""`load_math_dataset`: any math source as `prompt` / `solution` / `problem` columns (see `disco_trl.data`): which
fields hold the problem and the answer, and one record per usable row."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets

from .answers import conversation_context, last_boxed, normalize_answer, problem_text
from .sources import SOURCES, SourceSpec, canonical_source, read_source


# The prompt of the DisCO paper (and of DeepScaleR): the problem, then the instruction. "{problem}" is replaced
# literally (no str.format), so the template can contain \boxed{} as it is.
PROMPT_TEMPLATE = "{problem} Let's think step by step and output the final answer within \\boxed{}."

QUESTION_FIELDS = ("problem", "question", "prompt", "query", "input", "instruction")
ANSWER_FIELDS = ("answer", "final_answer", "ground_truth", "reward_model.ground_truth", "target", "label", "solution")
SOLUTION_FIELDS = ("solution",)  # full worked solutions: the answer is their last \boxed{}


def format_prompt(
    problem: str,
    *,
    conversational: bool = True,
    template: str = PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    context: Sequence[Mapping[str, str]] = (),
) -> list[dict[str, str]] | str:
    """The paper's prompt for one problem, as chat messages or plain text (the messages' contents, one paragraph
    each). `context`: the turns that come before the problem (a chat dataset's system message...). A `system_prompt`
    goes first; ValueError when `context` has a system message of its own that differs from it. A problem that
    already starts or ends with the template's text around ``{problem}`` (a dataset that ships the paper's
    instruction) does not get it a second time."""
    text = apply_template(problem, template)
    turns = [{"role": m["role"], "content": m["content"]} for m in context]
    systems = [t["content"] for t in turns if t["role"] == "system"]
    if system_prompt is not None and any(s != system_prompt for s in systems):
        raise ValueError(
            f"the conversation has its own system message ({systems[0][:60]!r}) and system_prompt="
            f"{system_prompt[:60]!r} was given too: two system messages would conflict. Pass system_prompt=None "
            "(--system-prompt left out) to keep the dataset's, or remove the system turns from the dataset to use "
            "yours."
        )
    if system_prompt is not None and not systems:
        turns.insert(0, {"role": "system", "content": system_prompt})
    if not conversational:
        return "\n\n".join([t["content"] for t in turns] + [text])
    return turns + [{"role": "user", "content": text}]


def _squeezed(text: str) -> str:
    return " ".join(text.split()).rstrip(".").lower()


def apply_template(problem: str, template: str = PROMPT_TEMPLATE) -> str:
    """`template` with ``{problem}`` replaced by the problem, leaving out the text before or after ``{problem}``
    when the problem already starts or ends with it (compared without case, repeated spaces or a final full stop)."""
    before, _, after = template.partition("{problem}")
    text = problem.strip()
    if _squeezed(after) and _squeezed(text).endswith(_squeezed(after)):
        after = ""
    if _squeezed(before) and _squeezed(text).startswith(_squeezed(before)):
        before = ""
    return f"{before}{text}{after}"


# --------------------------------------------------------------------------------------------------------------------
# Row helpers
# --------------------------------------------------------------------------------------------------------------------


def _get(row: Mapping[str, Any], dotted: str) -> Any:
    """row["a"]["b"] for "a.b"; None when any part is missing."""
    value: Any = row
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _has(columns: Iterable[str], first_row: Mapping[str, Any] | None, dotted: str) -> bool:
    head = dotted.split(".")[0]
    if head not in set(columns):
        return False
    return "." not in dotted or (first_row is not None and _get(first_row, dotted) is not None)


# --------------------------------------------------------------------------------------------------------------------
# Reading rows
# --------------------------------------------------------------------------------------------------------------------

def _choose(
    fields: Iterable[str], columns: list[str], first_row: Mapping[str, Any] | None
) -> str | None:
    for name in fields:
        if _has(columns, first_row, name):
            return name
    return None


# --------------------------------------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------------------------------------


def load_math_dataset(
    source: str,
    split: str | None = None,
    *,
    conversational: bool = True,
    limit: int | None = None,
    question_field: str | None = None,
    answer_field: str | None = None,
    solution_field: str | None = None,
    prompt_template: str = PROMPT_TEMPLATE,
    system_prompt: str | None = None,
    config: str | None = None,
    local: bool | None = None,
    deduplicate: bool | None = None,
    keep_columns: Iterable[str] | None = (),
):
    r"""Load a math dataset as a `datasets.Dataset` with columns `prompt`, `solution` and `problem`.

    Args:
        source: a known name (``"deepscaler"``, ``"dapo-math-17k"``, ``"math"``, ``"aime24"``, ``"aime25"``,
            ``"math500"``, ``"amc23"``, ``"minerva"``, ``"olympiadbench"``), a Hub dataset id, a local
            ``.json``/``.jsonl``/``.parquet``/``.csv`` file or a local folder (see `disco_trl.data.files`).
        split: the Hub split (defaults: ``train`` for training sets, each benchmark's own split, else ``train``),
            or a folder's (default ``train``, or its only split).
        conversational: chat messages (default) or plain-text prompts.
        limit: keep the first `limit` problems (after de-duplication).
        question_field / answer_field: field names for sources this module does not know (dotted paths such as
            ``reward_model.ground_truth`` reach into nested records).
        solution_field: a field with a worked solution whose last ``\boxed{}`` is the answer (when there is no
            answer field).
        prompt_template: replaces `PROMPT_TEMPLATE`; ``{problem}`` marks where the problem goes.
        system_prompt: an optional system message (or a first paragraph, for plain text); refused when it differs
            from a chat dataset's own (a chat question keeps its turns before the last user message).
        config: the Hub configuration name, if the dataset has several.
        local: for the benchmarks, True requires the local file, False forces the Hub; default: local when present.
        deduplicate: drop repeated problems (default on for DAPO-Math-17k, off otherwise).
        keep_columns: other source fields to carry over unchanged.

    Rows without a usable answer are dropped with a warning; a missing field, or a `limit` below 1, raises
    `ValueError` before anything else is done.
    """
    _check_limit(limit)
    spec = SOURCES.get(canonical_source(source) or "")
    rows, origin = read_source(source, spec, split=split, config=config, local=local)
    fields = _choose_fields(
        source, spec, rows, origin, question_field=question_field, answer_field=answer_field,
        solution_field=solution_field, keep_columns=keep_columns,
    )
    dedupe = spec.deduplicate if (deduplicate is None and spec is not None) else bool(deduplicate)
    prompt = dict(conversational=conversational, template=prompt_template, system_prompt=system_prompt, source=source)
    records, dropped = _build_records(rows, fields, spec, deduplicate=dedupe, limit=limit, prompt=prompt)
    if dropped:
        warnings.warn(f"load_math_dataset({source!r}): dropped {dropped} rows without a problem or an answer "
                      f"(question field {fields.question!r}, answer from {fields.answer or fields.boxed_solution!r}).",
                      stacklevel=2)
    if not records["problem"]:
        raise ValueError(f"load_math_dataset({source!r}): no usable rows in {origin}.")
    return datasets.Dataset.from_dict(records)


def _check_limit(limit: Any) -> None:
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        raise ValueError(f"load_math_dataset: limit must be >= 1 rows (or None for all), got {limit!r}.")


# --------------------------------------------------------------------------------------------------------------------
# Field choice: which columns hold the problem and the answer
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fields:
    question: str
    answer: str | None  # a field with the final answer...
    boxed_solution: str | None  # ...else a worked solution whose last \boxed{} is the answer
    boxed_in_answer: bool  # the answer field holds worked solutions: take their last \boxed{}
    keep: tuple[str, ...]


def _choose_fields(source: str, spec: SourceSpec | None, rows: Any, origin: str, *, question_field: str | None,
                   answer_field: str | None, solution_field: str | None,
                   keep_columns: Iterable[str] | None) -> _Fields:
    """The fields to read, from the explicit arguments or the usual names; ValueError naming what is missing."""
    columns = list(rows.column_names) if hasattr(rows, "column_names") else sorted({k for r in rows[:100] for k in r})
    first = rows[0] if len(rows) else None

    def pick(kind: str, explicit: str | None, candidates: tuple[str, ...]) -> str | None:
        if explicit is None:
            return _choose(candidates, columns, first)
        if not _has(columns, first, explicit):
            raise ValueError(
                f"load_math_dataset({source!r}): the {kind} field {explicit!r} is not in the data (columns: "
                f"{columns})."
            )
        return explicit

    q_field = pick("question", question_field, spec.question_fields if spec else QUESTION_FIELDS)
    if q_field is None:
        wanted = spec.question_fields if spec else QUESTION_FIELDS
        raise ValueError(
            f"load_math_dataset({source!r}): no question field; looked for {list(wanted)} in {origin} "
            f"(columns: {columns}). Pass question_field='<column with the problem text>'."
        )
    a_field = b_field = None
    if solution_field is None:
        candidates = spec.answer_fields if spec else tuple(f for f in ANSWER_FIELDS if f != q_field)
        a_field = pick("answer", answer_field, candidates)
    if a_field is None:
        b_field = pick("solution", solution_field, spec.boxed_solution_fields if spec else SOLUTION_FIELDS)
    if a_field is None and b_field is None:
        wanted = (spec.answer_fields + spec.boxed_solution_fields) if spec else ANSWER_FIELDS
        raise ValueError(
            f"load_math_dataset({source!r}): no answer field; looked for {list(wanted)} in {origin} "
            f"(columns: {columns}). Pass answer_field='<column with the final answer>' or "
            "solution_field='<column with a worked solution ending in \\boxed{...}>'."
        )
    keep = tuple(keep_columns or ())
    for column in keep:
        if column not in columns:
            raise ValueError(f"load_math_dataset({source!r}): keep_columns has {column!r}, not in {columns}.")
    boxed = spec is None and a_field in SOLUTION_FIELDS and _mostly_boxed(rows, a_field)
    return _Fields(q_field, a_field, b_field, boxed, keep)


def _mostly_boxed(rows: Any, field: str) -> bool:
    r"""Generic path with a 'solution' field: worked solutions (most rows have a \boxed{}: the answer is the last
    one, rows without one are dropped) or bare answers (as in open-r1/DAPO-Math-17k-Processed)."""
    sample = [_get(rows[i], field) for i in range(min(len(rows), 200))]
    return sum(isinstance(v, str) and "\\boxed" in v for v in sample) > len(sample) / 2


# --------------------------------------------------------------------------------------------------------------------
# Normalisation: one record per usable row
# --------------------------------------------------------------------------------------------------------------------


def _row_answer(row: Mapping[str, Any], fields: _Fields, spec: SourceSpec | None) -> str | None:
    if fields.answer is None:
        return normalize_answer(last_boxed(str(_get(row, fields.boxed_solution) or "")))
    raw = _get(row, fields.answer)
    if fields.boxed_in_answer:
        raw = last_boxed(raw) if isinstance(raw, str) else None
    answer = normalize_answer(raw)
    if answer is None and spec is not None and spec.boxed_solution_fields:
        answer = normalize_answer(last_boxed(str(_get(row, spec.boxed_solution_fields[0]) or "")))
    return answer


def _row_problem(row: Mapping[str, Any], fields: _Fields) -> str | None:
    problem = problem_text(_get(row, fields.question))
    context = row.get("context") if problem and isinstance(row, Mapping) and fields.question == "question" else None
    if isinstance(context, str) and context.strip() and context.strip() not in problem:
        problem = f"{context.strip()}\n\n{problem}"  # OlympiadBench: some problems rely on a shared context
    return problem


def _row_prompt(problem: str, question: Any, prompt: Mapping[str, Any], number: int) -> list[dict[str, str]] | str:
    """The prompt of one record: the paper's template on the problem, after a chat question's earlier turns."""
    settings = {k: v for k, v in prompt.items() if k != "source"}
    try:
        return format_prompt(problem, context=conversation_context(question), **settings)
    except ValueError as exc:
        raise ValueError(f"load_math_dataset({prompt['source']!r}), record {number}: {exc}") from None


def _build_records(rows: Any, fields: _Fields, spec: SourceSpec | None, *, deduplicate: bool, limit: int | None,
                   prompt: Mapping[str, Any]) -> tuple[dict[str, list], int]:
    """The `prompt`/`solution`/`problem` (+ kept) columns, and how many rows had no problem or no answer."""
    records: dict[str, list] = {"prompt": [], "solution": [], "problem": [], **{c: [] for c in fields.keep}}
    seen: set[str] = set()
    dropped = 0
    for row in rows:
        problem, answer = _row_problem(row, fields), _row_answer(row, fields, spec)
        if not problem or not answer:
            dropped += 1
            continue
        if deduplicate:
            if problem in seen:
                continue
            seen.add(problem)
        records["problem"].append(problem)
        records["solution"].append(answer)
        records["prompt"].append(_row_prompt(problem, _get(row, fields.question), prompt, len(records["prompt"])))
        for column in fields.keep:
            records[column].append(row.get(column))
        if limit is not None and len(records["problem"]) >= limit:
            break
    return records, dropped

