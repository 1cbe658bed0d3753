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


def ref_question_objective(pos_scores, neg_scores, variant, tau):
    """J_q for one question (Eq. 7 for 'basic', Eq. 10 for 'dro'); None when the question lacks either kind."""
    if not pos_scores or not neg_scores:
        return None
    pos_mean = sum(pos_scores) / len(pos_scores)
    if variant == "basic":
        return pos_mean - sum(neg_scores) / len(neg_scores)
    # Eq. 10 literally: -mean_{o+} tau * log mean_{o-} exp((s(o-) - s(o+)) / tau)
    total = 0.0
    for s_pos in pos_scores:
        inner = sum(torch.exp((s_neg - s_pos) / tau) for s_neg in neg_scores) / len(neg_scores)
        total = total - tau * torch.log(inner)
    return total / len(pos_scores)


def ref_objective(scores, rewards, group_ids, variant, tau, threshold=0.5, num_questions=None):
    groups = {}
    for i in range(scores.shape[0]):
        groups.setdefault(int(group_ids[i]), []).append(i)
    total = scores.new_zeros(())
    for rows in groups.values():
        pos = [scores[i] for i in rows if not math.isnan(float(rewards[i])) and float(rewards[i]) > threshold]
        neg = [scores[i] for i in rows if not math.isnan(float(rewards[i])) and float(rewards[i]) <= threshold]
        j = ref_question_objective(pos, neg, variant, tau)
        if j is not None:
            total = total + j
    return total / (num_questions if num_questions is not None else len(groups))


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
