"""Cutting a generation batch by whole questions: DisCO compares each question's completions with each other, so a
question's rows must stay together on one process and inside one optimizer step.

TRL shuffles a generation batch by rows before cutting it into micro-batches; `cut_by_questions` takes TRL's
micro-batches and re-cuts them so that every micro-batch (or, when a question is larger than a micro-batch,
consecutive micro-batches of one optimizer step) holds whole questions. The questions come in the order in which
TRL's random row order first meets them (a uniformly random question order), so DisCO draws no random numbers of its
own here: with the same seed, DisCO and GRPOTrainer consume the same random stream.
"""

from __future__ import annotations

from typing import Any

import torch
from trl.trainer.utils import split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid


def question_order(group_ids: torch.Tensor) -> torch.Tensor:
    """A row permutation that puts each question's rows together (in their order), the questions in the order of
    their first row."""
    _, question, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    first_row = torch.full((counts.numel(),), group_ids.numel(), dtype=torch.long).scatter_reduce(
        0, question, torch.arange(group_ids.numel()), reduce="amin")
    rank = torch.empty_like(first_row)
    rank[torch.argsort(first_row)] = torch.arange(first_row.numel())
    return torch.sort(rank[question] * group_ids.numel() + torch.arange(group_ids.numel())).indices


def concat_rows(batches: list[dict[str, Any]]) -> dict[str, Any]:
    """Micro-batches as one batch (per-row values concatenated, scalars and None taken from the first)."""
    out = {}
    for key, first in batches[0].items():
        if isinstance(first, torch.Tensor) and first.ndim > 0:
            out[key] = torch.cat([b[key] for b in batches])
        elif isinstance(first, list):
            out[key] = [row for b in batches for row in b[key]]
        else:
            out[key] = first
    return out


def select_rows(batch: dict[str, Any], rows: torch.Tensor) -> dict[str, Any]:
    """`batch` restricted to (or reordered by) the row indices `rows` (a 1-D long tensor), scalars unchanged."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.ndim > 0:
            out[key] = value[rows.to(value.device)]
        elif isinstance(value, list):
            out[key] = [value[i] for i in rows.tolist()]
        else:
            out[key] = value
    return out


def cut_by_questions(micro_batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Re-cut a generation batch's micro-batches (rows in random order, each carrying `disco_group_ids`) into as many
    micro-batches of the same size, holding whole questions."""
    batch = concat_rows([split_pixel_values_by_grid(b) for b in micro_batches])
    batch = select_rows(batch, question_order(batch["disco_group_ids"].cpu()))
    return [unsplit_pixel_values_by_grid(b) for b in split_tensor_dict(batch, len(micro_batches))]
