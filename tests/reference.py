"""Plain loop-over-questions references for the DisCO objective, written from the paper's equations.

Deliberately naive (Python loops, one question at a time, no vectorisation) so that they share no code and no trick
with `disco_trl.losses`. Used by the loss tests and the trainer split-invariance tests.
"""

from __future__ import annotations

import math

import torch


def ref_scores(logps, old_logps, mask, score_type):
    out = []
    for i in range(logps.shape[0]):
        terms = []
        for t in range(logps.shape[1]):
            if mask[i, t] > 0:
                if score_type == "log_l":
                    terms.append(logps[i, t])
                else:
                    terms.append(torch.exp(logps[i, t] - old_logps[i, t]))
        out.append(sum(terms) / len(terms) if terms else logps.new_zeros(()) * 0.0)
    return torch.stack(out)


def ref_question_objective(pos_scores, neg_scores, variant, tau, pos_weights=None, neg_weights=None):
    """J_q for one question (Eq. 7 for 'basic', Eq. 10 for 'dro'); None when the question lacks either kind. With
    importance weights, every expectation over a class is the weighted mean sum w x / sum w."""
    if not pos_scores or not neg_scores:
        return None
    pos_weights = pos_weights or [1.0] * len(pos_scores)
    neg_weights = neg_weights or [1.0] * len(neg_scores)
    pos_total, neg_total = sum(pos_weights), sum(neg_weights)
    pos_mean = sum(w * s for w, s in zip(pos_weights, pos_scores)) / pos_total
    if variant == "basic":
        return pos_mean - sum(w * s for w, s in zip(neg_weights, neg_scores)) / neg_total
    # Eq. 10 literally: -mean_{o+} tau * log mean_{o-} exp((s(o-) - s(o+)) / tau)
    total = 0.0
    for w_pos, s_pos in zip(pos_weights, pos_scores):
        inner = sum(w * torch.exp((s_neg - s_pos) / tau) for w, s_neg in zip(neg_weights, neg_scores)) / neg_total
        total = total - w_pos * tau * torch.log(inner)
    return total / pos_total


def ref_objective(scores, rewards, group_ids, variant, tau, threshold=0.5, num_questions=None, weights=None):
    """`weights`: per completion an importance weight, or None for a completion in neither class."""
    groups = {}
    for i in range(scores.shape[0]):
        groups.setdefault(int(group_ids[i]), []).append(i)
    weights = weights if weights is not None else [1.0] * scores.shape[0]
    total = scores.new_zeros(())
    for rows in groups.values():
        rows = [i for i in rows if not math.isnan(float(rewards[i])) and weights[i] is not None]
        pos = [i for i in rows if float(rewards[i]) > threshold]
        neg = [i for i in rows if float(rewards[i]) <= threshold]
        j = ref_question_objective([scores[i] for i in pos], [scores[i] for i in neg], variant, tau,
                                   [weights[i] for i in pos], [weights[i] for i in neg])
        if j is not None:
            total = total + j
    return total / (num_questions if num_questions is not None else len(groups))


def ref_sampling_weights(old_logps, sampling_logps, mask, mode, clip_min=None, clip_max=3.0):
    """Per completion, from the definitions in docs/method.md: (its kept tokens {t: rho_t}, its weight w), w None for
    a completion with no token kept (neither positive nor negative)."""
    low = clip_min if clip_min is not None else -math.inf
    high = clip_max if clip_max is not None else math.inf
    out = []
    for i in range(old_logps.shape[0]):
        diffs = {}
        for t in range(old_logps.shape[1]):
            if mask[i, t] > 0:
                sampled = float(sampling_logps[i, t])
                diffs[t] = 0.0 if math.isnan(sampled) else float(old_logps[i, t]) - sampled
        if mode.startswith("token"):
            ratios = {t: math.exp(d) for t, d in diffs.items()}
            if mode == "token_truncate":
                kept = {t: min(max(r, low), high) for t, r in ratios.items()}
            else:
                kept = {t: r for t, r in ratios.items() if low <= r <= high}
            weight = 1.0
        else:
            weight = math.exp(sum(diffs.values()))
            if mode == "sequence_truncate":
                weight = min(max(weight, low), high)
            inside = mode == "sequence_truncate" or low <= weight <= high
            kept = dict.fromkeys(diffs, 1.0) if inside else {}
        out.append((kept, weight if kept else None))
    return out


def ref_weighted_scores(logps, old_logps, weights, score_type):
    """s(o) = (1/|kept|) sum over the kept tokens of rho_t * (log pi_theta, or pi_theta / pi_old)."""
    out = []
    for i, (kept, _) in enumerate(weights):
        terms = []
        for t, rho in kept.items():
            value = logps[i, t] if score_type == "log_l" else torch.exp(logps[i, t] - old_logps[i, t])
            terms.append(rho * value)
        out.append(sum(terms) / len(terms) if terms else logps.new_zeros(()) * 0.0)
    return torch.stack(out)


def ref_question_normalised(weights, questions):
    """w / (mean of w over the kept completions of its question), None kept as None."""
    out = []
    for i, w in enumerate(weights):
        same = [v for v, q in zip(weights, questions) if q == questions[i] and v is not None]
        out.append(None if w is None else w / (sum(same) / len(same)))
    return out


def ref_kl_hinge(logps, old_logps, mask, delta, beta):
    num, den = 0.0, 0.0
    for i in range(logps.shape[0]):
        for t in range(logps.shape[1]):
            if mask[i, t] > 0:
                num = num + (old_logps[i, t] - logps[i, t])
                den += 1
    kl = num / max(den, 1)
    if not isinstance(kl, torch.Tensor):
        kl = logps.new_tensor(kl)
    gap = kl - delta
    return (beta * gap * gap if gap > 0 else kl * 0.0), kl
