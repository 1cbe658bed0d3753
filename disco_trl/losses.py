r"""The DisCO objective as pure tensor functions (no trainer, no distributed state).

Paper: Li, Lin, Galanti, Tu, Yang, "DisCO: Reinforcing Large Reasoning Models with Discriminative Constrained
Optimization", arXiv:2505.12366. Equation numbers below follow the paper (section 4.2 and Algorithm 1).

Shapes: per-token tensors are (B, T) (B completions, T completion tokens, right-padded, `mask` is 1 on real tokens);
per-completion tensors are (B,). *Labels* are the paper's binary reward, decided once per generation batch by
:func:`completion_labels`: 1.0 for a positive (S_q^+), 0.0 for a negative (S_q^-), NaN for neither.

* :func:`completion_labels` -- positives and negatives from any reward.
* :func:`question_counts` / :func:`mixed_questions` -- positives and negatives per question, and which completions
  belong to a question that has both (the only ones J sees).
* :func:`sequence_scores` -- the scoring function s_theta(o, q) (log-L, Eq. 5; L-ratio, Eq. 6).
* :func:`discriminative_objective` -- J_1 (DisCO-b, Eq. 7) or J_2 (DisCO, the DRO objective, Eq. 10), averaged over
  the questions of a mini-batch exactly as G_1 in Algorithm 1 (no per-question weight: no difficulty bias).
* :func:`token_mean_kl` -- the token estimate of KL(pi_old || pi_theta) of Algorithm 1, step d.i (or the
  non-negative k3 estimate, `kl_estimator="k3"`).
* :func:`sampling_correction` / :func:`question_log_weights` -- importance weights for completions sampled by another
  engine than pi_old (vLLM: its kernels, dtype and sampler are not the trainer's), in TRL's four modes, which the
  score, the objective and the KL estimate above accept (docs/method.md gives the equations and the trade-offs).
* :func:`kl_hinge_penalty` -- the squared hinge beta * [KL - delta]_+^2 enforcing the trust region (Eq. 8/11, G_2).
* :func:`negative_weights` -- how the DRO term spreads each question's push-down over its negatives (a diagnostic).
* :func:`disco_loss` -- what an optimizer step minimises: -J plus the penalty, with the scaling that makes the parts
  of a step (micro-steps, processes) add up to the paper's mini-batch objective.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


SCORE_TYPES = ("log_l", "l_ratio")
VARIANTS = ("basic", "dro")


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"`{name_a}` has shape {tuple(a.shape)} but `{name_b}` has shape {tuple(b.shape)}; they must match."
        )


def check_tau(tau, name: str = "tau") -> float:
    """`tau` as a float, or ValueError naming `name` when it is not a finite number > 0."""
    if isinstance(tau, bool) or not (isinstance(tau, int | float) and math.isfinite(tau) and tau > 0):
        raise ValueError(
            f"{name} must be > 0 and finite (got {tau}); the paper uses 10 for log_l and 1 for l_ratio."
        )
    return float(tau)


def completion_labels(values: torch.Tensor, scorable: torch.Tensor, *, threshold: float) -> torch.Tensor:
    r"""The paper's binary reward r(o, q) in {0, 1} from any reward: 1.0 positive, 0.0 negative, NaN neither (a label).

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


class QuestionCounts(NamedTuple):
    """Per question (distinct group id): positives and negatives; `index` maps each completion to its question."""

    index: torch.Tensor  # (B,) long, the question of each completion, 0..Q-1 in order of the sorted group ids
    positives: torch.Tensor  # (Q,)
    negatives: torch.Tensor  # (Q,)

    @property
    def mixed(self) -> torch.Tensor:
        """(Q,) bool: the question has at least one positive and one negative."""
        return (self.positives > 0) & (self.negatives > 0)


def question_counts(
    labels: torch.Tensor, group_ids: torch.Tensor, dtype: torch.dtype = torch.float32
) -> QuestionCounts:
    """Count each question's positives (label 1) and negatives (label 0); NaN labels count as neither."""
    _check_same_shape("labels", labels, "group_ids", group_ids)
    _, index = torch.unique(group_ids, return_inverse=True)
    num_questions = int(index.max()) + 1 if index.numel() else 0
    zeros = torch.zeros(num_questions, dtype=dtype, device=labels.device)
    return QuestionCounts(index, zeros.index_add(0, index, (labels == 1).to(dtype)),
                          zeros.index_add(0, index, (labels == 0).to(dtype)))


def mixed_questions(labels: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    r"""Which completions belong to a question with at least one positive and one negative: a bool mask, shape (B,).

    Only those questions contribute to J (Eq. 7/10): for the others J_q = 0 whatever the scores, so
    `discriminative_objective` over the kept rows, with the full `num_questions`, equals the objective over all rows,
    value and gradient.
    """
    counts = question_counts(labels, group_ids)
    return counts.mixed[counts.index] if labels.numel() else torch.zeros(0, dtype=torch.bool, device=labels.device)


def sequence_scores(
    per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor | None, mask: torch.Tensor, *, score_type: str,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""Scoring function s_theta(o, q) of each completion, shape (B,).

    * ``score_type="log_l"`` (Eq. 5): s = 1/|o| \sum_t log pi_theta(o_t | q, o_<t), the masked mean of
      `per_token_logps`. `old_per_token_logps` is not used and may be None.
    * ``score_type="l_ratio"`` (Eq. 6): s = 1/|o| \sum_t pi_theta(o_t | ...) / pi_old(o_t | ...), the masked mean of
      exp(per_token_logps - old_per_token_logps). Not clipped (unlike GRPO's surrogate).

    A row whose mask is empty (a fully padded or fully masked completion) scores 0, not NaN, and gets no gradient.

    `token_weights` (B, T), optional: each token's term is multiplied by its weight before the mean (the token modes
    of `sampling_correction`: rho_t = pi_old/pi_vLLM of the token), s = 1/|o| sum_t rho_t f_t. None: all 1.
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
    if token_weights is not None:
        _check_same_shape("per_token_logps", per_token_logps, "token_weights", token_weights)
        values = values * token_weights.to(values.dtype).detach()
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def _check_objective_inputs(scores, labels, group_ids, variant, tau, num_questions) -> None:
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown `variant`={variant!r}; expected one of {VARIANTS} ('basic' is DisCO-b, 'dro' is DisCO)."
        )
    check_tau(tau, "`tau`")
    if scores.dim() != 1:
        raise ValueError(f"`scores` must be (B,); got shape {tuple(scores.shape)}.")
    _check_same_shape("scores", scores, "labels", labels)
    _check_same_shape("scores", scores, "group_ids", group_ids)
    if num_questions is not None and num_questions <= 0:
        raise ValueError(f"`num_questions` must be a positive integer; got {num_questions!r}.")


def discriminative_objective(
    scores: torch.Tensor, labels: torch.Tensor, group_ids: torch.Tensor, *, variant: str = "dro", tau: float = 10.0,
    num_questions: int | None = None, log_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The discriminative objective to MAXIMISE, a scalar (the true value, safe to log as is).

    For each question q (completions sharing a group id), S_q^+ = {o : label 1} and S_q^- = {o : label 0}. A question
    with both kinds contributes

    * ``variant="basic"`` (DisCO-b, Eq. 7):  J_q = mean_{o in S_q^+} s(o) - mean_{o' in S_q^-} s(o')
    * ``variant="dro"``   (DisCO, Eq. 10):   J_q = mean_{o in S_q^+} s(o) - tau * log( mean_{o' in S_q^-}
    exp(s(o')/tau) )

    (Eq. 10 is -E_{o+} tau log E_{o-} exp((s(o') - s(o))/tau); the s(o) term leaves the log unchanged, giving the
    form above.) The term tau * log-mean-exp is computed stably per question, for every tau a float32 can hold
    (`_tau_log_mean_exp`): exact to float precision whether tau is tiny or huge. As tau -> infinity the DRO term tends
    to the plain mean, i.e. DisCO tends to DisCO-b.

    The result is (1/num_questions) * sum_q J_q, matching G_1 of Algorithm 1: every question counts once, without
    GRPO's per-question weight sqrt(p_q(1-p_q)) (the difficulty bias). Questions with only positives or only
    negatives contribute 0 but still count in `num_questions`, which defaults to the number of distinct group ids.
    Pass the mini-batch's question count when the function sees only part of it (one micro-batch, one process) so
    that the parts add up to the mini-batch objective. Completions labelled NaN are ignored.

    `log_weights` (B,), optional: log w(o) of importance weights (`sampling_correction`: completions sampled by
    another engine than pi_old). Every class mean then becomes self-normalised within its class of its question,
    mean_{S_q^+} s -> sum_{S_q^+} w s / sum_{S_q^+} w, and the DRO term tau log (sum_{S_q^-} w exp(s/tau) /
    sum_{S_q^-} w); a constant added to a question's log-weights changes nothing. A completion of weight 0 (log
    -inf) is in neither class. The weights carry no gradient. None: the paper's equal weights.
    """
    _check_objective_inputs(scores, labels, group_ids, variant, tau, num_questions)
    if scores.numel() == 0:
        return scores.sum() * 0.0
    labels, log_weights = _weighted_labels(scores, labels, log_weights)
    counts = question_counts(labels, group_ids, dtype=scores.dtype)
    num_questions = num_questions or max(counts.positives.numel(), 1)
    pos_mean, neg_term = _class_terms(scores, labels, counts, log_weights, variant, tau)
    return torch.where(counts.mixed, pos_mean - neg_term, torch.zeros_like(pos_mean)).sum() / num_questions


def _weighted_labels(scores, labels, log_weights):
    """(labels, log-weights) on the scores' device: the paper's equal weights (log w = 0) when `log_weights` is None;
    else the given ones, detached, with the labels of weight-0 completions (log -inf) set to NaN (in neither class)."""
    labels = labels.to(scores.device)
    if log_weights is None:
        return labels, torch.zeros_like(scores).detach()
    _check_same_shape("scores", scores, "log_weights", log_weights)
    log_weights = log_weights.to(scores.device, scores.dtype).detach()
    return torch.where(torch.isfinite(log_weights), labels, torch.full_like(labels, math.nan)), log_weights


def _class_terms(scores, labels, counts: QuestionCounts, log_weights, variant: str, tau: float):
    """Per question: the weighted mean score of the positives, and the weighted mean (basic) or tau * log-mean-exp
    (dro) of the negatives' scores, each self-normalised within its class (equal weights: the plain means)."""
    num_questions = counts.positives.numel()
    positive, negative = labels == 1, labels == 0

    def class_mean(member: torch.Tensor) -> torch.Tensor:
        weights = _segment_softmax(log_weights, member, counts.index, num_questions)
        weighted = weights * torch.where(member, scores, 0.0)
        return torch.zeros_like(counts.positives).index_add(0, counts.index, weighted)

    if variant == "basic":
        return class_mean(positive), class_mean(negative)
    return class_mean(positive), _tau_log_mean_exp(scores, negative, counts, tau, log_weights)


def _tau_log_mean_exp(scores, negative, counts: QuestionCounts, tau: float, log_weights):
    """Per question, tau * log (sum_{negatives} w exp(s / tau) / sum_{negatives} w) (w = 1: tau * log-mean-exp),
    exact for every tau > 0 a float32 can hold.

    Computed as m + tau * log sum a exp((s - m) / tau) in float64, with a = w / sum w over the negatives and m = sum a
    s their weighted mean: for a huge tau the correction is tiny and the result is the mean itself (the naive form
    rounds every exp(s/tau) to 1 and returns the largest score); for a tiny tau (s - m) / tau is large but cannot
    overflow float64 (|s| / tau <= 3.4e38 / 1.2e-38), and the log-sum-exp is shifted by its max. The gradient is
    softmax(s / tau + log w) over the negatives."""
    s, log_w = scores.double(), log_weights.double()
    num_questions = counts.negatives.numel()
    a = _segment_softmax(log_w, negative, counts.index, num_questions)
    mean = torch.zeros(num_questions, dtype=s.dtype, device=s.device).index_add(
        0, counts.index, a * torch.where(negative, s, 0.0))
    d = (s - mean[counts.index]) / tau
    log_mean = (_segment_logsumexp(d + log_w, negative, counts.index, num_questions)
                - _segment_logsumexp(log_w, negative, counts.index, num_questions))
    return (mean + tau * log_mean).to(scores.dtype)


def _segment_logsumexp(values: torch.Tensor, member: torch.Tensor, index: torch.Tensor, num_segments: int):
    """(num_segments,): log sum over the member rows of each segment of exp(values), shifted by the segment's max for
    stability; a segment without members gets log(tiny), a large negative number, not -inf."""
    values = torch.where(member, values, torch.full_like(values, -math.inf))
    top = torch.full((num_segments,), -math.inf, dtype=values.dtype, device=values.device)
    top = top.scatter_reduce(0, index, values, reduce="amax")
    shift = torch.where(torch.isfinite(top), top, torch.zeros_like(top)).detach()
    total = torch.zeros_like(top).index_add(0, index, torch.exp(values - shift[index]))
    return shift + torch.log(total.clamp(min=torch.finfo(values.dtype).tiny))


def _segment_softmax(values: torch.Tensor, member: torch.Tensor, index: torch.Tensor, num_segments: int):
    """(B,): exp(values) normalised over the member rows of each segment; 0 outside the members."""
    lse = _segment_logsumexp(values, member, index, num_segments)
    return torch.exp(torch.where(member, values, torch.full_like(values, -math.inf)) - lse[index])


def negative_weights(
    scores: torch.Tensor, labels: torch.Tensor, group_ids: torch.Tensor, *, tau: float, variant: str = "dro",
    log_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""How the objective spreads a question's push-down over its negatives, shape (B,): the gradient of J_q's
    negative term with respect to s(o'), 0 on positives and unlabelled rows.

    DisCO (`variant="dro"`, Eq. 10): w(o') = softmax(s/tau) over the question's negatives. A small tau puts nearly all
    the weight on the highest-scoring negatives; a large one spreads it evenly. DisCO-b (`"basic"`, Eq. 7): 1/|S_q^-|.
    With importance weights (`log_weights`, as in `discriminative_objective`): softmax(s/tau + log w), or w / sum w.
    """
    check_tau(tau, "`tau`")
    labels, log_weights = _weighted_labels(scores, labels, log_weights)
    counts = question_counts(labels, group_ids, dtype=scores.dtype)
    # float64: s / tau cannot overflow
    values = log_weights.double() + (0.0 if variant == "basic" else scores.detach().double() / tau)
    return _segment_softmax(values, labels == 0, counts.index, counts.negatives.numel()).to(scores.dtype)


# ---------------------------------------------------------------------------- samples drawn by another engine (vLLM)
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


class SamplingCorrection(NamedTuple):
    """How completions sampled by another engine than the trainer (vLLM) are reweighted toward pi_old."""

    mask: torch.Tensor  # (B, T) the loss mask less the tokens (token_mask) or completions (sequence_mask) dropped
    token_weights: torch.Tensor  # (B, T) rho_t, each token's bounded ratio (token modes); 1 in sequence modes
    log_weights: torch.Tensor  # (B,) log w(o), each completion's bounded ratio (sequence modes); 0 in token modes;
    # -inf for a completion with no token left (in neither class)


def sampling_log_ratios(
    old_per_token_logps: torch.Tensor, sampling_per_token_logps: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """(B, T): log pi_old - log pi_sampler of each completion token; 0 on padding and, as in TRL, where the sampler
    reported no log-prob (NaN)."""
    _check_same_shape("old_per_token_logps", old_per_token_logps, "sampling_per_token_logps", sampling_per_token_logps)
    _check_same_shape("old_per_token_logps", old_per_token_logps, "mask", mask)
    dtype = torch.promote_types(old_per_token_logps.dtype, torch.float32)  # bf16 log-probs are summed in float32
    old, sampling = old_per_token_logps.detach().to(dtype), sampling_per_token_logps.detach().to(dtype)
    return torch.nan_to_num((old - sampling) * mask.to(dtype), nan=0.0)


def log_bounds(clip_min: float | None, clip_max: float | None) -> tuple[float, float]:
    """[log clip_min, log clip_max], None (or a clip_min <= 0) meaning unbounded."""
    low = math.log(clip_min) if clip_min is not None and clip_min > 0 else -math.inf
    return low, math.log(clip_max) if clip_max is not None else math.inf


def _bound(log_ratio: torch.Tensor, truncate: bool, low: float, high: float):
    """(the bounded log-ratio, which entries are kept): truncate clamps to [low, high]; mask drops what is outside."""
    if truncate:
        return log_ratio.clamp(min=low, max=high), torch.ones_like(log_ratio, dtype=torch.bool)
    return log_ratio, (log_ratio >= low) & (log_ratio <= high)


def sampling_correction(
    old_per_token_logps: torch.Tensor, sampling_per_token_logps: torch.Tensor, mask: torch.Tensor, *, mode: str,
    clip_min: float | None = None, clip_max: float | None = 3.0,
) -> SamplingCorrection:
    r"""Importance weights that turn averages over completions sampled by pi_vLLM into averages under pi_old.

    With d_t = log pi_old(o_t) - log pi_vLLM(o_t) on each completion token (`sampling_log_ratios`) and the bounds
    [C_min, C_max] = [clip_min, clip_max] (None: unbounded), TRL's four modes mean, for DisCO:

    * ``token_truncate``: rho_t = clamp(exp(d_t), C_min, C_max) multiplies each token's term in the score
      (`sequence_scores`) and in the KL estimate (`token_kl_terms`).
    * ``token_mask``: rho_t = exp(d_t), and a token whose ratio is outside the bounds leaves the loss mask (it counts
      neither in its completion's mean nor in the KL's; a completion left with no token is in neither class).
    * ``sequence_truncate``: w(o) = clamp(exp(sum_t d_t), C_min, C_max) weighs the completion in its class mean
      (`discriminative_objective`) and in the KL estimate.
    * ``sequence_mask``: w(o) = exp(sum_t d_t); a completion outside the bounds is dropped: neither positive nor
      negative, and none of its tokens in the KL.

    Returned in log space (`log_weights`), so that an unbounded sequence ratio cannot overflow; the weights carry no
    gradient.
    """
    if mode not in IS_MODES:
        raise ValueError(f"Unknown importance sampling `mode`={mode!r}; expected one of {IS_MODES}.")
    log_ratio = sampling_log_ratios(old_per_token_logps, sampling_per_token_logps, mask)
    mask = mask.to(log_ratio.dtype)
    low, high = log_bounds(clip_min, clip_max)
    truncate = mode.endswith("_truncate")
    if mode.startswith("token_"):
        bounded, kept = _bound(log_ratio, truncate, low, high)
        mask = mask * kept
        token_weights, log_weights = torch.exp(bounded) * mask, torch.zeros_like(mask[:, 0])
    else:
        log_weights, kept = _bound(log_ratio.sum(dim=-1), truncate, low, high)
        mask, token_weights = mask * kept[:, None], torch.ones_like(mask)
    log_weights = torch.where(mask.sum(dim=-1) > 0, log_weights, torch.full_like(log_weights, -math.inf))
    return SamplingCorrection(mask, token_weights, log_weights)


def question_log_weights(log_weights: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    r"""log w~(o) = log w(o) - log mean_{o' in q, w(o') > 0} w(o'): each question's weights rescaled to a mean of 1
    over its kept completions (those of finite log-weight). The class means do not change (they are self-normalised);
    the KL estimate then counts every question's tokens as much as without weights, and w~ <= |q| cannot overflow."""
    _check_same_shape("log_weights", log_weights, "group_ids", group_ids)
    if log_weights.numel() == 0:
        return log_weights
    _, index = torch.unique(group_ids, return_inverse=True)
    num_questions = int(index.max()) + 1
    kept = torch.isfinite(log_weights)
    kept_count = torch.zeros(num_questions, dtype=log_weights.dtype, device=log_weights.device)
    kept_count = kept_count.index_add(0, index, kept.to(log_weights.dtype))
    log_sum = _segment_logsumexp(log_weights, kept, index, num_questions)
    return log_weights - log_sum[index] + torch.log(kept_count.clamp(min=1.0))[index]


KL_ESTIMATORS = ("log_ratio", "k3")


def token_kl_terms(
    per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, mask: torch.Tensor, *,
    estimator: str = "log_ratio", token_weights: torch.Tensor | None = None,
    sample_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""(sum over the masked tokens of the per-token KL estimate, number of masked tokens): the two parts of the token
    KL estimate, for estimates that span several processes (sum each part over them, then divide).

    The tokens were sampled from pi_old, so with r = pi_theta / pi_old at each token:

    * ``estimator="log_ratio"`` (the paper's, Algorithm 1 d.i): log pi_old - log pi_theta = -log r. Unbiased, but a
      sample of it is negative whenever pi_theta gives the token more probability than pi_old did, so a small
      batch's mean scatters around the true KL, below zero about as often as above it near the trust region.
    * ``estimator="k3"``: r - 1 - log r (J. Schulman's k3). Also unbiased (E_old[r] = 1), and >= 0 for every token,
      so its mean never falls below zero and scatters far less for a small KL (its terms are O((log r)^2)).

    Importance weights (`sampling_correction`, for tokens sampled by another engine than pi_old), detached:
    `token_weights` (B, T) multiply each token's term (token modes: rho_t); `sample_weights` (B,) weigh each
    completion's tokens in the sum *and* in the count (sequence modes: w(o), normalised per question by
    `question_log_weights`), giving sum_o w(o) sum_t rho_t k_t / sum_o w(o) |o|.
    """
    _check_same_shape("per_token_logps", per_token_logps, "old_per_token_logps", old_per_token_logps)
    _check_same_shape("per_token_logps", per_token_logps, "mask", mask)
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"Unknown KL `estimator`={estimator!r}; expected one of {KL_ESTIMATORS}.")
    mask = mask.to(per_token_logps.dtype)
    log_ratio = (per_token_logps - old_per_token_logps) * mask  # zero on padding, where exp() must not overflow
    per_token = -log_ratio if estimator == "log_ratio" else torch.expm1(log_ratio) - log_ratio
    if sample_weights is not None:
        mask = mask * sample_weights.to(mask.dtype).detach()[:, None]
    if token_weights is not None:
        per_token = per_token * token_weights.to(per_token.dtype).detach()
    return (per_token * mask).sum(), mask.sum()


def token_mean_kl(
    per_token_logps: torch.Tensor, old_per_token_logps: torch.Tensor, mask: torch.Tensor, *,
    estimator: str = "log_ratio",
) -> torch.Tensor:
    r"""The token estimate of KL(pi_old || pi_theta) over the tokens given (Algorithm 1, step d.i, for the paper's
    `estimator="log_ratio"`): sum(mask * estimate) / sum(mask). See `token_kl_terms` for the estimators."""
    kl_sum, num_tokens = token_kl_terms(per_token_logps, old_per_token_logps, mask, estimator=estimator)
    return kl_sum / num_tokens.clamp(min=1.0)


def kl_hinge_penalty(kl: torch.Tensor, *, delta: float = 1e-4, beta: float = 1e3) -> torch.Tensor:
    r"""Squared-hinge penalty for the trust region KL(pi_old || pi_theta) <= delta (Eq. 8 / Eq. 11):

        penalty = beta * max(kl - delta, 0)^2

    whose gradient is G_2 = 2 * beta * [kl - delta]_+ * grad(kl). The penalty is zero, with zero gradient, while the
    constraint holds, so it never slows learning inside the trust region.

    Note: the authors' reference implementation applies half this gradient: it uses
    ``(beta * [kl - delta]_+).detach() * kl`` as the loss term. This function follows the paper's equations.
    """
    if not (math.isfinite(delta) and delta >= 0):
        raise ValueError(f"`delta` must be a finite number >= 0; got {delta!r}.")
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"`beta` must be a finite number >= 0; got {beta!r}.")
    return beta * torch.clamp(kl - delta, min=0.0) ** 2


KL_PENALTIES = ("squared_hinge", "linear")


def kl_penalty(
    kl: torch.Tensor, *, kind: str = "squared_hinge", delta: float = 1e-4, beta: float = 1e3
) -> torch.Tensor:
    """The trust region's penalty: the paper's squared hinge (`kl_hinge_penalty`), or `"linear"`, beta * KL, a fixed KL
    penalty that acts at every step whatever delta (an ablation: the classic KL-regularised objective)."""
    if kind not in KL_PENALTIES:
        raise ValueError(f"Unknown KL penalty kind={kind!r}; expected one of {KL_PENALTIES}.")
    return kl_hinge_penalty(kl, delta=delta, beta=beta) if kind == "squared_hinge" else beta * kl


def disco_loss(
    objective: torch.Tensor, kl: torch.Tensor, *, kl_delta: float, kl_beta: float, num_processes: int = 1,
    kl_micro_steps: int = 1, penalty: str = "squared_hinge",
) -> torch.Tensor:
    r"""What one micro-step on one process minimises: -J plus the trust-region penalty, scaled so that the gradients
    of an optimizer step's parts add up to the paper's (G_1 + G_2 of Algorithm 1).

        loss = num_processes * ( -objective + kl_hinge_penalty(kl) / kl_micro_steps )

    `objective` is this micro-step's share of the step's J (`discriminative_objective` with the step's full question
    count), `kl` the micro-step's KL estimate (over its tokens on every process). DDP and DeepSpeed average gradients
    over processes, hence the factor `num_processes` (the processes' parts are summed); the penalty is averaged over
    the `kl_micro_steps` micro-steps of the optimizer step that hold tokens. `penalty` is the paper's
    `"squared_hinge"` or the `"linear"` ablation (see `kl_penalty`).
    """
    value = kl_penalty(kl, kind=penalty, delta=kl_delta, beta=kl_beta)
    return num_processes * (-objective + value / max(int(kl_micro_steps), 1))
