r"""Reward for answers given as a plain number (GSM8K-style): 1.0 when the last number of a completion equals the
reference.

    from disco_trl.rewards import last_number_reward
    trainer = DiscoTrainer(..., reward_funcs=last_number_reward)     # dataset column `solution`: "122", "-3.5", ...

For tasks whose answer is a number and whose prompt asks for it without ``\boxed{}`` (a small chat model answering
"What is 59 + 63?" with "59 + 63 = 122."), where `boxed_math_reward` would score every answer 0. For each completion
it

1. keeps the text after the last ``</think>`` when there is one,
2. takes the last number in it (digits with an optional sign and decimal part; commas between digit groups, as in
   ``1,234``, are thousands separators), and
3. grades it against the `solution` column with the same grader as `boxed_math_reward` (equal integers or decimals on
   the spot; anything else through math-verify's worker pool).

A completion without a number scores 0.0. A completion cut off by `max_completion_length` is graded on the last
number it got to write, like any other text. Used by the real-model demo (`disco-trl demo --model smollm2`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from .extraction import answer_part
from .math_reward import grade_extracted


_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def extract_last_number(text: str, *, after_think: bool = True) -> str | None:
    """The last number in `text` (thousands commas removed, a trailing period not included), or None."""
    if not isinstance(text, str) or not text:
        return None
    numbers = _NUMBER.findall(answer_part(text) if after_think else text)
    return numbers[-1].replace(",", "").lstrip("+") if numbers else None


def last_number_reward(completions: Sequence[Any], solution: Sequence[str] | None = None,
                       **kwargs: Any) -> list[float]:
    """TRL reward function: 1.0 if the last number of the completion (after ``</think>``) equals `solution`, else 0.0.

    Plain-text or conversational completions; extra keyword arguments from the trainer are accepted. When TRL passes
    `log_extra`, the extracted numbers are logged to the completions table as column ``last_number``."""
    return grade_extracted(completions, solution, extract_last_number, reward="last_number_reward",
                           column="last_number", missing="[no number]", log_extra=kwargs.get("log_extra"))
