"""DiscoConfig.skip_uninformative_questions: the optimizer sees only questions with positives and negatives.

On the same completions (tests/disco_testing.py), with the option on: the discriminative gradient is the default run's
(full question count in the denominator), the KL term is the reference computed on the kept questions' tokens, the
kept questions are exactly the default run's mixed ones, and a step with nothing to learn makes no update. The
reference is test_split_invariance.reference_gradient (a fresh model, a plain loop over questions).
"""

import math
from pathlib import Path

import pytest
import torch
from disco_testing import (
    GROUP,
    REWARDS,
    half_informative_reward,
    layout_config,
    run_layout,
    tiny_model_and_tokenizer,
    torchrun_many,
)
from test_split_invariance import assert_grads_close, reference_gradient

from disco_trl.losses import completion_labels, discriminative_objective, mixed_questions


TESTS_DIR = Path(__file__).parent
SKIP = dict(skip_uninformative_questions=True, reward="half_informative")
HALF = dict(reward="half_informative")


def _question_rows(result, step):
    """{prompt tokens: number of completion rows} over the real (non-placeholder) rows of one optimizer step."""
    counts = {}
    for rec in (m for m in result["micro_inputs"] if m["step"] == step):
        for ids, msk, cmask in zip(rec["prompt_ids"], rec["prompt_mask"], rec["completion_mask"]):
            if cmask.sum() > 0:
                key = tuple(ids[msk.bool()].tolist())
                counts[key] = counts.get(key, 0) + 1
    return counts


def _mixed_questions_of(result, step, reward):
    """The questions of a default run's step that have both a positive and a negative completion."""
    _, tokenizer = tiny_model_and_tokenizer()
    labels = {}
    for rec in (m for m in result["micro_inputs"] if m["step"] == step):
        texts = [tokenizer.decode(ids[msk.bool()], skip_special_tokens=True)
                 for ids, msk in zip(rec["completion_ids"], rec["completion_mask"])]
        prompts = [tokenizer.decode(ids[msk.bool()], skip_special_tokens=True)
                   for ids, msk in zip(rec["prompt_ids"], rec["prompt_mask"])]
        for ids, msk, r in zip(rec["prompt_ids"], rec["prompt_mask"], REWARDS[reward](texts, prompts=prompts)):
            labels.setdefault(tuple(ids[msk.bool()].tolist()), set()).add(r > 0.5)
    return {q for q, seen in labels.items() if seen == {True, False}}


def _placeholder_micro_steps(result):
    return sum(int(m["completion_mask"].sum() == 0) for m in result["micro_inputs"])


def _assert_kept_exactly_mixed(skip, default, step, reward="half_informative"):
    kept = _question_rows(skip, step)
    assert set(kept) == _mixed_questions_of(default, step, reward)
    assert all(n == GROUP for n in kept.values())  # whole questions
    assert len(kept) > 0


def test_mixed_questions_uses_the_objectives_rule():
    nan = math.nan
    rewards = torch.tensor([1.0, 0.0, nan, 1.0, 1.0, 0.2, 0.0, nan, 0.9, nan, nan, 0.5])
    groups = torch.tensor([7, 7, 7, 3, 3, 9, 9, 1, 1, 4, 4, 2])
    scorable = torch.ones(12, dtype=torch.bool)
    labels = completion_labels(rewards, scorable, threshold=0.5)
    expected = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert torch.equal(mixed_questions(labels, groups), expected)
    low = completion_labels(rewards, scorable, threshold=0.1)
    expected_low = torch.tensor([1, 1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert torch.equal(mixed_questions(low, groups), expected_low)
    # J over the kept rows with the full question count equals J over all rows: value and gradient
    scores = torch.randn(12, dtype=torch.float64, requires_grad=True)
    full = discriminative_objective(scores, labels, groups, variant="dro", tau=1.0)
    keep = mixed_questions(labels, groups)
    kept = discriminative_objective(scores[keep], labels[keep], groups[keep], variant="dro", tau=1.0,
                                    num_questions=6)
    (g_full,) = torch.autograd.grad(full, scores)
    (g_kept,) = torch.autograd.grad(kept, scores)
    assert kept.item() == pytest.approx(full.item(), rel=1e-12) and full.item() != 0.0
    assert torch.allclose(g_full, g_kept)


def test_config_refuses_steps_straddling_generations(tmp_path):
    with pytest.raises(ValueError, match="skip_uninformative_questions.*steps_per_generation=3"):
        layout_config(tmp_path, 4, 2, 3, skip_uninformative_questions=True)


@pytest.fixture(scope="module")
def default_whole(tmp_path_factory):
    """The default objective, 16 completions (4 questions) per micro-batch, half the questions without signal."""
    return run_layout(tmp_path_factory.mktemp("default"), 16, 1, 1, **HALF)


@pytest.mark.parametrize("layout", [(16, 1, 1), (8, 2, 2), (4, 4, 4)])
def test_same_gradient_as_default_for_whole_group_layouts(tmp_path, default_whole, layout):
    skip = run_layout(tmp_path, *layout, **SKIP)
    _assert_kept_exactly_mixed(skip, default_whole, 0)
    assert len(_question_rows(skip, 0)) < len(_question_rows(default_whole, 0))  # something was dropped
    assert_grads_close(skip["grads"][0], default_whole["grads"][0])  # on-policy step: KL = 0, only J's gradient
    own, n_kept = reference_gradient([skip], 0, accumulation=layout[1], num_questions=4,
                                     reward=half_informative_reward)
    assert n_kept < 4
    assert_grads_close(skip["grads"][0], own)
    if layout == (4, 4, 4):  # fewer kept questions than micro-steps: placeholders fill the rest
        assert _placeholder_micro_steps(skip) > 0


def _off_policy_pair(tmp_path, per_device, accumulation, spg, seed, **config):
    """The default and the skipping run of two optimizer steps per generation (parity reward). The seed is one whose
    second step keeps 1 of its 2 questions and has a live hinge."""
    kwargs = dict(max_steps=2, kl_delta=0.0, learning_rate=3e-2, seed=seed, **config)
    default = run_layout(tmp_path / "default", per_device, accumulation, spg, **kwargs)
    skip = run_layout(tmp_path / "skip", per_device, accumulation, spg, skip_uninformative_questions=True, **kwargs)
    dropped = sum(len(_question_rows(default, s)) - len(_question_rows(skip, s)) for s in (0, 1))
    assert dropped > 0
    return default, skip


def _assert_off_policy_step(default, skip, accumulation, n_questions, **ref):
    """Step 1 (off-policy, live hinge): gradient = the default run's J gradient + the KL term on the kept tokens."""
    for name, p in skip["params"][0].items():  # same update in step 0, so both runs start step 1 alike
        assert torch.allclose(p, default["params"][0][name], rtol=1e-6, atol=1e-9)
    common = dict(accumulation=accumulation, delta=0.0, **ref)
    j_default, _ = reference_gradient([default], 1, parts=("j",), **common)
    kl_kept, _ = reference_gradient([skip], 1, parts=("kl",), num_questions=n_questions, **common)
    kl_all, _ = reference_gradient([default], 1, parts=("kl",), **common)
    expected = {name: j_default[name] + kl_kept[name] for name in j_default}
    assert_grads_close(skip["grads"][1], expected)
    assert any(float((kl_kept[n] - kl_all[n]).abs().max()) > 1e-3 * float(kl_all[n].abs().max()) for n in kl_all), \
        "the KL on kept tokens should differ from the KL on all tokens here"
    _assert_kept_exactly_mixed(skip, default, 1, reward="parity")
    logs = [h for h in skip["log_history"] if "disco/kl" in h]
    assert logs[1]["disco/hinge_active"] > 0.0


def test_steps_per_generation_larger_than_accumulation(tmp_path):
    default, skip = _off_policy_pair(tmp_path, 4, 2, 4, 0, score_type="l_ratio", disco_variant="dro")
    assert_grads_close(skip["grads"][0], default["grads"][0])
    _assert_off_policy_step(default, skip, 2, 2, score_type="l_ratio", variant="dro")


def test_groups_larger_than_a_micro_batch(tmp_path, default_whole):
    split = run_layout(tmp_path / "split", 2, 8, 8, **SKIP)
    assert_grads_close(split["grads"][0], default_whole["grads"][0])
    assert _placeholder_micro_steps(split) > 0
    default, skip = _off_policy_pair(tmp_path, 2, 4, 8, 0, score_type="log_l")
    assert_grads_close(skip["grads"][0], default["grads"][0])
    _assert_off_policy_step(default, skip, 4, 2, score_type="log_l")


def test_no_update_when_nothing_to_learn(tmp_path):
    """Steps 1 and 2 sample only all-negative questions: no update with the option (the optimizer state is left
    alone too); without it AdamW's momentum still moves the parameters on a zero gradient."""
    config = dict(max_steps=3, reward="first_step", learning_rate=1e-2)
    skip = run_layout(tmp_path / "skip", 8, 1, 1, skip_uninformative_questions=True, **config)
    default = run_layout(tmp_path / "default", 8, 1, 1, **config)
    assert skip["params"][0].keys() == skip["params"][2].keys()
    for name in skip["params"][1]:
        assert torch.equal(skip["params"][2][name], skip["params"][1][name])
    assert any(not torch.equal(default["params"][2][n], default["params"][1][n]) for n in default["params"][1])
    assert any(not torch.equal(skip["params"][1][n], skip["params"][0][n]) for n in skip["params"][0])
    skipped = [h["disco/skipped_update"] for h in skip["log_history"] if "disco/skipped_update" in h]
    assert skipped == [0.0, 1.0, 1.0]
    assert all("disco/kl" not in h for h in skip["log_history"][1:3] if "disco/skipped_update" in h)


# ------------------------------------------------------------------------------ 2 processes (gloo), one launch
@pytest.mark.slow
def test_two_processes(tmp_path, default_whole):
    """Processes with different numbers of kept questions, micro-steps with nothing left on one process, groups
    larger than a micro-batch, and steps with nothing to learn anywhere: no hang, the single-process gradient, and
    the KL reference over both processes' kept tokens."""
    runs = [
        ["whole", 8, 1, 1, 1, dict(skip_uninformative_questions=True, reward="half_informative")],
        # seed 1: step 1 keeps the question of one process only (the other runs a placeholder), the hinge is live
        ["hinge", 4, 1, 2, 2, dict(skip_uninformative_questions=True, seed=1, score_type="l_ratio",
                                   disco_variant="basic", kl_delta=0.0, learning_rate=3e-2)],
        ["split", 2, 4, 4, 1, dict(skip_uninformative_questions=True, reward="half_informative")],
        ["empty", 4, 2, 2, 3, dict(skip_uninformative_questions=True, reward="first_step", learning_rate=1e-2)],
    ]
    dist = torchrun_many(tmp_path, runs)
    for name in ("whole", "split"):
        for rank in (0, 1):
            assert_grads_close(dist[name][rank]["grads"][0], default_whole["grads"][0])
    hinge = dist["hinge"]
    for step in range(2):
        expected, _ = reference_gradient(hinge, step, accumulation=1, score_type="l_ratio", variant="basic",
                                         delta=0.0, num_questions=2)
        for rank in (0, 1):
            assert_grads_close(hinge[rank]["grads"][step], expected)
    assert [h["disco/hinge_active"] for h in hinge[0]["log_history"] if "disco/kl" in h] == [0.0, 1.0]
    # the launch covered a micro-step where one process had only a placeholder and the other real rows
    uneven = 0
    for runs_of_layout in dist.values():
        for a, b in zip(runs_of_layout[0]["micro_inputs"], runs_of_layout[1]["micro_inputs"]):
            uneven += int((a["completion_mask"].sum() == 0) != (b["completion_mask"].sum() == 0))
    assert uneven > 0
    empty = dist["empty"]
    for rank in (0, 1):
        for name in empty[rank]["params"][1]:
            assert torch.equal(empty[rank]["params"][2][name], empty[rank]["params"][1][name])
        skipped = [h["disco/skipped_update"] for h in empty[rank]["log_history"] if "disco/skipped_update" in h]
        assert skipped == [0.0, 1.0, 1.0]


def test_demo_passes_the_option_to_disco_only(tmp_path):
    from disco_trl.demo.experiment import RunSettings, build_args

    assert build_args(RunSettings(skip_uninformative_questions=True), str(tmp_path)).skip_uninformative_questions
    assert not build_args(RunSettings(), str(tmp_path)).skip_uninformative_questions
    with pytest.raises(ValueError, match="skip_uninformative_questions is a DisCO option"):
        RunSettings(method="grpo", skip_uninformative_questions=True).validate()
