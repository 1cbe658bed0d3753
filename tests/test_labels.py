"""Which completions are positives and negatives: the paper's sets for 0/1 rewards, TRL's aggregation for any other
reward, empty completions in neither set, and loud failures when a reward gives DisCO nothing to learn."""

import asyncio
import logging
import math

import pytest
import torch
from disco_testing import (
    FixedGenerationTrainer,
    layout_config,
    parity_reward,
    prompt_dataset,
    tiny_model_and_tokenizer,
)

from disco_trl import DiscoConfig
from disco_trl.losses import completion_labels, discriminative_objective


NAN = math.nan


def test_completion_labels_threshold_and_unscorable():
    values = torch.tensor([0.0, 1.0, 0.7, NAN, 1.0])
    scorable = torch.tensor([True, True, True, True, False])
    labels = completion_labels(values, scorable, threshold=0.5)
    assert labels[:3].tolist() == [0.0, 1.0, 1.0] and torch.isnan(labels[3:]).all()


def test_empty_mask_row_is_neither_positive_nor_negative():
    """A masked completion is neither positive nor negative. DRO, tau 10, scores [-2 (positive), -3, -4, masked
    (scores 0)]: J must be 1.49, not 0.185."""
    scores = torch.tensor([-2.0, -3.0, -4.0, 0.0])
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    scorable = torch.tensor([True, True, True, False])
    labels = completion_labels(rewards, scorable, threshold=0.5)
    group = torch.zeros(4, dtype=torch.long)
    j = discriminative_objective(scores, labels, group, variant="dro", tau=10.0)
    expected = -2.0 + 3.4876  # -2 - 10 log mean(exp(-0.3), exp(-0.4))
    assert j.item() == pytest.approx(expected, abs=1e-3)
    wrong = discriminative_objective(scores, rewards, group, variant="dro", tau=10.0)  # masked row as a negative
    assert wrong.item() == pytest.approx(0.185, abs=1e-3)


class CapturingTrainer(FixedGenerationTrainer):
    """Keeps every generation batch's DisCO inputs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.batches = []

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        self.batches.append({k: output[k] for k in ("disco_labels", "advantages", "completion_mask")})
        return output


def _run(tmp_path, reward_funcs, steps=2, **overrides):
    model, tokenizer = tiny_model_and_tokenizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = layout_config(tmp_path, 8, 1, 2, max_steps=steps, **overrides)
    trainer = CapturingTrainer(model, reward_funcs, args, prompt_dataset(), processing_class=tokenizer)
    trainer.train()
    changed = any(not torch.equal(before[n], p) for n, p in trainer.model.named_parameters())
    return trainer, changed


def length_reward(completions, **kwargs):
    return [1.0 + len(c) for c in completions]  # >= 1: above 0.5 for every completion


def test_mask_truncated_completions_rows_are_unscored(tmp_path):
    trainer, _ = _run(tmp_path, parity_reward, mask_truncated_completions=True)
    batch = trainer.batches[0]
    empty = batch["completion_mask"].sum(dim=1) == 0
    assert empty.any() and (~empty).any()  # FixedGenerationTrainer truncates about half of its completions
    assert torch.isnan(batch["disco_labels"][empty]).all() and not torch.isnan(batch["disco_labels"][~empty]).any()
    logged = [e["disco/frac_unscored"] for e in trainer.state.log_history if "disco/frac_unscored" in e]
    assert logged[0] == pytest.approx(empty.float().mean().item())


def test_length_reward_trains_with_group_mean_default(tmp_path):
    trainer, changed = _run(tmp_path, length_reward)
    assert trainer.args.reward_threshold == "group_mean"
    batch = trainer.batches[0]
    # positives are exactly the completions with a positive TRL advantage (longer than their question's mean)
    assert torch.equal(batch["disco_labels"] == 1, batch["advantages"] > 0)
    assert changed


def test_numeric_threshold_that_nothing_crosses_warns_loudly(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="disco_trl.rewards.checks"):
        trainer, changed = _run(tmp_path, length_reward, steps=6, reward_threshold=0.5)
    assert not changed  # every completion is a "positive": no question has both kinds, J = 0
    warnings = [r.getMessage() for r in caplog.records if "DisCO IS LEARNING NOTHING" in r.getMessage()]
    assert len(warnings) == 1, "warn once"
    assert "reward_threshold=0.5" in warnings[0] and 'reward_threshold="group_mean"' in warnings[0]


def format_reward(completions, **kwargs):
    return [1.0 for _ in completions]  # every completion is well formatted


def test_weighted_format_plus_accuracy_trains(tmp_path):
    trainer, changed = _run(tmp_path, [format_reward, parity_reward], reward_weights=[0.5, 1.0])
    batch = trainer.batches[0]
    assert torch.equal(batch["disco_labels"] == 1, batch["advantages"] > 0) and changed
    assert (batch["disco_labels"] == 1).any() and (batch["disco_labels"] == 0).any()


async def async_parity_reward(completions, **kwargs):
    await asyncio.sleep(0)
    return parity_reward(completions)


def sometimes_none_reward(completions, **kwargs):
    return [None if i % 4 == 0 else float(i % 3 == 0) for i in range(len(completions))]


def test_sync_async_and_none_rewards(tmp_path):
    trainer, changed = _run(tmp_path, [parity_reward, async_parity_reward])
    assert changed
    trainer, changed = _run(tmp_path / "none", sometimes_none_reward)
    labels = trainer.batches[0]["disco_labels"]
    assert torch.isnan(labels[::4]).all() and changed  # every reward function returned None: unscorable


def test_normalize_then_sum_uses_trls_aggregation(tmp_path):
    trainer, changed = _run(tmp_path, [length_reward, parity_reward], multi_objective_aggregation="normalize_then_sum")
    batch = trainer.batches[0]
    assert torch.equal(batch["disco_labels"] == 1, batch["advantages"] > 0) and changed
    with pytest.raises(ValueError, match="normalize_then_sum.*group_mean"):
        DiscoConfig(output_dir=str(tmp_path), multi_objective_aggregation="normalize_then_sum", reward_threshold=0.5)


def test_binary_rewards_same_labels_either_way(tmp_path):
    by_mean, _ = _run(tmp_path / "mean", parity_reward)
    by_cut, _ = _run(tmp_path / "cut", parity_reward, reward_threshold=0.5)
    a, b = by_mean.batches[0]["disco_labels"], by_cut.batches[0]["disco_labels"]
    grouped = b.view(-1, 4)
    mixed = ((grouped == 1).any(1) & (grouped == 0).any(1)).repeat_interleave(4)
    assert torch.equal(a[mixed], b[mixed])  # the paper's sets on every question that carries signal
    objective = [run.state.log_history[0]["disco/objective"] for run in (by_mean, by_cut)]
    assert objective[0] == pytest.approx(objective[1])


@pytest.mark.parametrize("value, shown", [("0.5", 0.5), ("group_mean", "group_mean")])
def test_reward_threshold_from_the_command_line(tmp_path, value, shown):
    assert DiscoConfig(output_dir=str(tmp_path), reward_threshold=value).reward_threshold == shown


def test_reward_threshold_refuses_other_words(tmp_path):
    with pytest.raises(ValueError, match="reward_threshold='mean'.*group_mean"):
        DiscoConfig(output_dir=str(tmp_path), reward_threshold="mean")


def string_reward(completions, **kwargs):
    return "1.0"


def scalar_reward(completions, **kwargs):
    return 1.0


@pytest.mark.parametrize("func, what",
                         [(string_reward, "returned a str"), (scalar_reward, "returned a single number")])
def test_malformed_reward_output_names_the_function(tmp_path, func, what):
    with pytest.raises(TypeError, match=f"Reward function `{func.__name__}` {what}.*one float"):
        _run(tmp_path, func, steps=1)


def best_is_infinite_reward(completions, **kwargs):
    """A reward with a division by zero: the best completion of each batch scores inf."""
    rewards = parity_reward(completions)
    rewards[0] = math.inf
    return rewards


def worst_is_minus_infinite_reward(completions, **kwargs):
    rewards = parity_reward(completions)
    rewards[-1] = -math.inf
    return rewards


@pytest.mark.parametrize("func, shown", [(best_is_infinite_reward, "inf"), (worst_is_minus_infinite_reward, "-inf")])
def test_an_infinite_reward_is_refused_naming_the_function(tmp_path, func, shown):
    """Left alone, an infinite reward makes every completion of its question a negative (inf - inf is NaN)."""
    expected = rf"Reward function `{func.__name__}` returned {shown} for 1 of \d+ completions"
    with pytest.raises(ValueError, match=expected):
        _run(tmp_path, func, steps=1)
