"""Rewards for runs on random models, which never write a correct answer."""

from __future__ import annotations

import zlib


def one_right_per_group(prompts, completions, **kwargs) -> list[float]:
    """1.0 for one completion of each question (the one whose text has the highest CRC-32; ties all count), 0.0 for
    the others: every group of two or more distinct completions is mixed, so DisCO's objective has terms and a loss
    that is 0 means a broken loss, not data without signal. A fixed function of the texts, whatever the model."""
    def text(x):
        return x if isinstance(x, str) else x[-1]["content"]

    def key(x):
        return x if isinstance(x, str) else repr(x)

    best: dict[str, int] = {}
    for prompt, completion in zip(prompts, completions):
        crc = zlib.crc32(text(completion).encode())
        best[key(prompt)] = max(best.get(key(prompt), -1), crc)
    return [float(zlib.crc32(text(c).encode()) == best[key(p)]) for p, c in zip(prompts, completions)]
