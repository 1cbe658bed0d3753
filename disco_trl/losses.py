r"""The DisCO objective as pure tensor functions (no trainer, no distributed state).

Paper: Li, Lin, Galanti, Tu, Yang, "DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained
Optimization", arXiv:2505.12366. Equation numbers below follow the paper (section 4.2 and Algorithm 1).

Shapes: per-token tensors are (B, T) (B completions, T completion tokens, right-padded, `mask` is 1 on real tokens);
per-completion tensors are (B,).

* :func:`completion_labels` -- the paper's binary reward: which completions are positives (S_q^+) and negatives (S_q^-).
* :func:`sequence_scores`  -- the scoring function s_theta(o, q) (log-L, Eq. 5; L-ratio, Eq. 6).
* :func:`discriminative_objective` -- J_1 (DisCO-b, Eq. 7) or J_2 (DisCO, the DRO objective, Eq. 10), averaged over
  the questions of a mini-batch exactly as G_1 in Algorithm 1 (no per-question weight: no difficulty bias).
* :func:`mixed_questions` -- the completions whose question has both positives and negatives (the only ones J sees).
* :func:`kl_hinge_penalty` -- the squared-hinge penalty beta * [KL(pi_old || pi_theta) - delta]_+^2 used to enforce the
  trust-region constraint (Eq. 8/11, G_2 in Algorithm 1).

The trainer (:mod:`disco_trl.trainer`) minimises ``-discriminative_objective(...) + kl_hinge_penalty(...)[0]``.
"""

from __future__ import annotations

import math

import torch

SCORE_TYPES = ("log_l", "l_ratio")
VARIANTS = ("basic", "dro")


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"`{name_a}` has shape {tuple(a.shape)} but `{name_b}` has shape {tuple(b.shape)}; they must match.")


def completion_labels(values: torch.Tensor, scorable: torch.Tensor, *, threshold: float) -> torch.Tensor:
    r"""The paper's binary reward r(o, q) in {0, 1}, from any reward: 1.0 for a positive, 0.0 for a negative, NaN for neither.

    A completion is positive when ``values > threshold`` and negative otherwise. `values` is either the (weighted)
    reward itself with a numeric threshold (``reward_threshold=0.5``: for 0/1 rewards, exactly the paper's S_q^+ and
    S_q^-), or the reward minus its question's mean reward with ``threshold=0`` (``reward_threshold="group_mean"``:
    positives are the completions that beat their question's mean; for 0/1 rewards the same sets). Completions that
    cannot be scored (`scorable` False: every reward function returned None, or the completion mask is empty, e.g.
    a truncated completion under ``mask_truncated_completions``) are neither positive nor negative: NaN.
    """
    _check_same_shape("values", values, "scorable", scorable)
    labels = (values > threshold).to(torch.float32)
    return torch.where(scorable.bool() & ~torch.isnan(values), labels, torch.full_like(labels, math.nan))


def sequence_scores(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    score_type: str,
) -> torch.Tensor:
    r"""Scoring function s_theta(o, q) of each completion, shape (B,).

    * ``score_type="log_l"`` (Eq. 5): s = 1/|o| \sum_t log pi_theta(o_t | q, o_<t), the masked mean of
      `per_token_logps`. `old_per_token_logps` is not used and may be None.
    * ``score_type="l_ratio"`` (Eq. 6): s = 1/|o| \sum_t pi_theta(o_t | ...) / pi_old(o_t | ...), the masked mean of
      exp(per_token_logps - old_per_token_logps). Not clipped (unlike GRPO's surrogate).

    A row whose mask is empty (a fully padded or fully masked completion) scores 0, not NaN, and gets no gradient.
    """
    if score_type not in SCORE_TYPES:
        raise ValueError(f"Unknown `score_type`={score_type!r}; expected one of {SCORE_TYPES}.")
    if per_token_logps.dim() != 2:
        raise ValueError(f"`per_token_logps` must be (B, T); got shape {tuple(per_token_logps.shape)}.")
    _check_same_shape("per_token_logps", per_token_logps, "mask", mask)
    mask = mask.to(per_token_logps.dtype)
    if score_type == "log_l":
        values = per_token_logps
    else:
        if old_per_token_logps is None:
            raise ValueError("`old_per_token_logps` is required for score_type='l_ratio'.")
        _check_same_shape("per_token_logps", per_token_logps, "old_per_token_logps", old_per_token_logps)
        # Padded positions may hold arbitrary log-probs: zero the exponent there so exp() cannot overflow.
        values = torch.exp((per_token_logps - old_per_token_logps) * mask)
    lengths = mask.sum(dim=-1)
    return (values * mask).sum(dim=-1) / lengths.clamp(min=1.0)


def positives_and_negatives(rewards: torch.Tensor, reward_threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive, negative) boolean masks, shape (B,): positive when reward > reward_threshold, negative otherwise;
    a NaN reward (unscorable) is neither. The one rule `discriminative_objective` and `mixed_questions` share."""
    valid = ~torch.isnan(rewards)
    pos = (rewards > reward_threshold) & valid
    return pos, (~pos) & valid


def mixed_questions(rewards: torch.Tensor, group_ids: torch.Tensor, reward_threshold: float) -> torch.Tensor:
    r"""Which completions belong to a question with at least one positive and one negative: a boolean mask, shape (B,).

    Only those questions contribute to J (Eq. 7/10): for the others (all positive, all negative, or only unscorable
    completions) J_q = 0 whatever the scores, so `discriminative_objective` over the kept rows, with the full
    `num_questions`, equals the objective over all rows, value and gradient. Same positive/negative rule as
    `discriminative_objective` (`positives_and_negatives`).
    """
    _check_same_shape("rewards", rewards, "group_ids", group_ids)
    if rewards.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=rewards.device)
    pos, neg = positives_and_negatives(rewards, reward_threshold)
    _, group_index = torch.unique(group_ids, return_inverse=True)
    n_groups = int(group_index.max()) + 1
    n_pos = torch.zeros(n_groups, device=rewards.device).index_add(0, group_index, pos.float())
    n_neg = torch.zeros(n_groups, device=rewards.device).index_add(0, group_index, neg.float())
    return ((n_pos > 0) & (n_neg > 0))[group_index]


def discriminative_objective(
    scores: torch.Tensor,
    rewards: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    variant: str = "dro",
    tau: float = 10.0,
    reward_threshold: float = 0.5,
    num_questions: int | None = None,
) -> torch.Tensor:
    r"""The discriminative objective to MAXIMISE, a scalar (the true value, safe to log as is).

    For each question q (completions sharing a group id), S_q^+ = {o : r(o) > reward_threshold} and
    S_q^- = the others. A question with both kinds contributes

    * ``variant="basic"`` (DisCO-b, Eq. 7):  J_q = mean_{o in S_q^+} s(o) - mean_{o' in S_q^-} s(o')
    * ``variant="dro"``   (DisCO, Eq. 10):   J_q = mean_{o in S_q^+} s(o) - tau * log( mean_{o' in S_q^-} exp(s(o')/tau) )

    (Eq. 10 is -E_{o+} tau log E_{o-} exp((s(o') - s(o))/tau); the s(o) term leaves the log unchanged, giving the
    form above.) The log-mean-exp is computed stably as logsumexp(s/tau) - log|S_q^-|. As tau -> infinity the DRO term
    tends to the plain mean, i.e. DisCO tends to DisCO-b.

    The result is (1/num_questions) * sum_q J_q, matching G_1 of Algorithm 1: every question counts once,
    without GRPO's per-question weight sqrt(p_q(1-p_q)) (the difficulty bias). Questions with only positives or
    only negatives contribute 0 but still count in `num_questions`, which defaults to the number of distinct
    group ids given. Pass the mini-batch's question count when the function sees only part of it (one micro-batch,
    one process) so that the parts add up to the mini-batch objective.

    Completions whose reward is NaN (unscorable) are neither positive nor negative: they are ignored.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown `variant`={variant!r}; expected one of {VARIANTS} ('basic' is DisCO-b, 'dro' is DisCO).")
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise ValueError(f"`tau` must be a finite number > 0; got {tau!r}.")
    if scores.dim() != 1:
        raise ValueError(f"`scores` must be (B,); got shape {tuple(scores.shape)}.")
    _check_same_shape("scores", scores, "rewards", rewards)
    _check_same_shape("scores", scores, "group_ids", group_ids)
    if num_questions is not None and num_questions <= 0:
        raise ValueError(f"`num_questions` must be a positive integer; got {num_questions!r}.")

    unique_ids, group_index = torch.unique(group_ids, return_inverse=True)
    n_groups = unique_ids.numel()
    if num_questions is None:
        num_questions = max(n_groups, 1)
    if scores.numel() == 0:
        return scores.sum() * 0.0

    pos, neg = positives_and_negatives(rewards.to(scores.device), reward_threshold)
    dtype = scores.dtype

    def group_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(n_groups, dtype=values.dtype, device=values.device).index_add(0, group_index, values)

    n_pos = group_sum(pos.to(dtype))
    n_neg = group_sum(neg.to(dtype))
    has_both = (n_pos > 0) & (n_neg > 0)

    zero = torch.zeros((), dtype=dtype, device=scores.device)
    pos_mean = group_sum(torch.where(pos, scores, zero)) / n_pos.clamp(min=1.0)
    if variant == "basic":
        neg_term = group_sum(torch.where(neg, scores, zero)) / n_neg.clamp(min=1.0)
    else:
        # tau * log mean exp(s/tau) over negatives, per group, via a per-group max shift (a segmented logsumexp).
        z = torch.where(neg, scores / tau, torch.full_like(scores, -math.inf))
        group_max = torch.full((n_groups,), -math.inf, dtype=dtype, device=scores.device)
        group_max = group_max.scatter_reduce(0, group_index, z, reduce="amax", include_self=True)
        shift = torch.where(torch.isfinite(group_max), group_max, torch.zeros_like(group_max)).detach()
        sum_exp = group_sum(torch.exp(z - shift[group_index]))  # exp(-inf) = 0 on non-negatives
        log_mean_exp = shift + torch.log(sum_exp.clamp(min=torch.finfo(dtype).tiny)) - torch.log(n_neg.clamp(min=1.0))
        neg_term = tau * log_mean_exp
    per_question = torch.where(has_both, pos_mean - neg_term, zero)
    return per_question.sum() / num_questions


def kl_hinge_penalty(
    per_token_logps: torch.Tensor,
    old_per_token_logps: torch.Tensor,
    mask: torch.Tensor,
    *,
    delta: float = 1e-4,
    beta: float = 1e3,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Squared-hinge penalty for the trust-region constraint KL(pi_old || pi_theta) <= delta. Returns (penalty, kl).

    kl is the token-level estimate of Algorithm 1, step d.i:
        kl = sum(mask * (log pi_old - log pi_theta)) / sum(mask)
    over all tokens given (one micro-step's tokens), and
        penalty = beta * max(kl - delta, 0)^2         (Eq. 8 / Eq. 11)
    whose gradient is G_2 = 2 * beta * [kl - delta]_+ * grad(kl). The penalty is zero, with zero gradient, while the
    constraint holds, so it never slows learning inside the trust region.

    Note: the authors' reference implementation applies half this gradient: it uses
    ``(beta * [kl - delta]_+).detach() * kl`` as the loss term, whose gradient is beta * [kl - delta]_+ * grad(kl).
    This function follows the paper's equations (the full squared-hinge gradient).
    """
    if not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"`delta` must be a finite number >= 0; got {delta!r}.")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"`beta` must be a finite number >= 0; got {beta!r}.")
    _check_same_shape("per_token_logps", per_token_logps, "old_per_token_logps", old_per_token_logps)
    _check_same_shape("per_token_logps", per_token_logps, "mask", mask)
    mask = mask.to(per_token_logps.dtype)
    kl = ((old_per_token_logps - per_token_logps) * mask).sum() / mask.sum().clamp(min=1.0)
    return hinge_from_kl(kl, delta=delta, beta=beta), kl


def hinge_from_kl(kl: torch.Tensor, *, delta: float, beta: float) -> torch.Tensor:
    """beta * max(kl - delta, 0)^2 for an already computed KL estimate (used when the estimate spans processes)."""
    return beta * torch.clamp(kl - delta, min=0.0) ** 2
