"""The sampling correction of disco_trl.losses (completions sampled by vLLM, not by pi_old).

* Against the plain loops of tests/reference.py, written from the definitions in docs/method.md: weights, scores,
  objective, KL estimate, values and gradients, in each of TRL's four modes.
* On a synthetic categorical policy where pi_vLLM != pi_old are known exactly: the corrected objective, its gradient
  and the KL estimate converge to their values under pi_old (computed exactly, by enumerating every completion) as the
  number of samples grows; the uncorrected ones converge elsewhere. The token modes are exact where their
  approximation holds (the mismatch does not touch what decides a completion's class) and biased where it does not.
"""

import itertools
import math
import zlib
from collections import defaultdict

import pytest
import torch
from reference import (
    ref_objective,
    ref_question_normalised,
    ref_sampling_weights,
    ref_weighted_scores,
)

from disco_trl.losses import (
    IS_MODES,
    discriminative_objective,
    question_log_weights,
    sampling_correction,
    sequence_scores,
    token_kl_terms,
)
from disco_trl.metrics import log_sampling_mismatch, sampling_mismatch_stats


pytestmark = pytest.mark.usefixtures("float64_default")


def mismatched_batch(seed, n_groups=5, group_size=4, T=6, spread=0.4):
    """Log-probs of pi_theta (with grad), pi_old and the sampler, a right-padded mask, 0/1 rewards and group ids."""
    g = torch.Generator().manual_seed(seed)
    B = n_groups * group_size
    logps = (-1 - torch.rand(B, T, generator=g) * 2).requires_grad_(True)
    old = logps.detach() + 0.2 * torch.randn(B, T, generator=g)
    sampling = old + spread * (2 * torch.rand(B, T, generator=g) - 1)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).double()
    rewards = (torch.rand(B, generator=g) < 0.5).double()
    rewards[::group_size] = 1.0  # every question mixed, before the correction drops anything
    rewards[1::group_size] = 0.0
    return logps, old, sampling, mask, rewards, torch.arange(B) // group_size


BOUNDS = [(None, 3.0), (0.8, 1.25), (None, None)]


@pytest.mark.parametrize("mode", IS_MODES)
@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("score_type,variant", [("log_l", "dro"), ("l_ratio", "basic")])
def test_corrected_objective_and_kl_match_the_reference(mode, bounds, score_type, variant):
    clip_min, clip_max = bounds
    logps, old, sampling, mask, rewards, group_ids = mismatched_batch(zlib.crc32(repr((mode, bounds)).encode()) % 1000)
    sampling[3, 0] = math.nan  # a token the sampler gave no log-prob: ratio 1, as in TRL
    tau = 2.0
    correction = sampling_correction(old, sampling, mask, mode=mode, clip_min=clip_min, clip_max=clip_max)
    log_weights = question_log_weights(correction.log_weights, group_ids)
    labels = rewards.clone()

    def ours():
        scores = sequence_scores(logps, old, correction.mask, score_type=score_type,
                                 token_weights=correction.token_weights)
        j = discriminative_objective(scores, labels, group_ids, variant=variant, tau=tau, log_weights=log_weights)
        kl_sum, count = token_kl_terms(logps, old, correction.mask, token_weights=correction.token_weights,
                                       sample_weights=log_weights.exp())
        return j, kl_sum / count

    weights = ref_sampling_weights(old, sampling, mask, mode, clip_min, clip_max)
    normalised = ref_question_normalised([w for _, w in weights], group_ids.tolist())

    def reference():
        scores = ref_weighted_scores(logps, old, weights, score_type)
        j = ref_objective(scores, rewards, group_ids, variant, tau, weights=[w for _, w in weights])
        num, den = 0.0, 0.0
        for i, ((kept, _), w) in enumerate(zip(weights, normalised)):
            for t, rho in kept.items():
                num = num + w * rho * (old[i, t] - logps[i, t])
                den += w
        return j, num / den

    if bounds == (0.8, 1.25):  # the bounds bite: completions (sequence_mask) or tokens (token_mask) are dropped
        assert correction.mask.sum() < mask.sum() if mode.endswith("mask") else torch.equal(correction.mask, mask)
        dropped = sum(w is None for _, w in weights)  # completions in neither class
        assert dropped > 0 if mode == "sequence_mask" else dropped == 0 or mode == "token_mask"
    for part in (0, 1):
        logps.grad = None
        value = ours()[part]
        value.backward()
        grad = logps.grad.clone()
        logps.grad = None
        expected = reference()[part]
        expected.backward()
        torch.testing.assert_close(value.detach(), expected.detach())
        torch.testing.assert_close(grad, logps.grad)


def test_a_completion_outside_the_bounds_is_in_neither_class():
    """The only positive of a question is dropped: the question has no positive left, so it contributes 0 (a
    zero-score positive would contribute s = 0, the highest log-L, instead)."""
    old = torch.full((3, 2), -1.0)
    sampling = old.clone()
    sampling[0] = -3.0  # pi_old / pi_vLLM = e^4 on the positive: above clip_max
    mask = torch.ones(3, 2)
    correction = sampling_correction(old, sampling, mask, mode="sequence_mask", clip_max=3.0)
    assert correction.mask[0].sum() == 0 and correction.mask[1:].sum() == 4
    assert torch.isinf(correction.log_weights[0]) and (correction.log_weights[1:] == 0).all()
    logps = torch.tensor([[-0.5, -0.5], [-2.0, -2.0], [-3.0, -3.0]])
    scores = sequence_scores(logps, old, correction.mask, score_type="log_l")
    labels, group_ids = torch.tensor([1.0, 0.0, 0.0]), torch.zeros(3, dtype=torch.long)
    j = discriminative_objective(scores, labels, group_ids, variant="basic", log_weights=correction.log_weights)
    assert j.item() == 0.0
    # token_mask: a completion with every token dropped is dropped too
    correction = sampling_correction(old, sampling, mask, mode="token_mask", clip_max=3.0)
    assert correction.mask[0].sum() == 0 and torch.isinf(correction.log_weights[0])


@pytest.mark.parametrize("mode", IS_MODES)
def test_on_policy_samples_change_nothing(mode):
    logps, old, _, mask, rewards, group_ids = mismatched_batch(0)
    correction = sampling_correction(old, old.clone(), mask, mode=mode, clip_min=0.5, clip_max=2.0)
    assert torch.equal(correction.mask, mask)
    log_weights = question_log_weights(correction.log_weights, group_ids)
    assert torch.equal(log_weights, torch.zeros_like(log_weights))
    for score_type in ("log_l", "l_ratio"):
        plain = sequence_scores(logps, old, mask, score_type=score_type)
        weighted = sequence_scores(logps, old, mask, score_type=score_type, token_weights=correction.token_weights)
        torch.testing.assert_close(weighted, plain)
        for variant in ("basic", "dro"):
            torch.testing.assert_close(
                discriminative_objective(plain, rewards, group_ids, variant=variant, log_weights=log_weights),
                discriminative_objective(plain, rewards, group_ids, variant=variant))


def test_a_constant_per_question_changes_no_class_mean_and_weights_average_one():
    logps, old, sampling, mask, rewards, group_ids = mismatched_batch(1, spread=1.5)
    correction = sampling_correction(old, sampling, mask, mode="sequence_truncate", clip_max=None)
    log_weights = correction.log_weights
    shifted = log_weights + 100.0 * group_ids  # would overflow exp() in the linear domain
    scores = sequence_scores(logps, old, mask, score_type="log_l")
    for variant in ("basic", "dro"):
        torch.testing.assert_close(
            discriminative_objective(scores, rewards, group_ids, variant=variant, log_weights=shifted),
            discriminative_objective(scores, rewards, group_ids, variant=variant, log_weights=log_weights))
    normalised = question_log_weights(shifted, group_ids).exp()
    means = torch.zeros(5).index_add(0, group_ids, normalised) / 4
    torch.testing.assert_close(means, torch.ones(5))
    torch.testing.assert_close(normalised, question_log_weights(log_weights, group_ids).exp())


def test_mismatch_metrics_are_the_definitions():
    old = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0], [-2.0, -2.0, -2.0]])
    sampling = torch.tensor([[-1.5, -1.0, math.nan], [-1.0, -0.5, 0.0], [-2.0, -2.0, -2.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    metrics = defaultdict(list)
    stats = sampling_mismatch_stats(old, sampling, mask, mode="sequence_mask", clip_min=None, clip_max=1.2)
    log_sampling_mismatch(metrics, torch.stack([stats, stats]))  # two processes with the same batch
    logged = {key: values[-1] for key, values in metrics.items()}
    d = [0.5, -1.0, 0.0, -0.5]  # log pi_old - log pi_vLLM on the 4 tokens with a sampler log-prob
    assert logged["sampling/sampling_logp_difference/mean"] == pytest.approx(sum(map(abs, d)) / 4)
    assert logged["sampling/sampling_logp_difference/max"] == pytest.approx(1.0)
    assert logged["sampling/kl_vllm_old"] == pytest.approx(sum(math.expm1(x) - x for x in d) / 4)
    # sequence ratios e^{-0.5} (kept) and e^{-0.5} (kept); the all-padding row is no completion
    assert logged["sampling/importance_sampling_ratio/mean"] == pytest.approx(math.exp(-0.5))
    assert logged["sampling/frac_outside_bounds"] == 0.0
    assert logged["sampling/frac_tokens_outside_bounds"] == pytest.approx(1 / 4)  # e^{0.5} > 1.2
    stats = sampling_mismatch_stats(old, sampling, mask, mode="token_mask", clip_min=None, clip_max=1.2)
    log_sampling_mismatch(metrics, stats[None])
    logged = {key: values[-1] for key, values in metrics.items()}
    assert logged["sampling/importance_sampling_ratio/min"] == 0.0  # the dropped token, as TRL logs it
    assert logged["sampling/importance_sampling_ratio/max"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- a synthetic policy
V, T = 4, 3  # vocabulary, completion length; positions independent: pi(o) = prod_t p_t(o_t)


def policies(mismatch_positions):
    """pi_old's logits, pi_vLLM's (pi_old's tilted at `mismatch_positions`), and pi_theta's (a step away from
    pi_old, with gradient)."""
    g = torch.Generator().manual_seed(0)
    old = torch.randn(T, V, generator=g)
    tilt = torch.zeros(T, V)
    for t in mismatch_positions:
        tilt[t] = torch.tensor([0.0, -1.2, 0.6, 0.3])  # vLLM samples token 1 (which decides the class) less often
    theta = (old + 0.3 * torch.randn(T, V, generator=g)).requires_grad_(True)
    return old, old + tilt, theta


def label_of(tokens):
    return (tokens[..., 0] == 1).double()  # positive: the first token is 1


def per_token(logits, tokens):
    return torch.log_softmax(logits, dim=-1)[torch.arange(T), tokens]


def exact(old, theta, score_type, variant, tau):
    """J and the token-mean KL(pi_old || pi_theta) under pi_old, by enumerating all V^T completions."""
    tokens = torch.tensor(list(itertools.product(range(V), repeat=T)))
    logp_old = per_token(old, tokens)
    logp_theta = per_token(theta, tokens)
    p_old = logp_old.sum(-1).exp()
    values = logp_theta if score_type == "log_l" else torch.exp(logp_theta - logp_old)
    scores = values.mean(-1)
    positive = label_of(tokens) == 1
    pos = (p_old * scores)[positive].sum() / p_old[positive].sum()
    neg_p = p_old[~positive] / p_old[~positive].sum()
    neg = (neg_p * scores[~positive]).sum() if variant == "basic" else \
        tau * torch.log((neg_p * torch.exp(scores[~positive] / tau)).sum())
    kl = (p_old[:, None] * (logp_old - logp_theta)).sum() / T
    return pos - neg, kl


def estimate(tokens, vllm, old, theta, score_type, variant, tau, mode):
    """J and the KL estimate on completions sampled by pi_vLLM, corrected in `mode` (untruncated) or not (None)."""
    logp_old, logp_vllm, logp_theta = per_token(old, tokens), per_token(vllm, tokens), per_token(theta, tokens)
    mask = torch.ones_like(logp_old)
    group_ids = torch.zeros(len(tokens), dtype=torch.long)
    token_weights = log_weights = sample_weights = None
    if mode is not None:
        correction = sampling_correction(logp_old, logp_vllm, mask, mode=mode, clip_min=None, clip_max=None)
        token_weights = correction.token_weights
        log_weights = question_log_weights(correction.log_weights, group_ids)
        sample_weights = log_weights.exp()
    scores = sequence_scores(logp_theta, logp_old, mask, score_type=score_type, token_weights=token_weights)
    j = discriminative_objective(scores, label_of(tokens), group_ids, variant=variant, tau=tau,
                                 log_weights=log_weights)
    kl_sum, count = token_kl_terms(logp_theta, logp_old, mask, token_weights=token_weights,
                                   sample_weights=sample_weights)
    return j, kl_sum / count


def flat(j, kl, theta):
    """[J, KL, dJ/dtheta...]: the quantities compared."""
    (grad,) = torch.autograd.grad(j, theta)
    return torch.cat([j.detach()[None], kl.detach()[None], grad.flatten()])


def sample(logits, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.multinomial(torch.softmax(logits[t], -1), n, replacement=True, generator=g)
                        for t in range(T)], dim=1)


def errors_in_standard_errors(vllm, old, theta, score_type, variant, tau, mode, n, chunks=25):
    """|estimate - exact| / (its standard error), per quantity: the standard error from the spread of the estimates
    on `chunks` disjoint parts of the n samples (each part's estimate has `chunks` times the full one's variance)."""
    tokens = sample(vllm, n, seed=n)
    truth = flat(*exact(old, theta, score_type, variant, tau), theta)
    full = flat(*estimate(tokens, vllm, old, theta, score_type, variant, tau, mode), theta)
    parts = torch.stack([flat(*estimate(part, vllm, old, theta, score_type, variant, tau, mode), theta)
                         for part in tokens.chunk(chunks)])
    standard_error = parts.std(dim=0) / math.sqrt(chunks)
    return (full - truth).abs() / standard_error.clamp(min=1e-12), (full - truth).abs()


CASES = [("log_l", "dro", 10.0), ("l_ratio", "basic", 1.0), ("l_ratio", "dro", 0.5)]


@pytest.mark.parametrize("score_type,variant,tau", CASES)
@pytest.mark.parametrize("mode", ["sequence_truncate", "sequence_mask"])
def test_sequence_modes_converge_to_the_on_policy_objective_gradient_and_kl(score_type, variant, tau, mode):
    old, vllm, theta = policies(mismatch_positions=range(T))
    for n in (2**12, 2**16):  # within 5 standard errors, which shrink as 1/sqrt(n)
        corrected, _ = errors_in_standard_errors(vllm, old, theta, score_type, variant, tau, mode, n)
        assert corrected.max() < 5, (n, corrected)
    uncorrected, _ = errors_in_standard_errors(vllm, old, theta, score_type, variant, tau, None, n)
    assert uncorrected.max() > 10, uncorrected  # it converges too, but elsewhere (the KL, the gradient)


@pytest.mark.parametrize("score_type,variant,tau", [("log_l", "basic", 10.0), ("l_ratio", "basic", 1.0)])
def test_token_modes_are_exact_where_the_mismatch_leaves_the_classes_alone(score_type, variant, tau):
    """vLLM differs from pi_old only after the first token, which alone decides the class: the token ratios correct
    each token's term and the class means need no weight (DisCO-b: J is linear in the token terms; DRO's log-mean-exp
    is not, so there the token modes are an approximation too). Where vLLM also differs on the first token, the
    classes themselves are sampled wrongly, which only the sequence modes correct."""
    old, vllm, theta = policies(mismatch_positions=[1, 2])
    corrected, _ = errors_in_standard_errors(vllm, old, theta, score_type, variant, tau, "token_truncate", 2**16)
    assert corrected.max() < 5, corrected
    uncorrected, _ = errors_in_standard_errors(vllm, old, theta, score_type, variant, tau, None, 2**16)
    assert uncorrected.max() > 10
    old, vllm, theta = policies(mismatch_positions=range(T))
    biased, _ = errors_in_standard_errors(vllm, old, theta, score_type, variant, tau, "token_truncate", 2**16)
    assert biased.max() > 10


# ------------------------------------------------------------------------------------- top-p, top-k and the like
def test_truncated_sampling_is_named_once_with_its_reason(tmp_path):
    """vLLM reports the log-probs of its truncated (or penalised) distribution: the run is told why that biases the
    mismatch metrics and the correction; a run that samples from the full softmax is told nothing."""
    import warnings

    from disco_trl import DiscoConfig
    from disco_trl.vllm_support import truncated_sampling_settings, warn_if_truncated_sampling

    def config(**kwargs):
        return DiscoConfig(output_dir=str(tmp_path), use_cpu=True, use_vllm=True, **kwargs)

    assert truncated_sampling_settings(config()) == {}
    assert truncated_sampling_settings(config(top_k=-1, min_p=0.0)) == {}  # vLLM's and TRL's "off"
    assert truncated_sampling_settings(config(top_p=0.9, generation_kwargs={"top_k": 20})) == {"top_p": 0.9,
                                                                                             "top_k": 20}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_truncated_sampling(config())
        warn_if_truncated_sampling(config(top_p=0.9))
        warn_if_truncated_sampling(config(top_p=0.9, vllm_importance_sampling_correction=False))
        warn_if_truncated_sampling(DiscoConfig(output_dir=str(tmp_path), use_cpu=True, top_p=0.9))  # no vLLM
    messages = [str(w.message) for w in caught if str(w.message).startswith("DisCO with vLLM")]
    assert len(messages) == 2
    assert "top_p=0.9" in messages[0] and "reweights toward completions made of high-probability tokens" in messages[0]
    assert "only the metrics are affected" in messages[1]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_weighted_dro_is_exact_for_any_tau(dtype):
    """The weighted DRO term is as stable as the unweighted one: for a huge tau it is the weighted mean of the
    negatives (DisCO-b's weighted term), for a tiny one the largest negative score of positive weight."""
    scores = torch.tensor([-1.0, -2.0, -3.0, -4.0, -5.0], dtype=dtype)
    labels = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
    group_ids = torch.zeros(5, dtype=torch.long)
    log_weights = torch.tensor([0.3, -math.inf, 0.5, -0.2, 1.0], dtype=dtype)  # the highest negative: weight 0
    basic = discriminative_objective(scores, labels, group_ids, variant="basic", log_weights=log_weights)
    w = log_weights[2:].exp()
    assert basic.item() == pytest.approx(-1.0 - float((w * scores[2:]).sum() / w.sum()), rel=1e-6)
    huge = discriminative_objective(scores, labels, group_ids, variant="dro", tau=1e30, log_weights=log_weights)
    assert huge.item() == pytest.approx(basic.item(), rel=1e-6)
    tiny = discriminative_objective(scores, labels, group_ids, variant="dro", tau=1e-30, log_weights=log_weights)
    assert tiny.item() == pytest.approx(-1.0 - (-3.0), rel=1e-6)
