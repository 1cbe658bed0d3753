r"""Answers and problem texts as `disco_trl.data.load_math_dataset` stores them: reference answers as clean strings,
the last ``\boxed{}`` of a worked solution, and a problem without DAPO-Math-17k's wrapper instructions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..rewards import extract_boxed_answer


__all__ = ["conversation_context", "normalize_answer"]

# DAPO-Math-17k wraps each problem in its own instructions; we strip them to apply the paper's prompt instead.
_DAPO_PREFIX = re.compile(r"^\s*Solve the following math problem step by step\..*?to the problem\.\s*", re.S)
_DAPO_SUFFIX = re.compile(r"\s*Remember to put your answer on its own line after \"Answer:\"\.?\s*$", re.S)


def last_boxed(text: str) -> str | None:
    return extract_boxed_answer(text, after_think=False)


_FLOAT_INT = re.compile(r"^[+-]?\d+\.0+$")


def normalize_answer(value: Any) -> str | None:
    """A reference answer as a clean string: numbers as written (27.0 -> "27"), lists joined with ", ", math-mode
    dollar signs removed (OlympiadBench writes ``$x=2$``); None when there is no answer."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:  # NaN: pandas' missing value
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list | tuple):
        parts = [normalize_answer(v) for v in value]
        parts = [p for p in parts if p]
        return ", ".join(parts) if parts else None
    text = str(value).strip()
    if "$" in text:
        text = text.replace("\\$", "\0").replace("$", "").replace("\0", "\\$").strip()
    if _FLOAT_INT.match(text):
        text = text.split(".")[0]
    return text or None


def _last_user_turn(messages: list) -> int | None:
    users = [i for i, m in enumerate(messages) if isinstance(m, Mapping) and m.get("role", "user") == "user"]
    return users[-1] if users else None


def conversation_context(value: Any) -> list[dict[str, str]]:
    """The turns of a chat prompt before its last user message (system messages, earlier turns), as role/content
    pairs; nothing for a plain-text prompt. What follows the last user message (an assistant's answer) is not kept:
    it would hand the model the solution."""
    if not isinstance(value, list):
        return []
    last = _last_user_turn(value)
    if last is None:
        return []
    return [{"role": str(m.get("role", "user")), "content": str(m.get("content", ""))}
            for m in value[:last] if isinstance(m, Mapping)]


def problem_text(value: Any) -> str | None:
    """A problem from a string or from a chat prompt (the last user message), without DAPO's wrapper text."""
    if value is None:
        return None
    if isinstance(value, list):
        last = _last_user_turn(value)
        if last is None:
            return None
        value = value[last].get("content", "")
    text = str(value)
    stripped = _DAPO_SUFFIX.sub("", _DAPO_PREFIX.sub("", text))
    return stripped.strip() or None
