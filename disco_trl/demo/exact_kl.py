r"""The exact KL(pi_old || pi_theta) of a demo run: a diagnostic of the miniature, not part of DisCO.

The trainers see KL(pi_old || pi_theta) only through a sampled-token estimate: the token mean of
log pi_old(o_t) - log pi_theta(o_t) over a micro-step's completion tokens (DisCO's `disco/kl`, Algorithm 1 d.i), which
is noisy and often negative for a small KL. The demo's vocabulary has 300 tokens, so the exact divergence, summed
over the vocabulary at every completion token, costs little:

    KL_exact = 1/N sum_t sum_v pi_old(v | q, o_<t) * (log pi_old(v | q, o_<t) - log pi_theta(v | q, o_<t))

over the N completion tokens of the micro-step (token-averaged like the estimate). pi is the temperature-scaled
distribution the trainers score with (TRL divides the logits by `temperature`). Right after a generation the
trainer stores pi_old's logits at every completion position (one no-grad forward of the generation batch, the same
rows and padding TRL scores); at every micro-step one more no-grad forward of the current model gives pi_theta.

`ExactKLDiscoTrainer` and `ExactKLGRPOTrainer` are `DiscoTrainer` and TRL's `GRPOTrainer` with this diagnostic and
nothing else: the forwards are under `torch.no_grad` and draw no random numbers, so a run's trajectory is the plain
trainer's. Each micro-step logs

* `demo/kl_exact`: the exact KL above;
* `demo/kl_log_ratio`: the paper's estimate on the same tokens (equals DisCO's `disco/kl` with `kl_estimator=
  "log_ratio"`, up to rounding);
* `demo/kl_k3`: the k3 estimate, mean of r - 1 - log r (DisCO's `kl_estimator="k3"`),

and keeps them in `trainer.exact_kl_history` (one dict per micro-step, with the trainer's micro-step index).
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer

from ..trainer import DiscoTrainer


OLD_LOGITS = "demo_old_completion_logits"  # the batch key holding pi_old's logits, (B, T, V) float32
METRICS = ("demo/kl_exact", "demo/kl_log_ratio", "demo/kl_k3")


@torch.no_grad()
def completion_logits(model, batch: dict, temperature: float) -> torch.Tensor:
    """The temperature-scaled next-token logits at every completion position, (B, T, V) float32: the logits that give
    each completion token's log-probability in TRL's scoring (same rows, same padding)."""
    input_ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], dim=1)
    attention_mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
    length = batch["completion_ids"].size(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    return logits[:, -length - 1 : -1].float() / temperature


def kl_terms(old_logits: torch.Tensor, new_logits: torch.Tensor, completion_ids: torch.Tensor,
             mask: torch.Tensor) -> dict[str, float]:
    """The exact KL(pi_old || pi_theta) and the two sampled-token estimates (log ratio, k3), token means over `mask`.
    Computed in float64, so rounding stays far below the divergences of interest."""
    old = torch.log_softmax(old_logits.double(), dim=-1)
    new = torch.log_softmax(new_logits.double(), dim=-1)
    mask = mask.double()
    exact = (old.exp() * (old - new)).sum(dim=-1)
    index = completion_ids.unsqueeze(-1)
    log_r = (new.gather(-1, index) - old.gather(-1, index)).squeeze(-1) * mask  # log pi_theta/pi_old of the token
    tokens = mask.sum().clamp(min=1.0)
    return {"demo/kl_exact": ((exact * mask).sum() / tokens).item(),
            "demo/kl_log_ratio": (-(log_r * mask).sum() / tokens).item(),
            "demo/kl_k3": (((torch.expm1(log_r) - log_r) * mask).sum() / tokens).item()}


class ExactKL:
    """Mixin for a GRPO-family trainer: pi_old's logits kept with each generation batch, and the exact KL logged at
    every training micro-step (see the module's docstring)."""

    exact_kl_history: list

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        if self.model.training:
            output[OLD_LOGITS] = completion_logits(self.model, output, self.temperature)
        return output

    def _compute_loss(self, model, inputs):
        if self.model.training and OLD_LOGITS in inputs:
            mask = inputs["completion_mask"] * inputs["tool_mask"] if "tool_mask" in inputs else \
                inputs["completion_mask"]
            values = kl_terms(inputs[OLD_LOGITS], completion_logits(self.model, inputs, self.temperature),
                              inputs["completion_ids"], mask)
            for key, value in values.items():
                self._metrics["train"][key].append(value)
            if not hasattr(self, "exact_kl_history"):
                self.exact_kl_history = []
            self.exact_kl_history.append({"micro_step": self._step, **values})
        return super()._compute_loss(model, inputs)


class ExactKLDiscoTrainer(ExactKL, DiscoTrainer):
    """`DiscoTrainer` logging the exact KL(pi_old || pi_theta) per micro-step (a diagnostic of the demo)."""


class ExactKLGRPOTrainer(ExactKL, GRPOTrainer):
    """TRL's `GRPOTrainer` logging the exact KL(pi_old || pi_theta) per micro-step (a diagnostic of the demo)."""


def exact_kl_trainer(trainer_class: type) -> type:
    """The diagnostic version of `trainer_class` (DiscoTrainer or GRPOTrainer)."""
    if issubclass(trainer_class, DiscoTrainer):
        return ExactKLDiscoTrainer
    if issubclass(trainer_class, GRPOTrainer):
        return ExactKLGRPOTrainer
    raise TypeError(f"no exact-KL diagnostic for {trainer_class.__name__}")
