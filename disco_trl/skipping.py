"""Train only on questions that carry signal (`DiscoConfig.skip_uninformative_questions`).

A question whose completions are all positive or all negative contributes J_q = 0 to the discriminative objective
(it still counts in the denominator |B|), so its completions only feed the KL estimate. With the option on,
`DiscoTrainer` drops them from the micro-batches the optimizer sees:

* **Re-packing.** Each optimizer step of a generation batch (its `gradient_accumulation_steps` consecutive
  micro-batches on this process) keeps the rows of its mixed questions (`losses.mixed_questions`), in order, and
  packs them into micro-batches of at most `per_device_train_batch_size` rows. Questions stay in their optimizer step,
  so each step's discriminative gradient is the default run's; a question larger than a micro-batch still spans
  consecutive micro-steps (the look-ahead of `DiscoTrainer._attach_score_weights` sees the packed step).
* **Empty micro-steps.** Trainer runs a fixed number of micro-steps per optimizer step, and every process must run
  every collective (the KL sums, logged statistics) and every backward (DDP/DeepSpeed gradient hooks). A micro-step
  left with nothing gets a one-row *placeholder*: a real row cut to one prompt and one completion token, with an
  empty completion mask and a NaN reward, so it weighs exactly 0 in the objective and in the KL and costs almost
  nothing.
* **Denominators.** The objective keeps the full question count of the step (the trainer computes it from the batch
  geometry, not from the rows it sees). The KL penalty is averaged over the micro-steps that hold kept tokens on at
  least one process (`disco_kept_micro_steps`, from one small all-gather per generation batch), each micro-step's KL
  being the token mean over its kept tokens on all processes.
* **Nothing to learn.** An optimizer step with no kept question on any process has an exactly zero gradient; it makes
  no update at all (`NoUpdateWithoutSignal` clears the gradients so that the optimizer skips every parameter, as it
  does for parameters without a gradient: no momentum step either), and logs `disco/skipped_update = 1`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from transformers import TrainerCallback

from .geometry import concat_rows, select_rows
from .losses import mixed_questions


# Keys cut along the prompt (left-padded: keep the last column) and along the completion (keep the first column).
PROMPT_KEYS = ("prompt_ids", "prompt_mask")
MULTIMODAL_KEYS = ("pixel_values", "image_grid_thw", "pixel_attention_mask", "spatial_shapes", "image_sizes",
                    "token_type_ids", "mm_token_type_ids", "image_position_ids", "num_images", "num_tiles")
KEPT_MICRO_STEPS = "disco_kept_micro_steps"


def _is_per_row(value) -> bool:
    return isinstance(value, list) or (isinstance(value, torch.Tensor) and value.ndim > 0)


def placeholder_batch(template: dict[str, Any]) -> dict[str, Any]:
    """A one-row micro-batch that weighs exactly 0: row 0 of `template` cut to its last prompt token and first
    completion token, with an empty completion mask, a NaN reward and group id -1."""
    completion_length = template["completion_ids"].size(1)
    out = {}
    for key, value in template.items():
        if not _is_per_row(value):
            out[key] = value
        elif isinstance(value, list):
            out[key] = value[:1]
        elif key in PROMPT_KEYS:
            out[key] = value[:1, -1:]
        elif value.ndim >= 2 and value.size(1) == completion_length:
            out[key] = value[:1, :1]
        else:
            out[key] = value[:1]
    out["completion_mask"] = torch.zeros_like(out["completion_mask"])
    if "tool_mask" in out:
        out["tool_mask"] = torch.zeros_like(out["tool_mask"])
    out["disco_labels"] = torch.full_like(out["disco_labels"], math.nan)
    out["disco_group_ids"] = torch.full_like(out["disco_group_ids"], -1)
    if "advantages" in out:
        out["advantages"] = torch.zeros_like(out["advantages"])
    return out


def pack_step(step_batches: list[dict[str, Any]], rows_per_micro_batch: int):
    """Keep the mixed questions of one optimizer step and pack them into at most len(step_batches) micro-batches.

    Returns (micro-batches holding kept rows, in order; the step's original first micro-batch, as the template of
    placeholders)."""
    step = concat_rows(step_batches)
    keep = mixed_questions(step["disco_labels"], step["disco_group_ids"])
    rows = torch.nonzero(keep.cpu(), as_tuple=True)[0]
    packed = [select_rows(step, chunk) for chunk in rows.split(rows_per_micro_batch)] if rows.numel() else []
    return packed, step_batches[0]


def drop_uninformative_questions(micro_batches: list[dict[str, Any]], *, accumulation: int, rows_per_micro_batch: int,
                                 accelerator) -> list[dict[str, Any]]:
    """Re-split a generation batch's micro-batches (this process) so the optimizer sees only mixed questions.

    Returns as many micro-batches as given: per optimizer step, the packed kept rows first, then placeholders. Each
    carries `disco_kept_micro_steps`, the number of the step's micro-steps that hold kept rows on some process."""
    if any(key in micro_batches[0] for key in MULTIMODAL_KEYS):
        raise ValueError(
            "DiscoConfig.skip_uninformative_questions=True does not support multimodal batches (images) yet; set "
            "skip_uninformative_questions=False."
        )
    steps = [micro_batches[i : i + accumulation] for i in range(0, len(micro_batches), accumulation)]
    packed_steps = [pack_step(step, rows_per_micro_batch) for step in steps]
    counts = torch.tensor([len(packed) for packed, _ in packed_steps], device=accelerator.device)
    if accelerator.num_processes > 1:
        counts = accelerator.gather(counts).view(accelerator.num_processes, -1).amax(dim=0)
    out = []
    for (packed, template), kept_micro_steps in zip(packed_steps, counts.tolist()):
        for batch in packed + [placeholder_batch(template) for _ in range(accumulation - len(packed))]:
            batch[KEPT_MICRO_STEPS] = int(kept_micro_steps)
            out.append(batch)
    return out


def kl_micro_steps(inputs: dict[str, Any], accumulation: int) -> int:
    """Over how many micro-steps the step's KL penalty is averaged: all of them by default; with skipping, those that
    hold kept tokens on some process (at least 1, so a step with none divides a zero penalty by 1)."""
    return max(int(inputs.get(KEPT_MICRO_STEPS, accumulation)), 1)


class NoUpdateWithoutSignal(TrainerCallback):
    """Makes no update for an optimizer step with no kept question on any process, and logs `disco/skipped_update`.

    `DiscoTrainer` calls `observe_step` with the first micro-batch of each optimizer step; before the optimizer step,
    the (exactly zero) gradients are dropped so that the optimizer leaves every parameter and its state untouched
    (torch optimizers skip parameters whose grad is None). Under DeepSpeed the engine steps inside backward, before
    this point: a warning says that the zero-gradient step was taken.
    """

    def __init__(self, is_deepspeed: bool):
        self.is_deepspeed = is_deepspeed
        self.nothing_to_learn = False  # the current optimizer step has no kept question on any process
        self._warned = False

    def observe_step(self, first_micro_batch: dict[str, Any], metrics) -> None:
        self.nothing_to_learn = first_micro_batch.get(KEPT_MICRO_STEPS) == 0
        metrics["disco/skipped_update"].append(float(self.nothing_to_learn))

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if not self.nothing_to_learn:
            return
        if self.is_deepspeed:
            if not self._warned:
                warnings.warn(
                    "skip_uninformative_questions: an optimizer step had no question with both positive and negative "
                    "completions; under DeepSpeed it is still taken with a zero gradient (the optimizer's momentum "
                    "moves the parameters).", stacklevel=2)
                self._warned = True
            return
        for parameter in model.parameters():
            parameter.grad = None
