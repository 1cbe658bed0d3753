"""GRPOConfig options that configure GRPO's loss, and why DisCO refuses them (docs/compatibility.md lists them all).

DisCO replaces GRPO's clipped, advantage-weighted surrogate with its own objective, so every option that shapes that
surrogate has no meaning for DisCO. Ignoring one silently would let a GRPO script run as something it is not, so each
is refused at any value other than its neutral one, with a message about that option.
"""

from __future__ import annotations

_CLIPPING = "DisCO's scores are not clipped; its trust region is KL(pi_old || pi_theta) <= kl_delta (weight kl_beta)"
_ENTROPY = "DisCO keeps entropy stable through its KL constraint (kl_delta, kl_beta), not with an entropy term"
_REFERENCE = "DisCO has no reference model (TRL's beta must be 0)"
_VLLM_IS = ("DisCO recomputes the old policy's log-probs with the trainer, so there is no vLLM/trainer mismatch to "
            "correct")

# option -> (neutral value, what it does in GRPO and why DisCO does not use it)
GRPO_LOSS_OPTIONS: dict[str, tuple[object, str]] = {
    "loss_type": ("dapo", "it picks GRPO's loss aggregation; DisCO's objective is chosen with `disco_variant` "
                          "('dro' or 'basic') and `score_type` ('log_l' or 'l_ratio')"),
    "epsilon": (0.2, f"it is GRPO's clipping range; {_CLIPPING}"),
    "epsilon_high": (None, f"it is the upper clipping range (DAPO's clip-higher); {_CLIPPING}"),
    "delta": (None, f"it is GRPO's two-sided clipping bound (not DisCO's `kl_delta`); {_CLIPPING}"),
    "importance_sampling_level": ("token", "it sets where GRPO clips its importance ratio; DisCO's `score_type` "
                                           "chooses log-L or the (unclipped) L-ratio score"),
    "scale_rewards": ("group", "it divides GRPO's advantages by a reward std; DisCO uses no advantage magnitude and no "
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
                                        "(DeepSeek-V3.2's off-policy mask); DisCO bounds the distance to pi_old with its "
                                        "KL trust region (kl_delta, kl_beta) instead"),
    "use_bias_correction_kl": (True, f"it corrects GRPO's KL to the reference model; {_REFERENCE}"),
    "sync_ref_model": (False, f"it updates GRPO's reference model; {_REFERENCE}"),
    "ref_model_mixup_alpha": (0.6, f"it mixes GRPO's reference model; {_REFERENCE}"),
    "ref_model_sync_steps": (512, f"it schedules GRPO's reference-model sync; {_REFERENCE}"),
    "vllm_importance_sampling_correction": (False, f"it reweights GRPO's loss by pi_trainer/pi_vLLM; {_VLLM_IS}"),
    "vllm_importance_sampling_mode": ("sequence_mask", f"it configures GRPO's vLLM importance sampling; {_VLLM_IS}"),
    "vllm_importance_sampling_clip_min": (None, f"it configures GRPO's vLLM importance sampling; {_VLLM_IS}"),
    "vllm_importance_sampling_clip_max": (3.0, f"it configures GRPO's vLLM importance sampling; {_VLLM_IS}"),
    "vllm_importance_sampling_cap": (None, f"it configures GRPO's vLLM importance sampling; {_VLLM_IS}"),
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
