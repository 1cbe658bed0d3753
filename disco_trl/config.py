"""`DiscoConfig`: TRL's `GRPOConfig` plus the few knobs DisCO adds, with the paper's defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig

from .geometry import check_deepspeed_geometry, check_whole_groups
from .losses import IS_MODES, KL_ESTIMATORS, KL_PENALTIES, SCORE_TYPES, VARIANTS, check_tau


def _has_bf16_accelerator() -> bool:
    if torch.cuda.is_available():
        return True
    return any(getattr(getattr(torch, name, None), "is_available", lambda: False)() for name in ("xpu", "npu"))


# GRPOConfig options that configure GRPO's loss (docs/compatibility.md lists them all). DisCO replaces GRPO's clipped,
# advantage-weighted surrogate with its own objective, so every option that shapes that surrogate has no meaning for
# DisCO. Ignoring one silently would let a GRPO script run as something it is not, so each is refused at any value
# other than its neutral one, with a message about that option.
_CLIPPING = "DisCO's scores are not clipped; its trust region is KL(pi_old || pi_theta) <= kl_delta (weight kl_beta)"
_ENTROPY = "DisCO keeps entropy stable through its KL constraint (kl_delta, kl_beta), not with an entropy term"
_REFERENCE = "DisCO has no reference model (TRL's beta must be 0)"

# option -> (neutral value, what it does in GRPO and why DisCO does not use it)
GRPO_LOSS_OPTIONS: dict[str, tuple[object, str]] = {
    "loss_type": ("dapo", "it picks GRPO's loss aggregation; DisCO's objective is chosen with `disco_variant` "
                          "('dro' or 'basic') and `score_type` ('log_l' or 'l_ratio')"),
    "epsilon": (0.2, f"it is GRPO's clipping range; {_CLIPPING}"),
    "epsilon_high": (None, f"it is the upper clipping range (DAPO's clip-higher); {_CLIPPING}"),
    "delta": (None, f"it is GRPO's two-sided clipping bound (not DisCO's `kl_delta`); {_CLIPPING}"),
    "importance_sampling_level": ("token", "it sets where GRPO clips its importance ratio; DisCO's `score_type` "
                                           "chooses log-L or the (unclipped) L-ratio score"),
    "scale_rewards": ("group", "it divides GRPO's advantages by a reward std; DisCO uses no advantage magnitude and "
                               "no "
                               "std normalisation (that weight is the difficulty bias DisCO removes)"),
    "sapo_temperature_neg": (1.05, "it belongs to loss_type='sapo'"),
    "sapo_temperature_pos": (1.0, "it belongs to loss_type='sapo'"),
    "vespo_k_pos": (2.0, "it belongs to loss_type='vespo'"),
    "vespo_lambda_pos": (3.0, "it belongs to loss_type='vespo'"),
    "vespo_k_neg": (3.0, "it belongs to loss_type='vespo'"),
    "vespo_lambda_neg": (2.0, "it belongs to loss_type='vespo'"),
    "entropy_coef": (0.0, f"it is GRPO's entropy bonus; {_ENTROPY}"),
    "use_adaptive_entropy": (False, f"it adapts GRPO's entropy bonus; {_ENTROPY}"),
    "entropy_coef_min": (0.0, f"it bounds GRPO's adaptive entropy bonus; {_ENTROPY}"),
    "entropy_coef_max": (1.0, f"it bounds GRPO's adaptive entropy bonus; {_ENTROPY}"),
    "entropy_coef_delta": (0.005, f"it steps GRPO's adaptive entropy bonus; {_ENTROPY}"),
    "entropy_target": (0.2, f"it is the target of GRPO's adaptive entropy bonus; {_ENTROPY}"),
    "top_entropy_quantile": (1.0, "it trains GRPO only on the highest-entropy tokens; DisCO scores whole completions "
                                  "(the token mean of Eq. 5/6)"),
    "off_policy_mask_threshold": (None, "it drops negative-advantage sequences far from the sampling policy "
                                        "(DeepSeek-V3.2's off-policy mask); DisCO bounds the distance to pi_old with "
                                        "its "
                                        "KL trust region (kl_delta, kl_beta) instead"),
    "use_bias_correction_kl": (True, f"it corrects GRPO's KL to the reference model; {_REFERENCE}"),
    "sync_ref_model": (False, f"it updates GRPO's reference model; {_REFERENCE}"),
    "ref_model_mixup_alpha": (0.6, f"it mixes GRPO's reference model; {_REFERENCE}"),
    "ref_model_sync_steps": (512, f"it schedules GRPO's reference-model sync; {_REFERENCE}"),
}


def refuse_grpo_loss_options(config) -> None:
    """Raise on the first GRPO-loss option set away from its neutral value, with a message about that option."""
    for name, (neutral, reason) in GRPO_LOSS_OPTIONS.items():
        if not hasattr(config, name):
            continue
        value = getattr(config, name)
        if value != neutral:
            raise ValueError(
                f"DiscoConfig.{name}={value!r} is a GRPO loss option that DisCO does not use: {reason}. Leave it at "
                f"{neutral!r} (remove it from your GRPO script's arguments); see docs/compatibility.md."
            )


# Generation rounds per batch with fill_informative_questions: verl's DAPO recipes set max_num_gen_batches=10.
DEFAULT_GENERATION_ROUNDS = 10


# tau of the DRO objective used in the paper (section 5.4): 10 for log-L, 1 for L-ratio.
DEFAULT_TAU = {"log_l": 10.0, "l_ratio": 1.0}


# DisCO computes its objective and penalty in float32 (the scores are float32 whatever the model's dtype): a tau,
# kl_delta or kl_beta outside float32's normal range is rounded to 0 or inf there, and the run trains on NaN.
FLOAT32 = torch.finfo(torch.float32)


def check_float32_range(name: str, value: float, hint: str) -> None:
    """ValueError naming `name` when a value > 0 lies outside float32's normal range (0 itself is fine)."""
    if value != 0 and not FLOAT32.tiny <= abs(value) <= FLOAT32.max:
        raise ValueError(
            f"DiscoConfig.{name}={value:g} is outside what float32 training can represent ({FLOAT32.tiny:.2g} to "
            f"{FLOAT32.max:.2g}; DisCO's objective and penalty are computed in float32, where it would become 0 or "
            f"inf and train NaN weights): {hint}"
        )


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
        kl_penalty (`str`, defaults to `"squared_hinge"`):
            The paper's squared hinge, or `"linear"`: kl_beta * KL at every step whatever kl_delta (a fixed KL
            penalty, the classic KL-regularised objective; an ablation, docs/study.md).
        kl_estimator (`str`, defaults to `"log_ratio"`):
            The per-token estimate of KL(pi_old || pi_theta) the hinge sees: `"log_ratio"`, the paper's
            log pi_old - log pi_theta (unbiased, but often negative on a small batch), or `"k3"`,
            r - 1 - log r with r = pi_theta / pi_old (unbiased and never negative: less noisy near delta).
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
        fill_informative_questions (`bool`, defaults to `False`):
            Dynamic sampling (DAPO's; verl's `filter_groups`): when a generation batch holds fewer questions with both
            positive and negative completions than it was sized for, draw and generate the training set's next
            generation batches, round after round, until every process's share is full of such questions or
            `max_generation_rounds` rounds have run. The step then trains on exactly its nominal number of questions,
            informative ones first; the informative surplus of the last round is dropped. Needs `max_steps`. Off: the
            paper's uniform batches (see docs/method.md).
        max_generation_rounds (`int`, *optional*):
            With `fill_informative_questions`: the most generation rounds per batch, the first included (verl's
            `max_num_gen_batches`). Defaults to 10, the value of verl's DAPO recipes.

    Defaults that differ from `GRPOConfig`, to follow the paper: `temperature=0.6`, `lr_scheduler_type="constant"`,
    `learning_rate=2e-6` (the authors' 1.5B scripts; use 1e-6 for 7B/8B), `num_generations=8`, `weight_decay=0.0`.
    TRL's vLLM importance sampling (`vllm_importance_sampling_correction`, on by default as in TRL, with
    `vllm_importance_sampling_mode`, `_clip_min`, `_clip_max`) keeps TRL's defaults and takes DisCO's meaning: vLLM's
    samples are reweighted toward pi_old in DisCO's class means and KL estimate (docs/method.md). Every vLLM run logs
    the mismatch (`sampling/*`), corrected or not.
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
    kl_estimator: str = field(
        default="log_ratio",
        metadata={"help": "Token estimate of KL(pi_old || pi_theta) for the trust region: 'log_ratio' (the paper's, "
                  "log pi_old - log pi_theta) or 'k3' (r - 1 - log r, r = pi_theta/pi_old: also unbiased, never "
                  "negative, far less noisy near delta).", "choices": list(KL_ESTIMATORS)},
    )
    kl_penalty: str = field(
        default="squared_hinge",
        metadata={"help": "Trust-region penalty: 'squared_hinge' (the paper's, kl_beta * max(KL - kl_delta, 0)^2) or "
                  "'linear' (kl_beta * KL at every step, a fixed KL penalty: an ablation).",
                  "choices": list(KL_PENALTIES)},
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
        default=True,
        metadata={"help": "Reweight vLLM's samples toward pi_old (its kernels, dtype and sampler are not the "
                  "trainer's) in DisCO's class means and KL estimate, by vllm_importance_sampling_mode within "
                  "[vllm_importance_sampling_clip_min, _clip_max] (docs/method.md). On by default, as in TRL."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start a new run in an output_dir that holds checkpoint-N folders of an earlier run, "
                  "deleting "
                  "them (without it, such a run is refused unless it resumes with resume_from_checkpoint)."},
    )
    skip_uninformative_questions: bool = field(
        default=False,
        metadata={"help": "Drop questions whose completions are all positive or all negative (they add 0 to the "
                  "objective) from the micro-batches: the same discriminative gradient for less compute. The KL trust "
                  "region is then estimated on the kept questions' tokens. Off: the paper's exact objective."},
    )

    fill_informative_questions: bool = field(
        default=False,
        metadata={"help": "Dynamic sampling: generate more prompts, round after round, until each generation batch "
                  "holds its nominal number of questions with both right and wrong completions (or "
                  "max_generation_rounds ran out); the surplus is dropped. Needs max_steps. Off: the paper's "
                  "batches."},
    )
    max_generation_rounds: int | None = field(
        default=None,
        metadata={"help": "With fill_informative_questions: the most generation rounds per batch, the first included "
                  f"(default {DEFAULT_GENERATION_ROUNDS}, as verl's DAPO recipes' max_num_gen_batches)."},
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
        check_whole_groups(self)  # with the steps_per_generation GRPOConfig will derive, when it does not need it
        super().__post_init__()
        check_whole_groups(self)  # again, with the steps_per_generation derived from generation_batch_size
        check_deepspeed_geometry(self)  # a DeepSpeed config that batches otherwise would split groups silently
        self._check_skipping_layout()
        self._check_filling()

    def _check_disco_fields(self) -> None:
        if self.score_type not in SCORE_TYPES:
            raise ValueError(f"DiscoConfig.score_type={self.score_type!r} is unknown; use one of {SCORE_TYPES}.")
        if self.kl_penalty not in KL_PENALTIES:
            raise ValueError(
                f"DiscoConfig.kl_penalty={self.kl_penalty!r} is unknown; use 'squared_hinge' (the paper's) or "
                "'linear'."
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(
                f"DiscoConfig.kl_estimator={self.kl_estimator!r} is unknown; use 'log_ratio' (the paper's) or 'k3'."
            )
        if self.disco_variant not in VARIANTS:
            raise ValueError(
                f"DiscoConfig.disco_variant={self.disco_variant!r} is unknown; use 'dro' (DisCO) or 'basic' (DisCO-b)."
            )
        self._check_importance_sampling()
        if self.tau is None:
            self.tau = DEFAULT_TAU[self.score_type]
        self.tau = check_tau(self.tau, "DiscoConfig.tau")
        check_float32_range("tau", self.tau, "the paper uses 10 for log_l and 1 for l_ratio.")
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
        check_float32_range("kl_delta", self.kl_delta, "the paper uses 1e-4 (0: no slack).")
        check_float32_range("kl_beta", self.kl_beta, "the paper uses 1e3 (0 turns the KL penalty off).")

    def _check_importance_sampling(self) -> None:
        mode, clip_max = self.vllm_importance_sampling_mode, self.vllm_importance_sampling_clip_max
        if getattr(self, "vllm_importance_sampling_cap", None) is not None:  # TRL's deprecated name for clip_max
            clip_max = self.vllm_importance_sampling_cap
        if mode not in IS_MODES:
            raise ValueError(
                f"DiscoConfig.vllm_importance_sampling_mode={mode!r} is unknown; use one of {IS_MODES} "
                "(docs/method.md says what each means for DisCO)."
            )
        for name in ("vllm_importance_sampling_clip_min", "vllm_importance_sampling_clip_max",
                     "vllm_importance_sampling_cap"):
            value = getattr(self, name, None)
            if value is not None and (isinstance(value, bool) or not math.isfinite(value)):
                raise ValueError(f"DiscoConfig.{name}={value!r} must be a finite number or None (no bound).")
        if clip_max is not None and clip_max <= 0:
            raise ValueError(
                f"DiscoConfig.vllm_importance_sampling_clip_max={clip_max!r} would drop (or zero) the weight of every "
                "completion: importance ratios are > 0. Use a bound above 1 (TRL's default is 3.0) or None."
            )

    def _check_training_values(self) -> None:
        """Values TRL or transformers accept but that fail, or train nothing, once the model is loaded."""
        for name, fine, what in self._training_value_rules():
            if not fine:
                raise ValueError(f"DiscoConfig.{name}={getattr(self, name)}{what}")

    def _training_value_rules(self):
        """(field, whether its value is fine, what the message says after the value)."""
        def positive(value):
            return isinstance(value, int) and not isinstance(value, bool) and value >= 1

        def optional_positive(value):
            return value is None or positive(value)

        lr, temperature, top_p = self.learning_rate, self.temperature, self.top_p
        batch = " must be a whole number >= 1: DisCO cuts every batch into whole questions of num_generations"
        return (
            ("max_steps", self.max_steps > 0 or self.max_steps == -1, ": set the number of optimizer updates (> 0), "
             "or -1 (the default) to train for num_train_epochs."),
            ("num_train_epochs", self.max_steps > 0 or self.num_train_epochs > 0, " with max_steps=-1 trains "
             "nothing: set num_train_epochs > 0, or max_steps to the number of optimizer updates."),
            ("num_iterations", positive(self.num_iterations), " must be a whole number >= 1 (the optimizer passes "
             "over each generation batch; the paper uses 1): with 0 nothing is trained."),
            ("learning_rate", math.isfinite(lr) and lr >= 0, " must be a finite number >= 0; the authors use 2e-6 for "
             "1.5B models and 1e-6 for 7B/8B."),
            ("temperature", math.isfinite(temperature) and temperature > 0, ": DisCO samples its completions, so the "
             "sampling temperature must be a finite number > 0 (the paper uses 0.6)."),
            ("top_p", math.isfinite(top_p) and 0 < top_p <= 1, " must be in (0, 1]: the nucleus keeps the most "
             "likely tokens up to this probability mass (1.0, the paper's, samples from the whole distribution)."),
            ("max_completion_length", self.max_completion_length is None or self.max_completion_length > 0,
             " must be a positive number of tokens (the paper uses 8192)."),
            ("per_device_train_batch_size", positive(self.per_device_train_batch_size), batch + "."),
            ("gradient_accumulation_steps", positive(self.gradient_accumulation_steps), " must be a whole number "
             ">= 1 (micro-batches per optimizer update)."),
            ("steps_per_generation", optional_positive(self.steps_per_generation), " must be a whole number >= 1 "
             "(micro-batches per generation batch), or unset (gradient_accumulation_steps)."),
            ("generation_batch_size", optional_positive(self.generation_batch_size), batch + ", or unset."),
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
                    f"DiscoConfig.reward_threshold={value} with multi_objective_aggregation='normalize_then_sum': "
                    "that "
                    "aggregation sums group-normalised rewards, which have no fixed scale to cut at a number. Use "
                    "reward_threshold='group_mean' (positives: above their question's mean)."
                )
        self.reward_threshold = value

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

    def _check_filling(self) -> None:
        """fill_informative_questions counts training in optimizer steps and draws dataset rows itself."""
        rounds = self.max_generation_rounds
        if not self.fill_informative_questions:
            if rounds is not None:
                raise ValueError(
                    f"DiscoConfig.max_generation_rounds={rounds} is used only with fill_informative_questions=True: "
                    "turn that on, or remove max_generation_rounds."
                )
            return
        if rounds is None:
            self.max_generation_rounds = rounds = DEFAULT_GENERATION_ROUNDS
        if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
            raise ValueError(
                f"DiscoConfig.max_generation_rounds={rounds!r} must be a whole number >= 1 (generation rounds per "
                f"batch, the first included; 1 generates once, as without filling; default "
                f"{DEFAULT_GENERATION_ROUNDS})."
            )
        if self.max_steps <= 0:
            raise ValueError(
                f"DiscoConfig.fill_informative_questions=True needs max_steps (the number of optimizer updates; got "
                f"{self.max_steps}): each update may draw up to max_generation_rounds generation batches of prompts, "
                "so num_train_epochs would no longer count passes over the data. Set max_steps."
            )
        if self.remove_unused_columns:
            raise ValueError(
                "DiscoConfig.fill_informative_questions=True with remove_unused_columns=True: the extra rounds read "
                "the training set's rows as they are, with every column the reward functions use. Set "
                "remove_unused_columns=False (GRPOConfig's default)."
            )
