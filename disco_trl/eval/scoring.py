r"""Pass@k of completions already sampled: what the `math_pass_at_k` metric of HuggingFace `evaluate` computes.

    import evaluate
    from disco_trl.eval import metric_path
    pass_at_k = evaluate.load(metric_path())      # a local file shipped in the package: no Hub, works offline
    pass_at_k.compute(predictions=[["... \\boxed{4}", "... \\boxed{5}"], ...], references=["4", ...], k=[1, 2])

`score_completions` is the same without `evaluate`. Each completion is graded as `disco-trl eval` grades its samples
(`disco_trl.rewards.boxed_math_reward`: the last ``\boxed{}`` after ``</think>``, the fast path, then math-verify in
the bounded grader processes with their per-answer deadline) and the verdicts go through the same
`metrics.summarize` (Pass@1 averaged over samples, the unbiased pass@k of `metrics.pass_at_k`), so the metric and
`disco-trl eval` give identical numbers on the same samples. Bad input is refused with a ValueError that names the
argument, before anything is graded.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..rewards import boxed_math_reward
from .metrics import summarize


__all__ = ["METRIC_FILE", "metric_path", "score_completions"]

METRIC_FILE = Path(__file__).with_name("math_pass_at_k.py")  # the `evaluate` module (an evaluate.Metric)
_USAGE = "predictions=[[completion, ...] for each problem], references=[answer for each problem]"


def metric_path() -> str:
    """The path of the `math_pass_at_k` metric, for ``evaluate.load(metric_path())``."""
    return str(METRIC_FILE)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)  # numpy's integers too


def _check_predictions(predictions: Any) -> list[list[str]]:
    if isinstance(predictions, str) or not isinstance(predictions, Sequence):
        raise ValueError(f"math_pass_at_k: predictions must be a list with one list of completions per problem "
                         f"({_USAGE}), got {type(predictions).__name__}.")
    if len(predictions) == 0:
        raise ValueError(f"math_pass_at_k: predictions is empty: there is nothing to score ({_USAGE}).")
    problems = []
    for i, samples in enumerate(predictions):
        if isinstance(samples, str) or not isinstance(samples, Sequence):
            raise ValueError(f"math_pass_at_k: predictions[{i}] must be the list of that problem's completions, got "
                             f"{type(samples).__name__} ({_USAGE}).")
        if len(samples) == 0:
            raise ValueError(f"math_pass_at_k: predictions[{i}] is empty: every problem needs at least one "
                             "completion.")
        for j, completion in enumerate(samples):
            if not isinstance(completion, str):
                raise ValueError(f"math_pass_at_k: predictions[{i}][{j}] must be a completion's text (str), got "
                                 f"{completion!r}.")
        problems.append(list(samples))
    return problems


def _check_references(references: Any, num_problems: int) -> list[str]:
    if isinstance(references, str) or not isinstance(references, Sequence):
        raise ValueError(f"math_pass_at_k: references must be a list with one reference answer per problem, got "
                         f"{type(references).__name__}.")
    if len(references) != num_problems:
        raise ValueError(f"math_pass_at_k: predictions has {num_problems} problems but references has "
                         f"{len(references)} answers; pass one reference answer per problem.")
    for i, answer in enumerate(references):
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"math_pass_at_k: references[{i}] must be the problem's final answer as a non-empty "
                             f"string (e.g. '27' or '\\\\frac{{1}}{{2}}'), got {answer!r}.")
    return list(references)


def _check_k(k: Any, problems: list[list[str]]) -> list[int] | None:
    """The k of pass@k asked for (None: 1, 2, 4, ... up to the samples, as `disco-trl eval`); each in 1..fewest."""
    if k is None:
        return None
    k_values = list(k) if isinstance(k, Iterable) and not isinstance(k, str) else [k]
    fewest = min(range(len(problems)), key=lambda i: len(problems[i]))
    n = len(problems[fewest])
    if not k_values or not all(_is_int(value) and 1 <= value <= n for value in k_values):
        raise ValueError(f"math_pass_at_k: k={k!r}: each k of pass@k must be an integer from 1 to {n}, the number "
                         f"of completions of predictions[{fewest}] (the fewest of any problem): pass@k needs k "
                         "completions per problem.")
    return [int(value) for value in k_values]


def score_completions(predictions: Sequence[Sequence[str]], references: Sequence[str],
                      k: int | Iterable[int] | None = None) -> dict[str, Any]:
    """Grade several completions per problem against its reference answer; Pass@1 and pass@k over the problems.

    Args:
        predictions: one list of completions (text) per problem; problems may have different numbers of them.
        references: one reference answer per problem (the final answer, e.g. ``"27"``, ``"\\frac{1}{2}"``).
        k: the k of pass@k, an integer or a list, each from 1 to the fewest completions of a problem (default 1, 2,
            4, ... up to that number, as `disco-trl eval`).

    Returns ``{"pass@1": ..., "pass@k": ... for each k, "num_problems": N, "samples_per_problem": n (or [fewest,
    most]), "num_correct": [correct completions of each problem]}``, computed by `metrics.summarize` as `disco-trl
    eval` computes one benchmark's row.
    """
    problems = _check_predictions(predictions)
    answers = _check_references(references, len(problems))
    k_values = _check_k(k, problems)
    completions = [completion for samples in problems for completion in samples]
    solutions = [answer for samples, answer in zip(problems, answers) for _ in samples]
    rewards = boxed_math_reward(completions, solutions)
    per_problem, start = [], 0
    for samples in problems:
        per_problem.append(rewards[start : start + len(samples)])
        start += len(samples)
    return summarize({"completions": per_problem}, k_values)["benchmarks"]["completions"]
