"""disco_trl.losses against the plain loop references in tests/reference.py: values and gradients."""

import collections
import math

import pytest
import torch
from reference import ref_kl_hinge, ref_objective, ref_scores

from disco_trl import metrics
from disco_trl.losses import (
    KL_ESTIMATORS,
    disco_loss,
    discriminative_objective,
    kl_hinge_penalty,
    negative_weights,
    sequence_scores,
    token_mean_kl,
)


pytestmark = pytest.mark.usefixtures("float64_default")


def random_batch(seed, n_groups=6, group_size=5, T=7, p_pos=0.4):
    g = torch.Generator().manual_seed(seed)
    B = n_groups * group_size
    logps = (-torch.rand(B, T, generator=g) * 3).requires_grad_(True)
    old = logps.detach() + 0.3 * torch.randn(B, T, generator=g)
    lengths = torch.randint(0, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    rewards = (torch.rand(B, generator=g) < p_pos).double()
    group_ids = torch.arange(B) // group_size
    return logps, old, mask, rewards, group_ids


def grads(fn, x):
    x.grad = None
    out = fn()
    out.backward()
    return out.detach(), x.grad.clone()


@pytest.mark.parametrize("score_type", ["log_l", "l_ratio"])
@pytest.mark.parametrize("seed", range(4))
def test_sequence_scores_match_reference(score_type, seed):
    logps, old, mask, *_ = random_batch(seed)
    mask[0] = 0  # an all-padding row
    v, gv = grads(lambda: sequence_scores(logps, old, mask, score_type=score_type).pow(2).sum(), logps)
    r, gr = grads(lambda: ref_scores(logps, old, mask, score_type).pow(2).sum(), logps)
    torch.testing.assert_close(v, r)
    torch.testing.assert_close(gv, gr)
    s = sequence_scores(logps, old, mask, score_type=score_type)
    assert s[0].item() == 0.0 and torch.isfinite(s).all()


def test_l_ratio_is_one_on_policy_and_ignores_padding_values():
    logps = torch.tensor([[-1.0, -2.0, 1e4]])  # garbage where padded must not overflow
    old = torch.tensor([[-1.0, -2.0, -1e4]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert sequence_scores(logps, old, mask, score_type="l_ratio").item() == pytest.approx(1.0)
    assert sequence_scores(logps, None, mask, score_type="log_l").item() == pytest.approx(-1.5)


@pytest.mark.parametrize("variant", ["basic", "dro"])
@pytest.mark.parametrize("tau", [0.05, 1.0, 10.0, 1e3])
@pytest.mark.parametrize("seed", range(5))
def test_objective_matches_loop_reference(variant, tau, seed):
    logps, old, mask, rewards, group_ids = random_batch(seed)
    # Force the edge cases into every batch: no positives, no negatives, exactly one negative.
    rewards[0:5] = 0.0
    rewards[5:10] = 1.0
    rewards[10:15] = torch.tensor([1.0, 1.0, 0.0, 1.0, 1.0])
    rewards[15:20] = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    mask[20] = 0.0  # an all-padding completion that is still a (zero-score) member of its group

    def ours():
        s = sequence_scores(logps, old, mask, score_type="l_ratio")
        return discriminative_objective(s, rewards, group_ids, variant=variant, tau=tau)

    def ref():
        s = ref_scores(logps, old, mask, "l_ratio")
        return ref_objective(s, rewards, group_ids, variant, tau)

    v, gv = grads(ours, logps)
    r, gr = grads(ref, logps)
    torch.testing.assert_close(v, r)
    torch.testing.assert_close(gv, gr)


def test_questions_without_both_kinds_contribute_zero_but_count():
    scores = torch.tensor([3.0, 1.0, 5.0, 5.0, -2.0, -2.0], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    j = discriminative_objective(scores, rewards, groups, variant="basic")
    assert j.item() == pytest.approx((3.0 - 1.0) / 3)  # divided by all 3 questions, not the 1 mixed one
    j.backward()
    assert scores.grad.tolist() == pytest.approx([1 / 3, -1 / 3, 0, 0, 0, 0])
    # num_questions makes a part of a mini-batch add up to the whole
    half = discriminative_objective(scores[:2], rewards[:2], groups[:2], variant="basic", num_questions=3)
    assert half.item() == pytest.approx(j.item())


def test_all_batch_without_signal_is_zero_not_nan():
    scores = torch.randn(8, requires_grad=True)
    j = discriminative_objective(scores, torch.zeros(8), torch.arange(8) // 4, variant="dro", tau=1.0)
    j.backward()
    assert j.item() == 0.0 and torch.all(scores.grad == 0)


def test_dro_tends_to_basic_as_tau_grows_and_is_below_it():
    logps, old, mask, rewards, group_ids = random_batch(11)
    s = sequence_scores(logps, old, mask, score_type="log_l").detach()
    basic = discriminative_objective(s, rewards, group_ids, variant="basic").item()
    gaps = []
    for tau in [0.1, 1.0, 10.0, 100.0, 1e4, 1e6]:
        dro = discriminative_objective(s, rewards, group_ids, variant="dro", tau=tau).item()
        assert dro <= basic + 1e-9  # Jensen: tau log mean exp >= mean
        gaps.append(basic - dro)
    assert all(a >= b - 1e-12 for a, b in zip(gaps, gaps[1:]))  # the gap shrinks monotonically
    assert gaps[-1] < 1e-5


def test_small_tau_dro_focuses_on_the_hardest_negative():
    scores = torch.tensor([0.0, -1.0, -5.0, -6.0], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    j = discriminative_objective(scores, rewards, torch.zeros(4, dtype=torch.long), variant="dro", tau=0.01)
    j.backward()
    assert j.item() == pytest.approx(0.0 - (-1.0 - 0.01 * math.log(3)), abs=1e-6)  # ~ s+ - max s-
    assert scores.grad.tolist() == pytest.approx([1.0, -1.0, 0.0, 0.0], abs=1e-6)


def test_extreme_scores_are_stable():
    scores = torch.tensor([0.0, -1e4, 1e4, 3e3], requires_grad=True)
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    j = discriminative_objective(scores, rewards, torch.zeros(4, dtype=torch.long), variant="dro", tau=0.5)
    j.backward()
    assert torch.isfinite(j) and torch.isfinite(scores.grad).all()


def test_nan_rewards_are_ignored():
    scores = torch.tensor([2.0, 0.0, 100.0])
    r = torch.tensor([1.0, 0.0, float("nan")])
    g = torch.zeros(3, dtype=torch.long)
    assert discriminative_objective(scores, r, g, variant="basic").item() == pytest.approx(2.0)


@pytest.mark.parametrize("delta", [0.0, 1e-4, 0.05, 10.0])
@pytest.mark.parametrize("seed", range(3))
def test_kl_hinge_matches_reference(delta, seed):
    logps, old, mask, *_ = random_batch(seed)
    logps.grad = None
    kl = token_mean_kl(logps, old, mask)
    p = kl_hinge_penalty(kl, delta=delta, beta=1e3)
    p.backward()
    gp = logps.grad.clone()
    logps.grad = None
    rp, rkl = ref_kl_hinge(logps, old, mask, delta, 1e3)
    torch.testing.assert_close(kl, rkl)
    torch.testing.assert_close(p, rp)
    if rp.requires_grad:
        rp.backward()
        torch.testing.assert_close(gp, logps.grad)
    else:
        assert torch.all(gp == 0)
    # G_2 of Algorithm 1: 2 * beta * [kl - delta]_+ * grad(kl), grad(kl) = -mask / sum(mask)
    expected = 2e3 * max(kl.item() - delta, 0.0) * (-mask / mask.sum())
    torch.testing.assert_close(gp, expected)


def test_kl_hinge_inactive_inside_trust_region():
    logps = torch.zeros(2, 3, requires_grad=True)
    kl = token_mean_kl(logps, logps.detach() + 1e-5, torch.ones(2, 3))
    p = kl_hinge_penalty(kl, delta=1e-4, beta=1e3)
    p.backward()
    assert p.item() == 0.0 and kl.item() == pytest.approx(1e-5) and torch.all(logps.grad == 0)


@pytest.mark.parametrize(
    "call, field",
    [
        (lambda: sequence_scores(torch.zeros(2, 3), None, torch.ones(2, 3), score_type="log-l"), "score_type"),
        (lambda: sequence_scores(torch.zeros(2, 3), None, torch.ones(2, 3), score_type="l_ratio"),
         "old_per_token_logps"),
        (lambda: sequence_scores(torch.zeros(2, 3), None, torch.ones(2, 4), score_type="log_l"), "mask"),
        (lambda: discriminative_objective(torch.zeros(4), torch.zeros(4), torch.zeros(4), variant="auc"), "variant"),
        (lambda: discriminative_objective(torch.zeros(4), torch.zeros(4), torch.zeros(4), tau=0.0), "tau"),
        (lambda: discriminative_objective(torch.zeros(4), torch.zeros(4), torch.zeros(4), tau=-1.0), "tau"),
        (lambda: discriminative_objective(torch.zeros(4), torch.zeros(3), torch.zeros(4)), "labels"),
        (lambda: discriminative_objective(torch.zeros(4), torch.zeros(4), torch.zeros(5)), "group_ids"),
        (lambda: discriminative_objective(torch.zeros(4), torch.zeros(4), torch.zeros(4), num_questions=0),
         "num_questions"),
        (lambda: token_mean_kl(torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3)), "old_per_token_logps"),
        (lambda: token_mean_kl(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4)), "mask"),
        (lambda: kl_hinge_penalty(torch.tensor(0.0), delta=-1.0), "delta"),
        (lambda: kl_hinge_penalty(torch.tensor(0.0), beta=math.inf), "beta"),
    ],
)
def test_bad_arguments_are_named(call, field):
    with pytest.raises(ValueError, match=field):
        call()


# ------------------------------------------------------------------------------------------------ KL estimators
def _categorical_pair(seed: int, vocab: int = 12, shift: float = 0.05):
    gen = torch.Generator().manual_seed(seed)
    old = torch.randn(vocab, generator=gen, dtype=torch.float64).log_softmax(0)
    new = (old + shift * torch.randn(vocab, generator=gen, dtype=torch.float64)).log_softmax(0)
    return old, new


@pytest.mark.parametrize("seed", range(3))
def test_both_kl_estimators_are_unbiased_and_k3_is_never_negative_and_less_noisy(seed):
    """Tokens sampled from pi_old: each estimator's mean tends to the exact KL(pi_old || pi_theta); k3's terms are
    all >= 0 and scatter less than the log ratio's when the two policies are close (the trust region's regime)."""
    old, new = _categorical_pair(seed)
    exact = float((old.exp() * (old - new)).sum())
    tokens = torch.multinomial(old.exp(), 200_000, replacement=True, generator=torch.Generator().manual_seed(seed))
    logps, old_logps, mask = new[tokens][None, :], old[tokens][None, :], torch.ones(1, tokens.numel())
    log_ratio = new[tokens] - old[tokens]
    per_token = {"log_ratio": -log_ratio, "k3": log_ratio.exp() - 1 - log_ratio}
    for estimator in KL_ESTIMATORS:
        kl = float(token_mean_kl(logps, old_logps, mask, estimator=estimator))
        assert kl == pytest.approx(float(per_token[estimator].mean()), rel=1e-9)  # the estimator is this mean
        standard_error = float(per_token[estimator].std()) / tokens.numel() ** 0.5
        assert abs(kl - exact) < 4 * standard_error, estimator  # unbiased: within 4 standard errors
    assert bool((per_token["k3"] >= 0).all())
    assert float(per_token["k3"].std()) < 0.2 * float(per_token["log_ratio"].std())


def test_k3_ignores_padding_and_refuses_unknown_estimators():
    logps = torch.tensor([[-1.0, -2.0, 50.0]])  # the padded position holds nonsense that exp() would overflow on
    old = torch.tensor([[-1.5, -1.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    r = torch.tensor([0.5, -1.0])
    assert float(token_mean_kl(logps, old, mask, estimator="k3")) == pytest.approx(float((r.exp() - 1 - r).mean()))
    with pytest.raises(ValueError, match="estimator"):
        token_mean_kl(logps, old, mask, estimator="k2")


def test_disco_loss_parts_add_up_to_the_steps_objective_and_mean_penalty():
    """Two micro-steps on each of two processes. The objective's parts: the gradients of the four disco_loss terms,
    summed over micro-steps and averaged over processes (what DDP does), are the gradient of -J for the whole step.
    The penalty: on one process, the micro-steps' terms add up to the mean of their penalties."""
    scores = torch.randn(16, dtype=torch.float64, requires_grad=True)
    labels = (torch.arange(16) % 3 == 0).double()
    groups = torch.arange(16) // 4
    full = discriminative_objective(scores, labels, groups, variant="dro", tau=2.0)
    below = torch.tensor(5e-5, dtype=torch.float64)  # KL under delta: no penalty, only the objective acts
    per_process = []
    for process in range(2):
        loss = 0.0
        for micro in range(2):
            rows = slice(8 * process + 4 * micro, 8 * process + 4 * micro + 4)
            part = discriminative_objective(scores[rows], labels[rows], groups[rows], variant="dro", tau=2.0,
                                            num_questions=4)
            loss = loss + disco_loss(part, below, kl_delta=1e-4, kl_beta=1e3, num_processes=2, kl_micro_steps=2)
        per_process.append(torch.autograd.grad(loss, scores)[0])
    torch.testing.assert_close((per_process[0] + per_process[1]) / 2, torch.autograd.grad(-full, scores)[0])
    kls = [torch.tensor(3e-4, dtype=torch.float64), below]
    zero = torch.zeros((), dtype=torch.float64)
    total = sum(disco_loss(zero, kl, kl_delta=1e-4, kl_beta=1e3, kl_micro_steps=2) for kl in kls)
    assert float(total) == pytest.approx(1e3 * (3e-4 - 1e-4) ** 2 / 2, rel=1e-12)


def test_negative_weights_are_the_softmax_over_each_questions_negatives():
    scores = torch.tensor([-1.0, -2.0, -3.0, -4.0, -1.5, -0.5, -2.5, -3.5], dtype=torch.float64)
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 1.0, math.nan, 0.0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    for tau in (0.1, 1.0, 1e6):
        w = negative_weights(scores, labels, groups, tau=tau)
        for question in (0, 1):
            rows = (groups == question) & (labels == 0)
            expected = torch.softmax(scores[rows] / tau, dim=0)
            torch.testing.assert_close(w[rows], expected)
            assert float(w[rows].sum()) == pytest.approx(1.0)
        assert float(w[(labels != 0)].abs().sum()) == 0.0  # positives and unlabelled rows carry no weight
    equal = torch.tensor([1 / 3] * 3 + [0.5] * 2, dtype=torch.float64)
    basic = negative_weights(scores, labels, groups, tau=0.1, variant="basic")
    torch.testing.assert_close(basic[labels == 0], equal)  # DisCO-b: every negative alike, whatever tau
    assert float(basic[labels != 0].abs().sum()) == 0.0
    uniform = negative_weights(scores, labels, groups, tau=1e6)[labels == 0]
    torch.testing.assert_close(uniform, equal, rtol=1e-5, atol=1e-6)  # tau -> infinity: DRO tends to DisCO-b


def _exact_dro(scores, labels, tau):
    """One question's DRO objective in 60-digit decimals, the log-mean-exp shifted by its max (no overflow)."""
    from decimal import Decimal, localcontext

    with localcontext() as ctx:
        ctx.prec = 60
        values = [Decimal(float(s)) for s in scores]
        pos = [v for v, lab in zip(values, labels) if lab == 1]
        neg = [v for v, lab in zip(values, labels) if lab == 0]
        t = Decimal(tau)
        top = max(neg)
        lme = top + t * (sum(((v - top) / t).exp() for v in neg) / len(neg)).ln()
        return float(sum(pos) / len(pos) - lme)


@pytest.mark.parametrize("tau", [1.2e-38, 1e-30, 1e-3, 1.0, 10.0, 1e6, 1e8, 1e20, 3e38])
def test_dro_objective_is_exact_in_float32_for_every_tau_float32_holds(tau):
    """Training computes the objective in float32: its value (what disco/objective logs) is exact to float32 precision
    for a tiny or a huge tau, and the negatives' gradient is their softmax(s / tau) weights, never NaN or all zero."""
    scores = torch.tensor([-0.5, -1.0, -2.0, -0.7, -3.0, -0.1], dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([1.0, 0, 0, 1, 0, 0], dtype=torch.float32)
    group_ids = torch.zeros(6, dtype=torch.long)
    value = discriminative_objective(scores, labels, group_ids, tau=tau)
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(_exact_dro(scores.detach(), labels, tau), abs=1e-6)
    (grad,) = torch.autograd.grad(value, scores)
    weights = negative_weights(scores.detach(), labels, group_ids, tau=tau)
    torch.testing.assert_close(-grad[labels == 0], weights[labels == 0])
    assert torch.isfinite(grad).all() and grad[labels == 0].sum().item() == pytest.approx(-1.0)
    if tau < 1e-20:  # all the push-down on the hardest negative
        assert grad[5].item() == pytest.approx(-1.0)


def test_negative_weight_stats_cover_the_mixed_questions_with_two_negatives_or_more():
    """A question with one negative (ESS 1 whatever tau) and one without a positive are left out of the logged means;
    the logged count says how many questions the means cover."""
    scores = torch.tensor([-1.0, -0.1, -0.2, -0.9, -1.0, -0.3, -0.5, -0.6, -0.7, -0.8, -1.0, -1.0, -0.1, -0.4],
                          dtype=torch.float64)
    labels = torch.tensor([1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0, 0], dtype=torch.float64)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])  # 3 negatives, 1, none mixed (all wrong), 2
    tau = 0.1
    expected_ess, expected_max = 0.0, 0.0
    for negatives in (scores[1:4], scores[12:14]):
        w = torch.softmax(negatives / tau, dim=0)
        expected_ess += float(1.0 / (w**2).sum() / len(w))
        expected_max += float(w.max())
    totals = metrics.negative_weight_stats(scores, labels, groups, tau)
    assert totals.tolist() == pytest.approx([expected_ess, expected_max, 2.0], rel=1e-6)
    assert 0.5 < expected_ess < 1.9  # the DRO weights are far from equal at this tau
    basic = metrics.negative_weight_stats(scores, labels, groups, tau, variant="basic")
    assert basic.tolist() == pytest.approx([2.0, 1 / 3 + 1 / 2, 2.0])  # DisCO-b: ESS fraction 1, max weight 1/n
    logged = collections.defaultdict(list)
    metrics.log_negative_weights(logged, totals)
    assert logged["disco/neg_weight_ess"] == pytest.approx([expected_ess / 2])
    assert logged["disco/neg_weight_groups"] == [2.0]
    metrics.log_negative_weights(logged, metrics.negative_weight_stats(scores[4:6], labels[4:6], groups[4:6], tau))
    assert len(logged["disco/neg_weight_ess"]) == 1  # a single negative: nothing to report
