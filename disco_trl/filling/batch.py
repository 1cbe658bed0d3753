"""Which questions of a process's generation rounds make its batch, and that batch as one padded dict.

Every round is one scored TRL generation output of this process (`DiscoTrainer`'s, with `disco_labels` and
`disco_group_ids`), its questions' completions on consecutive rows. The batch keeps, in generation order, the first
`target` questions with both positive and negative completions (`losses.mixed_questions`, the objective's own rule);
when the rounds found fewer, the first questions without signal complete it, so that the batch always has the nominal
shape. Informative questions found beyond `target` (the surplus) are dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from ..losses import mixed_questions
from ..skipping import MULTIMODAL_KEYS, PROMPT_KEYS


def question_signal(labels: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per question (`group_size` consecutive rows each): whether it has both a positive and a negative."""
    questions = torch.arange(labels.numel(), device=labels.device) // group_size
    return mixed_questions(labels, questions).view(-1, group_size)[:, 0].cpu()


def choose_questions(signal_per_round: list[torch.Tensor], target: int) -> list[tuple[int, int]]:
    """(round, question) of the `target` questions the batch keeps, in generation order: the first `target` with
    signal, completed (when the rounds found fewer) by the first without."""
    order = [(r, q) for r, signal in enumerate(signal_per_round) for q in range(signal.numel())]
    informative = [(r, q) for r, q in order if signal_per_round[r][q]]
    chosen = informative[:target]
    if len(chosen) < target:
        chosen += [(r, q) for r, q in order if not signal_per_round[r][q]][: target - len(chosen)]
    return sorted(chosen)


def _padded(value: torch.Tensor, width: int, fill, left: bool) -> torch.Tensor:
    if value.size(1) == width:
        return value
    out = value.new_full((value.size(0), width, *value.shape[2:]), fill)
    if left:
        out[:, width - value.size(1):] = value
    else:
        out[:, : value.size(1)] = value
    return out


def _widths(rounds: list[dict[str, Any]]) -> tuple[int, int]:
    return (max(r["prompt_ids"].size(1) for r in rounds), max(r["completion_ids"].size(1) for r in rounds))


def _concat_key(key: str, parts: list, completion_widths: list[int], widths: tuple[int, int], pad_token_id: int):
    first = parts[0]
    if isinstance(first, list):
        return [item for part in parts for item in part]
    if not isinstance(first, torch.Tensor) or first.ndim == 0:
        return first  # scalars (num_items_in_batch is recomputed by the caller)
    if first.ndim >= 2 and key in PROMPT_KEYS:  # left-padded
        fill = pad_token_id if key == "prompt_ids" else 0
        parts = [_padded(p, widths[0], fill, left=True) for p in parts]
    elif first.ndim >= 2 and all(p.size(1) == w for p, w in zip(parts, completion_widths)):  # along the completion
        fill = pad_token_id if key == "completion_ids" else 0
        parts = [_padded(p, widths[1], fill, left=False) for p in parts]
    return torch.cat(parts)


def assemble(rounds: list[dict[str, Any]], chosen: list[tuple[int, int]], group_size: int, pad_token_id: int,
             first_group_id: int) -> dict[str, Any]:
    """One batch of the `chosen` questions' rows, in order, each tensor re-padded to the widest round (prompts on the
    left, completions on the right, as TRL pads them); the questions get the ids first_group_id, first_group_id + 1,
    ..."""
    if any(key in rounds[0] for key in MULTIMODAL_KEYS):
        raise ValueError(
            "DiscoConfig.fill_informative_questions=True does not support multimodal batches (images) yet; set "
            "fill_informative_questions=False."
        )
    used = sorted({r for r, _ in chosen})
    picked = []
    for r in used:
        questions = torch.tensor([q for rr, q in chosen if rr == r])
        rows = (questions[:, None] * group_size + torch.arange(group_size)).flatten()
        picked.append((rounds[r], rows))
    parts_of = {key: [_rows(out[key], rows) for out, rows in picked] for key in rounds[0]}
    completion_widths = [out["completion_ids"].size(1) for out, _ in picked]
    widths = _widths([out for out, _ in picked])
    batch = {key: _concat_key(key, parts, completion_widths, widths, pad_token_id) for key, parts in parts_of.items()}
    questions = torch.arange(len(chosen), device=batch["disco_group_ids"].device) + first_group_id
    batch["disco_group_ids"] = questions.repeat_interleave(group_size).to(batch["disco_group_ids"].dtype)
    return batch


def _rows(value, rows: torch.Tensor):
    if isinstance(value, list):
        return [value[i] for i in rows.tolist()]
    if isinstance(value, torch.Tensor) and value.ndim > 0:
        return value[rows.to(value.device)]
    return value
