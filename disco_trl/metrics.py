"""DisCO's logged metrics (docs/method.md lists them): what a user watches to see DisCO working."""

from __future__ import annotations

import torch

from .losses import kl_penalty, negative_weights, question_counts


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


def negative_weight_stats(scores, labels, group_ids, tau: float, variant: str = "dro") -> torch.Tensor:
    """[sum of the DRO weights' effective sample size over a question's negatives as a fraction of them (1: all
    negatives weigh alike, as in DisCO-b; 1/n: one takes all), the same sum of the largest weight, the number of those
    questions]: over the mixed questions with at least 2 negatives (a question with one negative gives it all the
    weight whatever tau: its ESS is 1 by definition and says nothing about DRO). Summed over processes, then divided,
    these say how DRO differs from the basic form."""
    counts = question_counts(labels, group_ids, dtype=scores.dtype)
    weights = negative_weights(scores.detach(), labels, group_ids, tau=tau, variant=variant)
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
