"""DisCO's logged metrics (docs/method.md lists them): what a user watches to see DisCO working."""

from __future__ import annotations

import torch

from .losses import kl_hinge_penalty, question_counts


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


def log_loss_metrics(metrics, global_sum, logged_objective, kl, scores, labels, mask, entropies, *, kl_delta: float,
                     kl_beta: float) -> None:
    """One micro-step's objective, entropy, scores of positives and negatives, and KL (summed over processes by
    `global_sum`, one collective)."""
    pos, neg = labels == 1, labels == 0
    stats = torch.stack(
        [
            scores.new_zeros(()) if logged_objective is None else logged_objective.float(),
            torch.tensor(float(logged_objective is not None), device=scores.device),
            (entropies.detach().float() * mask).sum(),
            mask.sum(),
            (scores.detach() * pos).sum(),
            pos.sum().float(),
            (scores.detach() * neg).sum(),
            neg.sum().float(),
        ]
    )
    totals = global_sum(stats)
    if totals[1] > 0:
        metrics["disco/objective"].append(totals[0].item())
    metrics["entropy"].append((totals[2] / totals[3].clamp(min=1.0)).item())
    if totals[5] > 0:
        metrics["disco/score_pos"].append((totals[4] / totals[5]).item())
    if totals[7] > 0:
        metrics["disco/score_neg"].append((totals[6] / totals[7]).item())
    if kl is not None:
        metrics["disco/kl"].append(kl.item())
        metrics["disco/kl_penalty"].append(kl_hinge_penalty(kl.detach(), delta=kl_delta, beta=kl_beta).item())
        metrics["disco/hinge_active"].append(float(kl.item() > kl_delta))
