"""vLLM's samples are not pi_old's, on vLLM's CPU backend (it serves the float32 checkpoint in bf16; the trainer keeps
float64): every run measures the mismatch (`sampling/*`), and each of TRL's four correction modes trains with DisCO's
meaning. The bounds here are [None, 1.0], so that they bite on a mismatch this small: about half the completions
(sequence ratios) or tokens (token ratios) lie above 1. In every mode, the gradient of every step on vLLM's completions
is the from-scratch reference's (tests/test_split_invariance.reference_gradient) with the weights computed from vLLM's
own sampling log-probs; in sequence_mask, the completions outside the bounds are excluded from the step.
"""

import math

import pytest
import torch
from vllm_testing import require_vllm


require_vllm()

import test_split_invariance  # noqa: E402
from test_split_invariance import assert_grads_close, completion_logps, reference_gradient  # noqa: E402
from test_vllm_colocate import hinge_rtol, step_kl  # noqa: E402
from vllm_testing import (  # noqa: E402
    cached_runs,
    load_model,
    sampling_settings,
    session_model_dir,
)


pytestmark = pytest.mark.vllm
CLIP_MAX = 1.0
# mode: (per_device, accumulation, steps_per_generation, max_steps, config). On-policy runs (one update per
# generation) measure the mismatch from their first forward pass; the others where TRL computes pi_old.
RUNS = {
    "sequence_mask": (2, 4, 8, 2, dict(score_type="log_l", disco_variant="dro", kl_delta=0.0)),  # split groups
    "sequence_truncate": (8, 1, 1, 2, dict(score_type="l_ratio", disco_variant="basic")),  # on-policy
    "token_mask": (4, 2, 2, 2, dict(score_type="log_l", disco_variant="basic")),  # on-policy, accumulation
    "token_truncate": (8, 1, 2, 2, dict(score_type="l_ratio", disco_variant="dro", kl_delta=0.0)),
}


def correction(mode: str) -> dict:
    return dict(vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_max=CLIP_MAX)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return session_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    return cached_runs(RUNS, model_dir, tmp_path_factory, extra=correction)


@pytest.fixture
def float64_reference_model(monkeypatch, model_dir):
    monkeypatch.setattr(test_split_invariance, "tiny_model_and_tokenizer", lambda: load_model(model_dir))


@pytest.mark.parametrize("mode", list(RUNS))
def test_vllm_mismatch_is_measured(runs, mode):
    result = runs(mode)
    logged = [h for h in result["log_history"] if "sampling/sampling_logp_difference/mean" in h]
    assert logged, "no sampling/* metrics"
    for h in logged:
        values = {k: v for k, v in h.items() if k.startswith("sampling/")}
        assert all(math.isfinite(v) for v in values.values()), values
        assert 0 < h["sampling/sampling_logp_difference/mean"] <= h["sampling/sampling_logp_difference/max"] < 0.1
        assert h["sampling/kl_vllm_old"] > 0
        assert h["sampling/importance_sampling_ratio/min"] <= h["sampling/importance_sampling_ratio/max"]
        assert 0 < h["sampling/frac_outside_bounds"] < 1  # bounds [None, 1]: about half the sequence ratios


@pytest.mark.parametrize("mode", list(RUNS))
def test_vllm_each_mode_trains_with_disco_meaning(runs, mode, float64_reference_model):
    result = runs(mode)
    per_device, accumulation, spg, max_steps, config = RUNS[mode]
    logs = [h for h in result["log_history"] if "disco/objective" in h]
    assert [h["step"] for h in logs] == list(range(1, max_steps + 1)) and all(math.isfinite(h["loss"]) for h in logs)
    settings = sampling_settings(**correction(mode))
    for step in range(max_steps):
        old = result["params"][step - step % (spg // accumulation)]
        kwargs = dict(accumulation=accumulation, score_type=config["score_type"], variant=config["disco_variant"],
                      delta=config.get("kl_delta", 1e-4), old_params=old)
        expected, _ = reference_gradient([result], step, sampling=settings, **kwargs)
        rtol = hinge_rtol(step_kl(result, step))
        assert_grads_close(result["grads"][step], expected, rtol=rtol)
        uncorrected, _ = reference_gradient([result], step, **kwargs)
        # the correction changed the step by far more than the comparison's tolerance
        assert max(float((expected[n] - uncorrected[n]).abs().max() / expected[n].abs().max().clamp(min=1e-30))
                   for n in expected) > 10 * rtol


def test_vllm_completions_outside_the_bounds_are_excluded(runs, model_dir):
    """sequence_mask: recomputed from vLLM's sampling log-probs and pi_old, the completions whose sequence ratio is
    above 1 are neither positive nor negative, and the objective the trainer logged is the one over the others."""
    result = runs("sequence_mask")
    model, _ = load_model(model_dir)
    model.load_state_dict(result["initial"], strict=False)  # tied: no lm_head of its own
    outside = total = 0
    for rec in result["generations"]:
        with torch.no_grad():
            old = completion_logps(model, rec)
        mask = rec["completion_mask"].double()
        log_ratio = ((old - rec["sampling_per_token_logps"].double()) * mask).sum(dim=1)
        outside += int((log_ratio > math.log(CLIP_MAX)).sum())
        total += len(log_ratio)
        break  # the first generation: pi_old is the initial model
    assert 0 < outside < total
    # the step's gradient (test above) is the reference's, which drops them; here the logged share says the same
    first = next(h for h in result["log_history"] if "sampling/frac_outside_bounds" in h)
    assert first["sampling/frac_outside_bounds"] == pytest.approx(outside / total)
