"""`skip_uninformative_questions` with vLLM colocated (vLLM's CPU backend): on vLLM's completions the optimizer sees
exactly the questions with both right and wrong completions, and each step's gradient is the reference's on the kept
questions (full question count in the objective's denominator, KL on the kept tokens), as tests/test_skip_uninformative
checks on fixed completions.

The reward is tests/disco_testing.half_informative_reward: odd-numbered questions score 0 whatever the completion, so
about half of each generation batch carries no signal and is dropped.
"""

import pytest
import torch
from vllm_testing import require_vllm


require_vllm()

import test_split_invariance  # noqa: E402
from disco_testing import half_informative_reward  # noqa: E402
from test_split_invariance import assert_grads_close, reference_gradient  # noqa: E402
from vllm_testing import (  # noqa: E402
    kept_rows,
    load_model,
    mixed_questions,
    run_vllm,
    sampling_settings,
    session_model_dir,
)


pytestmark = pytest.mark.vllm
GROUP = 4
PER_DEVICE, ACCUMULATION, SPG, STEPS = 4, 2, 4, 4  # 2 questions per update, 2 updates per generation


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return session_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def skip_run(model_dir, tmp_path_factory):
    return run_vllm(tmp_path_factory.mktemp("skip"), model_dir, PER_DEVICE, ACCUMULATION, SPG, max_steps=STEPS,
                    reward=half_informative_reward, skip_uninformative_questions=True, kl_delta=0.0, seed=11)


def test_vllm_skip_keeps_exactly_the_mixed_questions(skip_run, model_dir):
    _, tokenizer = load_model(model_dir)
    updates_per_generation = SPG // ACCUMULATION
    assert len(skip_run["generations"]) == STEPS // updates_per_generation
    dropped = 0
    for g, generation in enumerate(skip_run["generations"]):
        steps = range(g * updates_per_generation, (g + 1) * updates_per_generation)
        kept = kept_rows(skip_run, steps)
        assert set(kept) == mixed_questions(generation, tokenizer, half_informative_reward)
        assert all(n == GROUP for n in kept.values())  # whole questions
        dropped += len(generation["prompt_ids"]) // GROUP - len(kept)
    assert dropped > 0  # the odd-numbered questions carried nothing and were not trained on


def test_vllm_skip_gradient_matches_the_reference(skip_run, model_dir, monkeypatch):
    monkeypatch.setattr(test_split_invariance, "tiny_model_and_tokenizer", lambda: load_model(model_dir))
    informative = 0
    for step in range(STEPS):
        old = skip_run["params"][step - step % (SPG // ACCUMULATION)]
        expected, n_kept = reference_gradient([skip_run], step, accumulation=ACCUMULATION, delta=0.0, old_params=old,
                                              num_questions=PER_DEVICE * ACCUMULATION // GROUP,
                                              reward=half_informative_reward, sampling=sampling_settings())
        if n_kept == 0:  # nothing to learn in this step: no update at all (not even AdamW's momentum step)
            after = skip_run["params"][step + 1] if step + 1 < STEPS else skip_run["final"]
            assert all(torch.equal(after[n], p) for n, p in skip_run["params"][step].items())
            continue
        informative += 1
        assert_grads_close(skip_run["grads"][step], expected)
    assert informative > 0
