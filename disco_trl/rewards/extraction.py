r"""Finding a completion's final answer: its text, and the content of its last ``\boxed{}`` (after ``</think>``)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any


MAX_ANSWER_CHARS = 1000  # a boxed answer longer than this is not a final answer (references are < 250 chars)
_BOX_COMMANDS = ("\\boxed", "\\fbox")


def completion_text(completion: Any) -> str:
    """The text of one completion: a string, or the last assistant message of a conversational completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _message_text(completion)
    if isinstance(completion, Sequence):
        messages = [m for m in completion if isinstance(m, dict)]
        assistant = [m for m in messages if m.get("role", "assistant") == "assistant"]
        chosen = assistant or messages
        return _message_text(chosen[-1]) if chosen else ""
    return "" if completion is None else str(completion)


def _message_text(message: dict) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal-style content parts: [{"type": "text", "text": ...}, ...]
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return "" if content is None else str(content)


def _find_last_box(text: str) -> tuple[int, str] | None:
    best = None
    for command in _BOX_COMMANDS:
        start = text.rfind(command)
        while start != -1:
            after = start + len(command)
            # skip \boxedsomething (a longer macro name)
            if after < len(text) and text[after].isalpha():
                start = text.rfind(command, 0, start)
                continue
            if best is None or start > best[0]:
                best = (start, command)
            break
    return best


def _box_content(text: str, after: int) -> tuple[str, int] | None:
    """Content of the box whose command ends at `after`, and the index just past it; None if unbalanced/empty."""
    n = len(text)
    i = after
    while i < n and text[i] in " \t":
        i += 1
    if i >= n:
        return None
    if text[i] != "{":
        # \boxed 5 : TeX takes the next token; we take the run up to whitespace, '$' or the end.
        match = re.match(r"[^\s$]+", text[i : i + MAX_ANSWER_CHARS + 1])
        return (match.group(0), i + match.end()) if match else None
    depth = 0
    j = i
    while j < n:
        ch = text[j]
        if ch == "\\":
            j += 2  # \{ and \} are literal braces, not grouping
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j], j + 1
        j += 1
    return None


def answer_part(text: str) -> str:
    """The text after the last ``</think>`` (a reasoning model's answer follows it), else all of it."""
    think_end = text.rfind("</think>")
    return text[think_end + len("</think>") :] if think_end != -1 else text


def extract_boxed_answer(text: str, *, after_think: bool = True) -> str | None:
    r"""The content of the last ``\boxed{...}`` (or ``\fbox{...}``) in `text`, or None when there is none.

    With `after_think`, only the text after the last ``</think>`` is searched when the text has one. Braces are
    matched (escaped ``\{``/``\}`` do not count), so ``\boxed{\frac{1}{2}}`` gives ``\frac{1}{2}``; an unbalanced
    last box (a truncated completion) gives None, as does an empty one. ``\boxed 5`` (no braces) gives ``5``; a box
    that only wraps another box is unwrapped. Runs in time linear in the text, so megabyte completions are fine.
    """
    if not isinstance(text, str) or not text:
        return None
    if after_think:
        text = answer_part(text)
    found = _find_last_box(text)
    if found is None:
        return None
    start, command = found
    box = _box_content(text, start + len(command))
    if box is None:
        return None
    answer = box[0].strip()
    # \boxed{\boxed{5}} -> 5
    for _ in range(8):
        inner = _find_last_box(answer)
        if inner is None or not answer.startswith(inner[1]):
            break
        nested = _box_content(answer, len(inner[1]))
        if nested is None or nested[1] != len(answer):
            break
        answer = nested[0].strip()
    return answer or None
