"""DiscoConfig.fill_informative_questions: generation rounds until each batch holds its nominal number of questions
with signal (DAPO's dynamic sampling).

On fixed completions (tests/disco_testing.py; each generation round recorded with its questions and which carry
signal): the rounds draw the stream's generation batches in TRL's sampler order, one round is exactly plain DisCO, the
batch keeps the first informative questions in generation order, a filled step's gradient is the from-scratch
reference on the kept questions under the existing layouts, a pool where a tenth of the questions can carry signal
fills within K rounds or stops at K and says so, and several processes agree on the rounds. With real sampling, a
run resumed from a checkpoint taken mid-generation ends bit-for-bit where the uninterrupted run ends.
"""

import logging
from pathlib import Path

import pytest
import torch
from disco_testing import (
    GROUP,
    RecordingTrainer,
    half_informative_reward,
    layout_config,
    prompt_dataset,
    run_layout,
    short_run_config,
    tenth_informative_reward,
    tiny_model_and_tokenizer,
    torchrun_many,
)
from test_resume import StopAt
from test_split_invariance import assert_grads_close, reference_gradient
from trl.trainer.utils import RepeatSampler

from disco_trl import DiscoTrainer
from disco_trl.checkpoints import load_rank_state
from disco_trl.filling import PromptStream, assemble, choose_questions


TESTS_DIR = Path(__file__).parent
FILL = dict(fill_informative_questions=True)
T, F = True, False


# ------------------------------------------------------------------------------------------------ the prompt stream
def test_the_stream_draws_trls_sampler_order_pass_after_pass():
    """Chunks of one generation batch's prompts, in the order TRL's RepeatSampler yields them over three epochs
    (its last incomplete chunk of each pass skipped)."""
    sampler = RepeatSampler(list(range(10)), mini_repeat_count=1, batch_size=3, shuffle=True, seed=5)
    expected = []
    for _ in range(3):
        order = list(sampler)
        expected += [order[i : i + 3] for i in range(0, len(order), 3)]
    stream = PromptStream(10, 3, seed=5)
    assert [stream.next_chunk() for _ in range(9)] == expected
    assert stream.passes == 3.0
    assert [PromptStream(7, 3, seed=None, shuffle=False).next_chunk() for _ in range(1)] == [[0, 1, 2]]


@pytest.mark.parametrize("drawn", [0, 2, 4])
def test_the_stream_continues_exactly_from_its_saved_state(tmp_path, drawn):
    """Saved with torch.save and loaded with weights_only=True (a checkpoint's plain values and tensors)."""
    stream = PromptStream(10, 3, seed=1)
    for _ in range(drawn):
        stream.next_chunk()
    torch.save(stream.state_dict(), tmp_path / "stream.pt")
    resumed = PromptStream(10, 3, seed=1)
    resumed.load_state_dict(torch.load(tmp_path / "stream.pt", weights_only=True))
    assert [resumed.next_chunk() for _ in range(5)] == [stream.next_chunk() for _ in range(5)]
    with pytest.raises(ValueError, match="resume with the same training set"):
        PromptStream(11, 3, seed=1).load_state_dict(stream.state_dict())


# ------------------------------------------------------------------------------------------ which questions, padded
def test_the_batch_keeps_the_first_informative_questions_and_completes_a_short_one():
    signals = [torch.tensor([F, T, F, F]), torch.tensor([T, T, F, T])]
    assert choose_questions(signals, 3) == [(0, 1), (1, 0), (1, 1)]  # (1, 3): surplus, dropped
    short = [torch.tensor([F, T, F, F]), torch.tensor([F, F, T, F])]
    assert choose_questions(short, 4) == [(0, 0), (0, 1), (0, 2), (1, 2)]  # 2 found, the first 2 without complete it
    assert choose_questions([torch.tensor([T, F, T])], 3) == [(0, 0), (0, 1), (0, 2)]  # one round: as generated


def _round(prompt_width, completion_width, offset):
    rows = 4  # 2 questions of 2 completions
    ids = torch.arange(rows)[:, None] + offset
    return {
        "prompt_ids": (ids * 10).expand(rows, prompt_width).clone(), "prompt_mask": torch.ones(rows, prompt_width),
        "completion_ids": (ids * 10 + 1).expand(rows, completion_width).clone(),
        "completion_mask": torch.ones(rows, completion_width),
        "old_per_token_logps": -torch.ones(rows, completion_width), "advantages": ids.flatten().float(),
        "disco_labels": torch.tensor([1.0, 0.0, 1.0, 0.0]), "disco_group_ids": torch.tensor([0, 0, 1, 1]) + offset,
        "names": [f"r{offset + i}" for i in range(rows)], "num_items_in_batch": torch.tensor(99),
    }


def test_rounds_of_different_widths_are_padded_as_trl_pads():
    rounds = [_round(3, 2, 0), _round(5, 4, 100)]
    batch = assemble(rounds, [(0, 1), (1, 0)], group_size=2, pad_token_id=7, first_group_id=6)
    assert batch["prompt_ids"].tolist() == [[7, 7, 20, 20, 20], [7, 7, 30, 30, 30], [1000] * 5, [1010] * 5]
    assert batch["prompt_mask"].tolist()[0] == [0, 0, 1, 1, 1]
    assert batch["completion_ids"].tolist() == [[21, 21, 7, 7], [31, 31, 7, 7], [1001] * 4, [1011] * 4]
    assert batch["completion_mask"].tolist()[1] == [1, 1, 0, 0]
    assert batch["old_per_token_logps"].tolist()[0] == [-1, -1, 0, 0]
    assert batch["advantages"].tolist() == [2, 3, 100, 101] and batch["names"] == ["r2", "r3", "r100", "r101"]
    assert batch["disco_group_ids"].tolist() == [6, 6, 7, 7] and batch["num_items_in_batch"].item() == 99


# --------------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("settings,message", [
    (dict(max_generation_rounds=3), "max_generation_rounds=3 is used only with fill_informative_questions=True"),
    (dict(FILL, max_steps=-1), "fill_informative_questions=True needs max_steps"),
    (dict(FILL, max_generation_rounds=0), "max_generation_rounds=0 must be a whole number >= 1"),
    (dict(FILL, remove_unused_columns=True), "Set remove_unused_columns=False"),
])
def test_bad_fill_settings_are_refused_in_one_line(tmp_path, settings, message):
    with pytest.raises(ValueError, match=message) as err:
        layout_config(tmp_path, 8, 1, 1, **{"max_steps": 1, **settings})
    assert "\n" not in str(err.value)


def test_fill_defaults_to_ten_rounds_and_refuses_a_streaming_dataset(tmp_path):
    assert layout_config(tmp_path, 8, 1, 1, **FILL).max_generation_rounds == 10
    model, tokenizer = tiny_model_and_tokenizer()
    with pytest.raises(ValueError, match="not a streaming IterableDataset"):
        DiscoTrainer(model=model, reward_funcs=half_informative_reward, args=layout_config(tmp_path, 8, 1, 1, **FILL),
                     train_dataset=prompt_dataset().to_iterable_dataset(), processing_class=tokenizer)


# ------------------------------------------------------------------------------------------ runs on fixed completions
def _kept(result, step) -> dict[int, int]:
    """{question number: rows} of the real (non-placeholder) rows one optimizer step trained on."""
    _, tokenizer = tiny_model_and_tokenizer()
    counts = {}
    for rec in (m for m in result["micro_inputs"] if m["step"] == step):
        for ids, mask, cmask in zip(rec["prompt_ids"], rec["prompt_mask"], rec["completion_mask"]):
            if cmask.sum() > 0:
                number = int(tokenizer.decode(ids[mask.bool()], skip_special_tokens=True).split(":")[0][1:])
                counts[number] = counts.get(number, 0) + 1
    return counts


def _rounds_of(result, step) -> list[dict]:
    return [r for r in result["rounds"] if r["step"] == step]


def _first_informative(rounds, target) -> list[int]:
    found = [q for r in rounds for q, signal in zip(r["questions"], r["signal"]) if signal]
    return found[:target]


def _logged(result, key) -> list[float]:
    return [h[key] for h in result["log_history"] if key in h]


def test_one_round_is_plain_disco(tmp_path):
    """max_generation_rounds=1: the stream's batches are the dataloader's, kept as generated: the same updates, bit
    for bit (two off-policy updates per generation)."""
    plain = run_layout(tmp_path / "plain", 4, 2, 4, max_steps=4, score_type="l_ratio", kl_delta=0.0, seed=1)
    one = run_layout(tmp_path / "one", 4, 2, 4, max_steps=4, score_type="l_ratio", kl_delta=0.0, seed=1,
                     max_generation_rounds=1, **FILL)
    assert len(one["params"]) == 4
    for p_plain, p_one in zip(plain["params"] + plain["grads"], one["params"] + one["grads"]):
        assert all(torch.equal(p_one[n], t) for n, t in p_plain.items())
    assert _logged(one, "disco/fill/rounds") == [1.0, 1.0]


@pytest.fixture(scope="module")
def filled_whole(tmp_path_factory):
    """16 completions (4 questions) per micro-batch, half the questions without signal, rounds until 4 have it."""
    return run_layout(tmp_path_factory.mktemp("filled"), 16, 1, 1, reward="half_informative", **FILL)


@pytest.mark.parametrize("layout", [(16, 1, 1), (8, 2, 2), (4, 4, 4), (2, 8, 8)])
def test_a_filled_step_is_the_reference_on_the_kept_questions(tmp_path, filled_whole, layout):
    run = filled_whole if layout == (16, 1, 1) else run_layout(tmp_path, *layout, reward="half_informative", **FILL)
    rounds = _rounds_of(run, 0)
    assert len(rounds) > 1 and sum(rounds[0]["signal"]) < 4  # the first round alone was short
    kept = _kept(run, 0)
    assert sorted(kept) == sorted(_first_informative(rounds, 4)) and set(kept.values()) == {GROUP}
    expected, n_questions = reference_gradient([run], 0, accumulation=layout[1], num_questions=4,
                                               reward=half_informative_reward)
    assert n_questions == 4
    assert_grads_close(run["grads"][0], expected)
    assert_grads_close(run["grads"][0], filled_whole["grads"][0])  # every layout trains on the same questions
    assert _logged(run, "disco/fill/informative_fraction") == [1.0]
    assert _logged(run, "disco/fill/completions_per_kept_question") == [len(rounds) * 16 / 4]


def test_off_policy_updates_of_a_filled_batch_with_a_live_hinge(tmp_path):
    """Two updates per filled generation batch: the second recomputes pi_old's scores; its KL is the token mean over
    the kept questions' tokens, as in a plain run."""
    run = run_layout(tmp_path, 4, 2, 4, max_steps=2, score_type="l_ratio", kl_delta=0.0, learning_rate=3e-2, seed=1,
                     reward="half_informative", **FILL)
    for step in range(2):
        expected, n_questions = reference_gradient([run], step, accumulation=2, score_type="l_ratio", delta=0.0,
                                                   reward=half_informative_reward)
        assert n_questions == 2
        assert_grads_close(run["grads"][step], expected)
    assert sorted(set(_kept(run, 0)) | set(_kept(run, 1))) == sorted(_first_informative(_rounds_of(run, 0), 4))
    assert _logged(run, "disco/hinge_active")[1] == 1.0


TENTH = dict(reward="tenth_informative", num_prompts=200)


def test_a_pool_with_a_tenth_informative_fills_within_k_rounds(tmp_path):
    """Rounds take the stream's generation batches in order until 4 questions have signal; the next batch goes on
    from there (the prompts drawn are consumed)."""
    run = run_layout(tmp_path, 16, 1, 1, max_steps=2, max_generation_rounds=30, **TENTH, **FILL)
    stream = PromptStream(200, 4, seed=7)
    rounds = [_rounds_of(run, s) for s in (0, 1)]
    assert [r["questions"] for r in rounds[0] + rounds[1]] == [stream.next_chunk() for _ in rounds[0] + rounds[1]]
    for step in (0, 1):
        assert sum(sum(r["signal"]) for r in rounds[step][:-1]) < 4 <= sum(sum(r["signal"]) for r in rounds[step])
        assert sorted(_kept(run, step)) == sorted(_first_informative(rounds[step], 4))
    assert _logged(run, "disco/fill/rounds") == [float(len(rounds[0])), float(len(rounds[1]))]
    assert len(rounds[0]) > 3 and _logged(run, "disco/fill/out_of_rounds") == [0.0, 0.0]
    assert _logged(run, "disco/fill/data_passes")[-1] == pytest.approx(stream.passes)
    expected, _ = reference_gradient([run], 0, accumulation=1, num_questions=4, reward=tenth_informative_reward)
    assert_grads_close(run["grads"][0], expected)


@pytest.mark.parametrize("skip", [False, True])
def test_a_pool_with_a_tenth_informative_stops_at_k_and_says_so(tmp_path, skip, caplog):
    """K=4 rounds find 2 (seed 7): the step trains on every informative question found, completed by the first
    questions without signal (dropped again with skip_uninformative_questions); the objective keeps |B| = 4. Three
    rounds without signal before the fourth found some are no batch without signal: no "learning nothing" alarm."""
    with caplog.at_level(logging.WARNING, logger="disco_trl.rewards.checks"):
        run = run_layout(tmp_path, 16, 1, 1, max_generation_rounds=4, skip_uninformative_questions=skip, **TENTH,
                         **FILL)
    assert not [r for r in caplog.records if "DisCO IS LEARNING NOTHING" in r.getMessage()]
    rounds = _rounds_of(run, 0)
    informative = _first_informative(rounds, 4)
    assert len(rounds) == 4 and 0 < len(informative) < 4 and not any(rounds[0]["signal"] + rounds[2]["signal"])
    assert _logged(run, "disco/fill/out_of_rounds") == [1.0]
    assert _logged(run, "disco/fill/informative_fraction") == [len(informative) / 4]
    kept = _kept(run, 0)
    assert set(informative) <= set(kept) and len(kept) == (len(informative) if skip else 4)
    expected, _ = reference_gradient([run], 0, accumulation=1, num_questions=4, reward=tenth_informative_reward)
    assert_grads_close(run["grads"][0], expected)


def test_lora_trains_only_the_adapter_on_filled_batches(tmp_path):
    from peft import LoraConfig

    model, tokenizer = tiny_model_and_tokenizer()
    trainer = RecordingTrainer(
        model=model, reward_funcs=half_informative_reward, processing_class=tokenizer, train_dataset=prompt_dataset(),
        args=layout_config(tmp_path, 8, 1, 1, max_steps=2, learning_rate=1e-2, **FILL),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed) and any("lora_B" in n for n in changed)
    assert max(h["disco/fill/rounds"] for h in trainer.state.log_history if "disco/fill/rounds" in h) > 1


# ------------------------------------------------------------------------------------- resume with real sampling
def _sampling_trainer(output_dir, callbacks=(), **overrides):
    model, tokenizer = tiny_model_and_tokenizer(dtype=torch.float32)
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, seed=5, **FILL)
    return DiscoTrainer(model=model, reward_funcs=half_informative_reward, processing_class=tokenizer,
                        args=short_run_config(output_dir, **{**settings, **overrides}),
                        train_dataset=prompt_dataset(60), callbacks=list(callbacks))


@pytest.mark.parametrize("spg,accumulation,per_device", [(2, 1, 8), (4, 2, 2)])
def test_resume_mid_generation_with_extra_rounds_matches_the_uninterrupted_run(tmp_path, spg, accumulation,
                                                                              per_device):
    overrides = dict(steps_per_generation=spg, gradient_accumulation_steps=accumulation,
                     per_device_train_batch_size=per_device)
    straight = _sampling_trainer(tmp_path / "straight", save_strategy="no", **overrides)
    straight.train()
    rounds = [h["disco/fill/rounds"] for h in straight.state.log_history if "disco/fill/rounds" in h]
    assert len(rounds) == 3 and rounds[1] > 1 and rounds[2] > 1  # extra rounds before and after the checkpoint

    _sampling_trainer(tmp_path / "resumed", callbacks=[StopAt(3)], **overrides).train()
    checkpoint = tmp_path / "resumed" / "checkpoint-3"  # mid-generation: updates 3 and 4 share a batch
    saved = load_rank_state(str(checkpoint), 0)["prompt_stream"]
    assert saved["position"] + saved["passes_begun"] > 1
    torch.save(saved, tmp_path / "stream.pt")
    torch.load(tmp_path / "stream.pt", weights_only=True)  # plain values and tensors only
    resumed = _sampling_trainer(tmp_path / "resumed", **overrides)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed.state.global_step == 6
    for (name, a), (_, b) in zip(straight.model.named_parameters(), resumed.model.named_parameters()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=name)
    later = [h["disco/fill/rounds"] for h in resumed.state.log_history if "disco/fill/rounds" in h]
    assert later == rounds  # the checkpoint's log history, then the resumed run's own


def test_turning_fill_on_or_off_on_resume_is_refused(tmp_path):
    from disco_trl.checkpoints import CheckpointError

    _sampling_trainer(tmp_path, callbacks=[StopAt(3)]).train()
    with pytest.raises(CheckpointError, match="fill_informative_questions: True -> False"):
        _sampling_trainer(tmp_path, fill_informative_questions=False).train(resume_from_checkpoint=True)


# ------------------------------------------------------------------------------ 2 processes (gloo), one launch
@pytest.mark.slow
def test_two_processes_fill_their_own_shares_and_agree_on_the_rounds(tmp_path):
    """Each process fills its 2 questions from its share of every round; both run the same rounds; the step is the
    reference over both processes' kept questions. With K=4 on the tenth pool they stop together, short."""
    runs = [
        ["half", 8, 1, 1, 2, dict(FILL, reward="half_informative", num_prompts=200)],
        ["split", 2, 4, 4, 1, dict(FILL, reward="half_informative")],
        ["short", 8, 1, 1, 1, dict(FILL, max_generation_rounds=4, skip_uninformative_questions=True, **TENTH)],
    ]
    dist = torchrun_many(tmp_path, runs)
    stream = PromptStream(200, 4, seed=7)
    assert len(_rounds_of(dist["half"][0], 0)) > 1
    for step in (0, 1):
        ranks = [_rounds_of(dist["half"][r], step) for r in (0, 1)]
        assert len(ranks[0]) == len(ranks[1])
        for chunk, mine, theirs in zip([stream.next_chunk() for _ in ranks[0]], ranks[0], ranks[1]):
            assert mine["questions"] == chunk[:2] and theirs["questions"] == chunk[2:]  # accelerate's shards
        for rank in (0, 1):
            assert sorted(_kept(dist["half"][rank], step)) == sorted(_first_informative(ranks[rank], 2))
    for name, steps in (("half", 2), ("split", 1), ("short", 1)):
        accumulation = next(r[2] for r in runs if r[0] == name)
        reward = tenth_informative_reward if name == "short" else half_informative_reward
        for step in range(steps):
            expected, _ = reference_gradient(dist[name], step, accumulation=accumulation, num_questions=4,
                                             reward=reward)
            for rank in (0, 1):
                assert_grads_close(dist[name][rank]["grads"][step], expected)
    for rank in (0, 1):
        assert _logged(dist["short"][rank], "disco/fill/out_of_rounds") == [1.0]
        assert len(_rounds_of(dist["short"][rank], 0)) == 4


def test_the_demo_and_the_registry_offer_the_option(tmp_path):
    from disco_trl.demo.experiment import RunSettings, build_args, training_questions

    args = build_args(RunSettings(method="disco-fill", max_generation_rounds=4), str(tmp_path))
    assert args.fill_informative_questions and args.max_generation_rounds == 4
    assert build_args(RunSettings(fill_informative_questions=True), str(tmp_path)).fill_informative_questions
    assert build_args(RunSettings(method="disco-skip"), str(tmp_path)).skip_uninformative_questions
    plain = build_args(RunSettings(), str(tmp_path))
    assert not plain.fill_informative_questions and plain.max_generation_rounds is None
    # a filled run draws fresh questions for every round it may generate
    assert training_questions(RunSettings(method="disco-fill")) == 10 * training_questions(RunSettings())
    with pytest.raises(ValueError, match="fill_informative_questions is a DisCO option"):
        RunSettings(method="grpo", fill_informative_questions=True).validate()


def _run(seed, points):
    """A run file's fields that the paired comparison reads: (step, seconds, completions, Pass@1) per evaluation."""
    return {"settings": {"seed": seed}, "log_history": [],
            "eval_history": [{"step": s, "train_seconds": t, "completions": c, "pass@1": p} for s, t, c, p in points]}


def test_methods_are_compared_with_the_baseline_at_equal_budgets(tmp_path):
    from disco_trl.demo.efficiency import cost, markdown, paired_at_budgets, plot_efficiency, value_at

    history = _run(0, [(0, 0, 0, 0.2), (10, 5, 100, 0.4), (20, 10, 200, 0.5)])["eval_history"]
    assert value_at(history, "completions", 150) == pytest.approx(0.45)
    assert value_at(history, "step", 0) == 0.2 and value_at(history, "train_seconds", 11) is None
    base = [_run(0, [(0, 0, 0, 0.2), (20, 10, 100, 0.3)]), _run(1, [(0, 0, 0, 0.2), (20, 12, 100, 0.35)])]
    # the filled run: twice the completions per step, the same time; better per step, the same per completion
    fill = [_run(0, [(0, 0, 0, 0.2), (10, 5, 100, 0.3), (20, 10, 200, 0.5)]),
            _run(1, [(0, 0, 0, 0.2), (10, 6, 100, 0.35), (20, 12, 200, 0.45)])]
    fill[0]["log_history"] = [{"step": 1, "disco/fill/rounds": 2.0, "disco/fill/out_of_rounds": 0.0}]
    result = paired_at_budgets({"disco": base, "disco-fill": fill}, "disco")["disco-fill"]
    assert result["step"]["diffs"] == pytest.approx([0.2, 0.1]) and result["step"]["budget"] == 20
    assert result["completions"]["diffs"] == pytest.approx([0.0, 0.0]) and result["completions"]["budget"] == 100
    assert result["train_seconds"]["diffs"] == pytest.approx([0.2, 0.1])
    costs = cost({"disco": base, "disco-fill": fill})
    assert costs["disco"]["completions_per_step"] == 5.0 and costs["disco-fill"]["completions_per_step"] == 10.0
    assert costs["disco-fill"]["rounds_per_batch"] == 2.0 and costs["disco"]["rounds_per_batch"] is None
    labels = {"disco": "DisCO", "disco-fill": "DisCO, fill"}
    text = "\n".join(markdown({"disco-fill": result}, costs, labels, "disco"))
    assert "| DisCO, fill | completions generated | 100 | +0.00 pts |" in text
    assert "| DisCO, fill | optimizer steps | 20 | +15.00 pts | [" in text
    path = plot_efficiency({"disco": base, "disco-fill": fill}, labels, str(tmp_path / "e.png"), "t")
    assert Path(path).read_bytes()[:4] == b"\x89PNG"


def test_a_runs_held_out_evaluations_record_training_time_and_completions():
    from types import SimpleNamespace

    from disco_trl.demo.experiment import HeldOutEval, RunSettings, recording_reward

    history = []
    reward = recording_reward(lambda completions, **kw: [1.0, 0.0] * (len(completions) // 2), 2, 4, history)
    reward(completions=["a"] * 8, trainer_state=SimpleNamespace(global_step=4))
    reward(completions=["a"] * 8, trainer_state=SimpleNamespace(global_step=4))  # a second round of that batch
    assert [h["step"] for h in history] == [4, 4] and [h["completions"] for h in history] == [8, 8]
    callback = HeldOutEval(None, [], None, RunSettings(), [], history)
    seconds, completions = callback.progress()
    assert completions == 16 and seconds >= 0.0
