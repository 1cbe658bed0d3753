"""A run stops at the first optimizer step whose loss or gradient norm is not finite, before anything is saved.

Left alone, a NaN loss trains NaN weights (transformers logs it as the previous average, `logging_nan_inf_filter`),
and the next checkpoint and the final model save them over the good ones. `NonFiniteGuard` (a Trainer callback that
`DiscoTrainer` adds) collects whether any micro-step's loss of the optimizer step was not finite (`observe_loss`, no
device sync) and, just before the optimizer step, whether the gradient norm is; one reduction makes the decision the
same on every process, and `NonFiniteError` stops the run there: no checkpoint and no final model are written after the
first non-finite value (the script exits 1 with one line). Under DeepSpeed the engine has already applied the update
by then (it steps inside backward); nothing is saved either.
"""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

from .folders import checkpoint_folders


class NonFiniteError(RuntimeError):
    """A step's loss or gradient norm was NaN or inf. The message (one line) says what was saved and what to do."""


class NonFiniteGuard(TrainerCallback):
    def __init__(self, trainer):
        self.trainer = trainer
        self._bad_loss: torch.Tensor | None = None  # 1 when a micro-step's loss of this optimizer step was not finite

    def observe_loss(self, loss: torch.Tensor) -> None:
        """Remember (on the device, without a sync) whether this micro-step's training loss is finite."""
        bad = (~torch.isfinite(loss.detach())).any().float()
        self._bad_loss = bad if self._bad_loss is None else torch.maximum(self._bad_loss, bad)

    def _grad_norm(self) -> torch.Tensor | None:
        trainer = self.trainer
        if trainer.is_deepspeed_enabled:  # the engine keeps the gradients (and has stepped): its own global norm
            norm = getattr(trainer.model_wrapped, "get_global_grad_norm", lambda: None)()
            return None if norm is None else torch.as_tensor(float(norm))
        grads = [p.grad for p in trainer.model.parameters() if p.grad is not None]
        if not grads:
            return None
        norm = torch.nn.utils.get_total_norm(grads)  # one pass over the gradients, as the clipping's
        return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        trainer = self.trainer
        device = trainer.accelerator.device
        norm = self._grad_norm()
        bad_loss = torch.zeros((), device=device) if self._bad_loss is None else self._bad_loss.to(device)
        bad_norm = torch.zeros((), device=device) if norm is None else (~torch.isfinite(norm)).float().to(device)
        flags = torch.stack([bad_loss, bad_norm])
        if trainer.accelerator.num_processes > 1:
            flags = trainer.accelerator.reduce(flags, reduction="sum")
        self._bad_loss = None
        losses, norms = flags.tolist()
        if losses or norms:
            what = "loss" if losses else "gradient norm"
            raise NonFiniteError(_message(what, state.global_step + 1, norm, args.output_dir))


def _message(what: str, step: int, norm, output_dir: str) -> str:
    folders = checkpoint_folders(output_dir)
    if folders:
        kept = f"the last checkpoint, {os.path.basename(folders[0])}, is intact"
        then = "resume with --resume_from_checkpoint last (resume_from_checkpoint=True)"
    else:
        kept, then = "no checkpoint was written", "start again"
    value = f" ({float(norm):g})" if what == "gradient norm" and norm is not None else " (nan or inf)"
    return (
        f"Training stopped at step {step}: the {what} is not finite{value}. Nothing is saved from this step on "
        f"(no checkpoint, no final model); {kept}. Usual causes: a learning_rate too high for the model or its "
        f"precision, an extreme kl_beta, or a model that already holds NaN. Lower learning_rate (or kl_beta) and "
        f"{then}."
    )
