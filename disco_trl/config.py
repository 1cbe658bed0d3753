"""`DiscoConfig`: TRL's `GRPOConfig` plus the few knobs DisCO adds, with the paper's defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import GRPOConfig

from .losses import SCORE_TYPES, VARIANTS

def _has_bf16_accelerator() -> bool:
    import torch

    if torch.cuda.is_available():
        return True
    return any(getattr(torch, name, None) is not None and getattr(torch, name).is_available() for name in ("xpu", "npu"))


# tau of the DRO objective used in the paper (section 5.4): 10 for log-L, 1 for L-ratio.
DEFAULT_TAU = {"log_l": 10.0, "l_ratio": 1.0}


@dataclass
class DiscoConfig(GRPOConfig):
    r"""
    Configuration for [`DiscoTrainer`], DisCO (Discriminative Constrained Optimization,
    [arXiv:2505.12366](https://arxiv.org/abs/2505.12366)).

    Inherits every parameter of TRL's [`GRPOConfig`] (generation, vLLM, batching, logging, ...). DisCO adds:

    Parameters:
        score_type (`str`, defaults to `"log_l"`):
            Scoring function s(o, q): `"log_l"`, the mean token log-likelihood, or `"l_ratio"`, the mean token
            likelihood ratio pi_theta / pi_old. Neither is clipped.
        disco_variant (`str`, defaults to `"dro"`):
            `"dro"`: DisCO, the DRO objective (robust to more negatives than positives); `"basic"`: DisCO-b.
        tau (`float`, *optional*):
            Temperature of the DRO objective. Defaults to 10 for log_l and 1 for l_ratio, as in the paper.
        kl_delta (`float`, defaults to `1e-4`):
            Trust-region radius delta of the constraint KL(pi_old || pi_theta) <= delta.
        kl_beta (`float`, defaults to `1e3`):
            Weight beta of the squared-hinge penalty beta * max(KL - delta, 0)^2.
        reward_threshold (`float`, defaults to `0.5`):
            A completion is positive when its (weighted) reward is greater than this, negative otherwise.
        skip_uninformative_questions (`bool`, defaults to `False`):
            Train only on questions with both positive and negative completions. The others contribute 0 to the
            objective (they still count in its denominator, so its gradient is unchanged) and are dropped from the
            micro-batches the optimizer sees, which makes steps cheaper; the KL trust region is then estimated on the
            kept questions' tokens, and an optimizer step with no kept question anywhere makes no update. A deviation
            from the paper, off by default (see docs/method.md).

    Defaults that differ from `GRPOConfig`, to follow the paper: `temperature=0.6`, `lr_scheduler_type="constant"`,
    `learning_rate=2e-6` (the authors' 1.5B scripts; use 1e-6 for 7B/8B), `num_generations=8`, `weight_decay=0.0`,
    `vllm_importance_sampling_correction=False` (DisCO recomputes the old policy with the trainer, see the docs).
    TRL's `beta` (KL to a reference model) must stay 0: DisCO has no reference model; its trust region is set with
    `kl_delta`/`kl_beta`.
    """

    score_type: str = field(
        default="log_l",
        metadata={"help": "Scoring function: 'log_l' (mean token log-prob) or 'l_ratio' (mean token pi/pi_old).",
                  "choices": list(SCORE_TYPES)},
    )
    disco_variant: str = field(
        default="dro",
        metadata={"help": "Objective: 'dro' (DisCO, robust to imbalance) or 'basic' (DisCO-b).",
                  "choices": list(VARIANTS)},
    )
    tau: float | None = field(
        default=None,
        metadata={"help": "DRO temperature tau (> 0). Default: 10 for log_l, 1 for l_ratio (the paper's values)."},
    )
    kl_delta: float = field(
        default=1e-4, metadata={"help": "Trust-region radius delta for KL(pi_old || pi_theta) <= delta."}
    )
    kl_beta: float = field(
        default=1e3, metadata={"help": "Squared-hinge penalty weight beta: beta * max(KL - delta, 0)^2."}
    )
    reward_threshold: float = field(
        default=0.5, metadata={"help": "A completion is positive when its reward is > this value."}
    )

    # Paper defaults where TRL's differ.
    temperature: float = field(default=0.6, metadata={"help": "Sampling temperature (paper: 0.6)."})
    learning_rate: float = field(
        default=2e-6, metadata={"help": "AdamW learning rate (authors' scripts: 2e-6 for 1.5B, 1e-6 for 7B/8B)."}
    )
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning-rate schedule (paper: constant)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (paper: 0)."})
    num_generations: int | None = field(
        default=8, metadata={"help": "Completions sampled per question (paper: 8)."}
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={"help": "GRPO-side correction for vLLM/trainer mismatch; DisCO ignores it (the old policy is "
                  "recomputed by the trainer), so it is off to save a forward pass."},
    )
    skip_uninformative_questions: bool = field(
        default=False,
        metadata={"help": "Drop questions whose completions are all positive or all negative (they add 0 to the "
                  "objective) from the micro-batches: the same discriminative gradient for less compute. The KL trust "
                  "region is then estimated on the kept questions' tokens. Off: the paper's exact objective."},
    )

    def __post_init__(self):
        # Validate DisCO's own fields first: before GRPOConfig spends time on anything else.
        if self.score_type not in SCORE_TYPES:
            raise ValueError(f"DiscoConfig.score_type={self.score_type!r} is unknown; use one of {SCORE_TYPES}.")
        if self.disco_variant not in VARIANTS:
            raise ValueError(
                f"DiscoConfig.disco_variant={self.disco_variant!r} is unknown; use 'dro' (DisCO) or 'basic' (DisCO-b)."
            )
        if self.tau is None:
            self.tau = DEFAULT_TAU[self.score_type]
        if not self.tau > 0:
            raise ValueError(
                f"DiscoConfig.tau must be > 0 (got {self.tau}); the paper uses 10 for log_l and 1 for l_ratio."
            )
        if not self.kl_delta >= 0:
            raise ValueError(f"DiscoConfig.kl_delta must be >= 0 (got {self.kl_delta}); the paper uses 1e-4.")
        if not self.kl_beta >= 0:
            raise ValueError(f"DiscoConfig.kl_beta must be >= 0 (got {self.kl_beta}); the paper uses 1e3.")
        if self.beta != 0.0:
            raise ValueError(
                f"DiscoConfig.beta={self.beta}: DisCO uses no reference model, so TRL's `beta` must be 0. DisCO's "
                "trust region is KL(pi_old || pi_theta) <= kl_delta, enforced with weight kl_beta: set `kl_delta` "
                "and `kl_beta` instead."
            )
        for name, value, neutral in (
            ("entropy_coef", self.entropy_coef, 0.0),
            ("use_adaptive_entropy", self.use_adaptive_entropy, False),
            ("top_entropy_quantile", self.top_entropy_quantile, 1.0),
            ("off_policy_mask_threshold", self.off_policy_mask_threshold, None),
        ):
            if value != neutral:
                raise ValueError(
                    f"DiscoConfig.{name}={value!r} is a GRPO loss option that DisCO's objective does not use; leave it "
                    f"at {neutral!r}. DisCO keeps entropy stable through its KL constraint (kl_delta, kl_beta)."
                )
        if self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"DiscoConfig.num_generations={self.num_generations}: DisCO compares positives with negatives of the "
                "same question, so it needs at least 2 completions per question (the paper uses 8)."
            )
        if self.bf16 is None and not self.fp16 and (self.use_cpu or not _has_bf16_accelerator()):
            # TRL turns bf16 on by default: transformers refuses it on a machine without a GPU, and with use_cpu it
            # means slow, imprecise bf16 autocast on the CPU. DisCO trains in float32 on CPU unless bf16=True is asked.
            self.bf16 = False
        super().__post_init__()
        self._check_whole_groups()
        self._check_skipping_layout()

    def _check_whole_groups(self) -> None:
        """Each question's completions must stay on one process and inside one optimizer step.

        Either the per-device micro-batch holds whole groups (the fast path), or, when a group is larger than a
        micro-batch (e.g. 8 completions, 4 sequences per GPU), a group spans consecutive micro-steps of one optimizer
        step on one process: the trainer then gathers the group's scores before the first micro-step (exact, at the
        cost of one extra no-grad forward pass per optimizer step; see DiscoTrainer).
        """
        g = self.num_generations
        per_device = self.per_device_train_batch_size
        if per_device % g == 0:
            return
        accumulation, spg = self.gradient_accumulation_steps, self.steps_per_generation
        per_step = per_device * accumulation
        if per_step % g == 0 and spg % accumulation == 0:
            return
        if per_step % g != 0:
            fix_ga = next(k for k in range(accumulation, accumulation * g + 1) if (per_device * k) % g == 0)
            raise ValueError(
                f"per_device_train_batch_size={per_device} x gradient_accumulation_steps={accumulation} = {per_step} "
                f"completions per process and optimizer step cannot hold whole groups of num_generations={g}: DisCO "
                f"compares each question's completions with each other, so they must stay on one process within one "
                f"optimizer step. Use per_device_train_batch_size a multiple of {g}, or gradient_accumulation_steps="
                f"{fix_ga} so that per_device_train_batch_size x gradient_accumulation_steps is a multiple of {g}."
            )
        raise ValueError(
            f"per_device_train_batch_size={per_device} is smaller than a group of num_generations={g}, so groups span "
            f"micro-steps; steps_per_generation={spg} must then be a multiple of gradient_accumulation_steps="
            f"{accumulation} so that no optimizer step straddles two generation batches. Set steps_per_generation to a "
            f"multiple of {accumulation} (or leave it unset), or use per_device_train_batch_size a multiple of {g}."
        )

    def _check_skipping_layout(self) -> None:
        """skip_uninformative_questions re-packs each optimizer step's kept questions: steps must not straddle
        generation batches."""
        if self.skip_uninformative_questions and self.steps_per_generation % self.gradient_accumulation_steps != 0:
            raise ValueError(
                f"DiscoConfig.skip_uninformative_questions=True re-packs the questions of each optimizer step, so "
                f"steps_per_generation={self.steps_per_generation} must be a multiple of gradient_accumulation_steps="
                f"{self.gradient_accumulation_steps}: set steps_per_generation to a multiple of "
                f"{self.gradient_accumulation_steps} (or leave it unset), or turn the option off."
            )
