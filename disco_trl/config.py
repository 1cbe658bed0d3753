"""`DiscoConfig`: TRL's `GRPOConfig` plus the few knobs DisCO adds, with the paper's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trl import GRPOConfig

from .compatibility import refuse_grpo_loss_options
from .deepspeed_geometry import check_deepspeed_geometry
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
        reward_threshold (`str` or `float`, defaults to `"group_mean"`):
            Which completions are positives. `"group_mean"`: those whose reward is above their question's mean
            reward (TRL's advantage > 0, after its `multi_objective_aggregation`); a number: those whose (weighted)
            reward is above it. Both give the paper's sets for 0/1 rewards; only `"group_mean"` also learns from
            non-binary rewards (a length reward, format + accuracy), which is why it is the default.
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

    `overwrite_output_dir` (`bool`, defaults to `False`), the option transformers 5 dropped from `TrainingArguments`:
    start a new run in an `output_dir` that already holds `checkpoint-N` folders of an earlier run, deleting them when
    training starts. Without it (and without `resume_from_checkpoint`) such a run is refused, so that an earlier run's
    checkpoints are never overwritten silently (see `disco_trl.checkpoints`).
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
    reward_threshold: str = field(
        default="group_mean",
        metadata={"help": "Positives: 'group_mean' (reward above the question's mean reward; the paper's sets for 0/1 "
                  "rewards) or a number (reward above it, e.g. 0.5)."},
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
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that holds checkpoint-N folders of an earlier run, deleting "
                  "them (without it, such a run is refused unless it resumes with resume_from_checkpoint)."},
    )
    skip_uninformative_questions: bool = field(
        default=False,
        metadata={"help": "Drop questions whose completions are all positive or all negative (they add 0 to the "
                  "objective) from the micro-batches: the same discriminative gradient for less compute. The KL trust "
                  "region is then estimated on the kept questions' tokens. Off: the paper's exact objective."},
    )

    def __post_init__(self):
        # Validate first, before GRPOConfig spends time on anything else, so that a bad value is named as the user set
        # it (TRL would otherwise report a value it derives from it, such as generation_batch_size).
        self._check_disco_fields()
        self._check_training_values()
        self._check_grpo_loss_options()
        if self.bf16 is None and not self.fp16 and (self.use_cpu or not _has_bf16_accelerator()):
            # TRL turns bf16 on by default: transformers refuses it on a machine without a GPU, and with use_cpu it
            # means slow, imprecise bf16 autocast on the CPU. DisCO trains in float32 on CPU unless bf16=True is asked.
            self.bf16 = False
        self._check_whole_groups()  # with the steps_per_generation GRPOConfig will derive, when it does not need it
        super().__post_init__()
        self._check_whole_groups()  # again, with the steps_per_generation derived from generation_batch_size
        check_deepspeed_geometry(self)  # a DeepSpeed config that batches otherwise would split groups silently
        self._check_skipping_layout()

    def _check_disco_fields(self) -> None:
        if self.score_type not in SCORE_TYPES:
            raise ValueError(f"DiscoConfig.score_type={self.score_type!r} is unknown; use one of {SCORE_TYPES}.")
        if self.disco_variant not in VARIANTS:
            raise ValueError(
                f"DiscoConfig.disco_variant={self.disco_variant!r} is unknown; use 'dro' (DisCO) or 'basic' (DisCO-b)."
            )
        if self.tau is None:
            self.tau = DEFAULT_TAU[self.score_type]
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(
                f"DiscoConfig.tau must be > 0 and finite (got {self.tau}); the paper uses 10 for log_l and 1 for "
                "l_ratio."
            )
        if not (math.isfinite(self.kl_delta) and self.kl_delta >= 0):
            raise ValueError(
                f"DiscoConfig.kl_delta must be >= 0 and finite (got {self.kl_delta}); the paper uses 1e-4. To turn "
                "the KL penalty off, set kl_beta=0."
            )
        if not (math.isfinite(self.kl_beta) and self.kl_beta >= 0):
            raise ValueError(
                f"DiscoConfig.kl_beta must be >= 0 and finite (got {self.kl_beta}); the paper uses 1e3 (0 turns "
                "the KL penalty off)."
            )

    def _check_training_values(self) -> None:
        """Values TRL or transformers accept but that fail (or silently do something else) once the model is loaded."""
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"DiscoConfig.max_steps={self.max_steps}: set the number of optimizer updates (> 0), or -1 (the default) "
                "to train for num_train_epochs."
            )
        if not (math.isfinite(self.learning_rate) and self.learning_rate >= 0):
            raise ValueError(
                f"DiscoConfig.learning_rate={self.learning_rate} must be a finite number >= 0; the authors use 2e-6 for "
                "1.5B models and 1e-6 for 7B/8B."
            )
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(
                f"DiscoConfig.temperature={self.temperature}: DisCO samples its completions, so the sampling temperature "
                "must be a finite number > 0 (the paper uses 0.6)."
            )
        if self.max_completion_length is not None and self.max_completion_length <= 0:
            raise ValueError(
                f"DiscoConfig.max_completion_length={self.max_completion_length} must be a positive number of tokens "
                "(the paper uses 8192)."
            )

    def _check_grpo_loss_options(self) -> None:
        if self.beta != 0.0:
            raise ValueError(
                f"DiscoConfig.beta={self.beta}: DisCO uses no reference model, so TRL's `beta` must be 0. DisCO's "
                "trust region is KL(pi_old || pi_theta) <= kl_delta, enforced with weight kl_beta: set `kl_delta` "
                "and `kl_beta` instead."
            )
        refuse_grpo_loss_options(self)
        self._check_reward_threshold()
        if self.num_generations is not None and self.num_generations < 2:
            raise ValueError(
                f"DiscoConfig.num_generations={self.num_generations}: DisCO compares positives with negatives of the "
                "same question, so it needs at least 2 completions per question (the paper uses 8)."
            )

    def _check_reward_threshold(self) -> None:
        value = self.reward_threshold
        if isinstance(value, str) and value != "group_mean":
            try:
                value = float(value)  # from the command line
            except ValueError:
                raise ValueError(
                    f"DiscoConfig.reward_threshold={value!r} is neither 'group_mean' nor a number; use 'group_mean' "
                    "(positives beat their question's mean reward) or a number such as 0.5 (for 0/1 rewards)."
                ) from None
        if not isinstance(value, str):
            if isinstance(value, bool) or not math.isfinite(float(value)):
                raise ValueError(f"DiscoConfig.reward_threshold={value!r} must be 'group_mean' or a finite number.")
            value = float(value)
            if self.multi_objective_aggregation == "normalize_then_sum":
                raise ValueError(
                    f"DiscoConfig.reward_threshold={value} with multi_objective_aggregation='normalize_then_sum': that "
                    "aggregation sums group-normalised rewards, which have no fixed scale to cut at a number. Use "
                    "reward_threshold='group_mean' (positives: above their question's mean)."
                )
        self.reward_threshold = value

    def _check_whole_groups(self) -> None:
        """Each question's completions must stay on one process and inside one optimizer step.

        Either the per-device micro-batch holds whole groups (the fast path), or, when a group is larger than a
        micro-batch (e.g. 8 completions, 4 sequences per GPU), a group spans consecutive micro-steps of one optimizer
        step on one process: the trainer then gathers the group's scores before the first micro-step (exact, at the
        cost of one extra no-grad forward pass per optimizer step; see DiscoTrainer).

        Called before GRPOConfig's own checks too: with a batch that cannot hold whole groups, TRL would report the
        `generation_batch_size` it derives (per_device_train_batch_size x processes x steps_per_generation), a setting
        the user never set. `steps_per_generation` is then the user's value, or gradient_accumulation_steps (TRL's
        default) when generation_batch_size is unset too; when only generation_batch_size is set, its share of the check
        waits for the value TRL derives (which needs the number of processes).
        """
        g = self.num_generations
        per_device = self.per_device_train_batch_size
        if g is None or per_device % g == 0:
            return
        accumulation, spg = self.gradient_accumulation_steps, self.steps_per_generation
        if spg is None and self.generation_batch_size is None:
            spg = accumulation  # what GRPOConfig derives
        per_step = per_device * accumulation
        if per_step % g == 0 and (spg is None or spg % accumulation == 0):
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
            f"per_device_train_batch_size={per_device} does not hold whole groups of num_generations={g}, so groups "
            f"span micro-steps; steps_per_generation={spg} must then be a multiple of gradient_accumulation_steps="
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
