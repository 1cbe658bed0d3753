"""`fill_informative_questions` with vLLM colocated (vLLM's CPU backend): each generation batch is filled, over extra
vLLM generation rounds, with questions that have both right and wrong completions; the optimizer trains on exactly
those, and each step's gradient is the reference's on them (tests/test_fill_informative checks the rounds themselves
on fixed completions).

The reward is tests/disco_testing.half_informative_reward: odd-numbered questions score 0 whatever the completion, so
the first round of a batch is usually short and more rounds are generated.
"""

import pytest
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
def fill_run(model_dir, tmp_path_factory):
    return run_vllm(tmp_path_factory.mktemp("fill"), model_dir, PER_DEVICE, ACCUMULATION, SPG, max_steps=STEPS,
                    reward=half_informative_reward, fill_informative_questions=True, kl_delta=0.0, seed=11,
                    num_prompts=200)  # no question drawn twice in one batch (the reference tells them by text)


def _logged(run, key):
    return [h[key] for h in run["log_history"] if key in h]


def test_vllm_fill_trains_on_a_batch_of_questions_with_signal(fill_run, model_dir):
    _, tokenizer = load_model(model_dir)

    def mixed(generation):
        return mixed_questions(generation, tokenizer, half_informative_reward)

    updates_per_generation = SPG // ACCUMULATION
    assert len(fill_run["generations"]) == STEPS // updates_per_generation
    rounds = _logged(fill_run, "disco/fill/rounds")
    assert len(rounds) == len(fill_run["generations"]) and max(rounds) > 1  # vLLM generated extra rounds
    assert _logged(fill_run, "disco/fill/out_of_rounds") == [0.0] * len(rounds)
    for g, generation in enumerate(fill_run["generations"]):
        questions = len(generation["prompt_ids"]) // GROUP
        assert len(mixed(generation)) == questions == PER_DEVICE * SPG // GROUP  # all of them
        steps = range(g * updates_per_generation, (g + 1) * updates_per_generation)
        kept = kept_rows(fill_run, steps)
        assert set(kept) == mixed(generation) and set(kept.values()) == {GROUP}


def test_vllm_fill_gradient_matches_the_reference(fill_run, model_dir, monkeypatch):
    monkeypatch.setattr(test_split_invariance, "tiny_model_and_tokenizer", lambda: load_model(model_dir))
    for step in range(STEPS):
        old = fill_run["params"][step - step % (SPG // ACCUMULATION)]
        expected, n_questions = reference_gradient([fill_run], step, accumulation=ACCUMULATION, delta=0.0,
                                                   old_params=old, reward=half_informative_reward,
                                                   sampling=sampling_settings())  # the default correction
        assert n_questions == PER_DEVICE * ACCUMULATION // GROUP
        assert_grads_close(fill_run["grads"][step], expected)
