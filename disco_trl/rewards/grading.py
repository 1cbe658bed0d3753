r"""Grading extracted answers against references: the common cases on the spot, the rest with math-verify.

`grade_answers` decides the same answer up to spacing/``\left``/``\dfrac`` spelling, or two plain integers/decimals,
without any process (microseconds per answer, no sympy), and sends the rest to the grader pool (`pool`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from . import grader_worker
from .extraction import MAX_ANSWER_CHARS
from .pool import default_max_workers, shared_pool


_SPACING = re.compile(r"\\[,;:! ]|\\quad|\\qquad|\s+")
# Whitespace between two digits is significant (`2 3` is not `23`): kept as one space, so such an answer only
# matches the same digits spaced the same way here and anything else goes to math-verify. LaTeX spacing commands
# between digits (`1\,000`) are thousands separators and are still removed.
_DIGIT_GAP = re.compile(r"(?<=\d)\s+(?=\d)")
_KEPT_SPACE = "\x00"
_NUMBER = re.compile(r"[+-]?(\d{1,60}(\.\d{0,60})?|\.\d{1,60})")


def normalize_spelling(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == "$" and text[-1] == "$":
        text = text.strip("$")
    text = _DIGIT_GAP.sub(_KEPT_SPACE, text)
    text = _SPACING.sub("", text).replace(_KEPT_SPACE, " ")
    text = text.replace("\\left", "").replace("\\right", "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return text.rstrip(".")


def _as_number(text: str) -> Decimal | None:
    if _NUMBER.fullmatch(text) is None:
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex only lets valid literals through
        return None


def _is_integral(text: str, value: Decimal) -> bool:
    return "." not in text or value == value.to_integral_value()


def quick_grade(gold: str, answer: str) -> float | None:
    """1.0 / 0.0 when the answer can be decided without math-verify, else None."""
    g, a = normalize_spelling(gold), normalize_spelling(answer)
    if not a:
        return 0.0
    if g == a:
        return 1.0
    gv, av = _as_number(g), _as_number(a)
    if gv is not None and av is not None:
        if gv == av:
            return 1.0
        if _is_integral(g, gv) and _is_integral(a, av):
            return 0.0  # two different integers: nothing in math-verify would make them equal
    return None



def _grade_in_process(pairs: Sequence[tuple[str, str]]) -> list[bool]:
    grader_worker.quiet_math_verify_logs()
    return [grader_worker.grade(gold, answer) for gold, answer in pairs]


# --------------------------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------------------------


def grade_answers(
    answers: Sequence[str | None],
    golds: Sequence[str],
    *,
    max_workers: int | None = None,
    timeout: float | None = None,
    fast_path: bool = True,
) -> list[float]:
    """1.0/0.0 per extracted answer (None scores 0.0) against its reference: fast path, then the worker pool.

    `max_workers=0` (or ``DISCO_REWARD_WORKERS=0``) grades in this process instead (not hang-proof);
    `fast_path=False` sends every answer to math-verify (for measurements).
    """
    if len(answers) != len(golds):
        raise ValueError(f"grade_answers: {len(answers)} answers but {len(golds)} reference solutions.")
    scores: list[float] = [0.0] * len(answers)
    slow: list[int] = []
    for k, (answer, gold) in enumerate(zip(answers, golds)):
        if answer is None or gold is None or len(answer) > MAX_ANSWER_CHARS:
            continue
        quick = quick_grade(str(gold), answer) if fast_path else None
        if quick is None:
            slow.append(k)
        else:
            scores[k] = quick
    if not slow:
        return scores
    pairs = [(str(golds[k]), answers[k]) for k in slow]
    limit = default_max_workers() if max_workers is None else max_workers
    if limit == 0:
        verdicts = _grade_in_process(pairs)
    else:
        verdicts = shared_pool(limit, timeout).grade(pairs)
    for k, ok in zip(slow, verdicts):
        scores[k] = 1.0 if ok else 0.0
    return scores

