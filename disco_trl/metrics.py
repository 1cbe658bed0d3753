"""DisCO's logged metrics (docs/method.md lists them): what a user watches to see DisCO working."""

from __future__ import annotations

import math

import torch

from .losses import kl_penalty, log_bounds, negative_weights, question_counts, sampling_correction, sampling_log_ratios


def log_group_statistics(metrics, labels: torch.Tensor, group_size: int, *, numeric_threshold: bool) -> bool:
    """Per-question counts over a whole generation batch (all processes' labels). Returns whether any question has
    both positives and negatives."""
    counts = question_counts(labels, torch.arange(labels.numel(), device=labels.device) // group_size)
    n_pos, n_neg, mixed = counts.positives, counts.negatives, counts.mixed
    metrics["disco/frac_mixed_questions"].append(mixed.float().mean().item())
    if numeric_threshold:  # with group_mean a question cannot be all positive
        metrics["disco/frac_all_positive"].append(((n_neg == 0) & (n_pos > 0)).float().mean().item())
        metrics["disco/frac_all_negative"].append(((n_pos == 0) & (n_neg > 0)).float().mean().item())
    metrics["disco/frac_unscored"].append(torch.isnan(labels).float().mean().item())
    metrics["disco/positives_per_question"].append(n_pos.mean().item())
    metrics["disco/negatives_per_question"].append(n_neg.mean().item())
    if mixed.any():
        metrics["disco/neg_per_pos_mixed"].append((n_neg[mixed] / n_pos[mixed]).mean().item())
        metrics["disco/frac_more_neg_than_pos"].append((n_neg[mixed] > n_pos[mixed]).float().mean().item())
    return bool(mixed.any())


def negative_weight_stats(scores, labels, group_ids, tau: float, variant: str = "dro",
                          log_weights=None) -> torch.Tensor:
    """[sum of the DRO weights' effective sample size over a question's negatives as a fraction of them (1: all
    negatives weigh alike, as in DisCO-b; 1/n: one takes all), the same sum of the largest weight, the number of those
    questions]: over the mixed questions with at least 2 negatives (a question with one negative gives it all the
    weight whatever tau: its ESS is 1 by definition and says nothing about DRO). Summed over processes, then divided,
    these say how DRO differs from the basic form. `log_weights`: the sampling correction's per-completion weights,
    which the objective's weights include."""
    if log_weights is not None:  # a completion of weight 0 is in neither class
        labels = torch.where(torch.isfinite(log_weights).to(labels.device), labels, torch.full_like(labels, math.nan))
    counts = question_counts(labels, group_ids, dtype=scores.dtype)
    weights = negative_weights(scores.detach(), labels, group_ids, tau=tau, variant=variant, log_weights=log_weights)
    squares = torch.zeros_like(counts.negatives).index_add(0, counts.index, weights**2)
    largest = torch.zeros_like(counts.negatives).scatter_reduce(0, counts.index, weights, reduce="amax")
    several = counts.mixed & (counts.negatives >= 2)
    ess_fraction = 1.0 / squares.clamp(min=torch.finfo(scores.dtype).tiny) / counts.negatives.clamp(min=1.0)
    ess_fraction = ess_fraction.clamp(max=1.0)  # <= 1 exactly; equal weights rounded to the scores' dtype can pass it
    return torch.stack([(ess_fraction * several).sum(), (largest * several).sum(),
                        several.sum().to(scores.dtype)]).float()


def log_negative_weights(metrics, totals: torch.Tensor) -> None:
    """`negative_weight_stats` summed over processes: the mean over the mixed questions with at least 2 negatives of
    the ESS fraction and the largest weight, and how many questions that mean covers (`disco/neg_weight_groups`)."""
    if totals[2] > 0:
        metrics["disco/neg_weight_ess"].append((totals[0] / totals[2]).item())
        metrics["disco/neg_weight_max"].append((totals[1] / totals[2]).item())
        metrics["disco/neg_weight_groups"].append(totals[2].item())


def log_loss_metrics(metrics, global_sum, logged_objective, kl, scores, labels, mask, entropies, *, kl_delta: float,
                     kl_beta: float, kl_penalty_kind: str = "squared_hinge", weight_stats=None) -> None:
    """One micro-step's objective, entropy, scores of positives and negatives, KL and (when the micro-batch holds
    whole questions: `weight_stats`) the DRO weights of its negatives, summed over processes by `global_sum` (one
    collective)."""
    pos, neg = labels == 1, labels == 0
    weight_stats = torch.zeros(3, device=scores.device) if weight_stats is None else weight_stats.to(scores.device)
    stats = torch.cat([torch.stack([
        scores.new_zeros(()) if logged_objective is None else logged_objective.float(),
        torch.tensor(float(logged_objective is not None), device=scores.device),
        (entropies.detach().float() * mask).sum(),
        mask.sum(),
        (scores.detach() * pos).sum(),
        pos.sum().float(),
        (scores.detach() * neg).sum(),
        neg.sum().float(),
    ]), weight_stats])
    totals = global_sum(stats)
    if totals[1] > 0:
        metrics["disco/objective"].append(totals[0].item())
    metrics["entropy"].append((totals[2] / totals[3].clamp(min=1.0)).item())
    if totals[5] > 0:
        metrics["disco/score_pos"].append((totals[4] / totals[5]).item())
    if totals[7] > 0:
        metrics["disco/score_neg"].append((totals[6] / totals[7]).item())
    log_negative_weights(metrics, totals[8:11])
    if kl is not None:
        metrics["disco/kl"].append(kl.item())
        penalty = kl_penalty(kl.detach(), kind=kl_penalty_kind, delta=kl_delta, beta=kl_beta)
        metrics["disco/kl_penalty"].append(penalty.item())
        metrics["disco/hinge_active"].append(float(kl.item() > kl_delta))


# sampling_mismatch_stats: the first SUMMED entries are summed over processes, the rest maxed (a min is a negated max).
_MISMATCH_SUMMED = 8


def sampling_mismatch_stats(old_per_token_logps, sampling_per_token_logps, mask, *, mode: str,
                            clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """How far the sampler's (vLLM's) log-probs are from pi_old's on these completions, as a float64 vector to combine
    over processes (`log_sampling_mismatch`): [sum |d|, tokens, sum of the k3 terms of KL(pi_vLLM || pi_old), sum
    of the mode's ratios, ratios, completions whose sequence ratio is outside the bounds, completions, tokens whose
    ratio is outside the bounds, max |d|, max ratio, -min ratio], d = log pi_old - log pi_vLLM per token. Tokens the
    sampler gave no log-prob (NaN) are left out, as in TRL. The ratios are the mode's (per token or per completion),
    after its bounds: what the correction weighs with (or would, when it is off), 0 for what it drops."""
    mask = mask.float()
    valid = (mask > 0) & ~torch.isnan(sampling_per_token_logps)
    log_ratio = sampling_log_ratios(old_per_token_logps, sampling_per_token_logps, mask).double()
    low, high = log_bounds(clip_min, clip_max)
    correction = sampling_correction(old_per_token_logps, sampling_per_token_logps, mask, mode=mode,
                                     clip_min=clip_min, clip_max=clip_max)
    has_tokens = mask.sum(dim=-1) > 0
    if mode.startswith("token_"):
        ratios = correction.token_weights.double()[valid]
    else:
        ratios = torch.exp(correction.log_weights.double())[has_tokens].nan_to_num(0.0)
    sequence = log_ratio.sum(dim=-1)[has_tokens]
    tokens = log_ratio[valid]
    difference = tokens.abs()

    def largest(values):
        return values.max() if values.numel() else values.new_full((), -math.inf)

    return torch.stack([
        difference.sum(), difference.new_tensor(float(difference.numel())), (torch.expm1(tokens) - tokens).sum(),
        ratios.sum(), ratios.new_tensor(float(ratios.numel())), ((sequence < low) | (sequence > high)).sum().double(),
        sequence.new_tensor(float(sequence.numel())), ((tokens < low) | (tokens > high)).sum().double(),
        largest(difference), largest(ratios), largest(-ratios),
    ])


def log_sampling_mismatch(metrics, gathered: torch.Tensor) -> None:
    """Log `sampling_mismatch_stats` of all processes (one row each), under TRL's names where TRL has one."""
    totals = torch.cat([gathered[:, :_MISMATCH_SUMMED].sum(dim=0), gathered[:, _MISMATCH_SUMMED:].amax(dim=0)])
    abs_sum, tokens, k3_sum, ratio_sum, ratios, outside, completions, tokens_outside = totals[:_MISMATCH_SUMMED]
    if tokens > 0:
        metrics["sampling/sampling_logp_difference/mean"].append((abs_sum / tokens).item())
        metrics["sampling/sampling_logp_difference/max"].append(totals[8].item())
        metrics["sampling/kl_vllm_old"].append((k3_sum / tokens).item())
        metrics["sampling/frac_tokens_outside_bounds"].append((tokens_outside / tokens).item())
    if ratios > 0:
        metrics["sampling/importance_sampling_ratio/min"].append(-totals[10].item())
        metrics["sampling/importance_sampling_ratio/mean"].append((ratio_sum / ratios).item())
        metrics["sampling/importance_sampling_ratio/max"].append(totals[9].item())
    if completions > 0:
        metrics["sampling/frac_outside_bounds"].append((outside / completions).item())
