"""One optimizer step of DiscoTrainer follows the gradient of the paper's mini-batch objective, whatever the layout.

Generations are a fixed function of (prompt, sample index) (tests/disco_testing.py), so every layout trains on the
same completions. The reference gradient is rebuilt from scratch: a fresh model, a plain forward pass, the naive
loop-over-questions objective of tests/reference.py, groups identified by prompt text and rewards recomputed from the
decoded completions; the KL hinge is evaluated per micro-step over the tokens of all processes of that micro-step.
"""

import math
from pathlib import Path

import pytest
import torch
from disco_testing import GROUP, parity_reward, run_layout, tiny_model_and_tokenizer, torchrun_many
from reference import ref_objective, ref_question_normalised, ref_sampling_weights, ref_weighted_scores


TESTS_DIR = Path(__file__).parent


TEMPERATURE = 0.6  # DiscoConfig's default; TRL scores completions under the sampling temperature


def completion_logps(model, rec):
    input_ids = torch.cat([rec["prompt_ids"], rec["completion_ids"]], dim=1)
    attention = torch.cat([rec["prompt_mask"], rec["completion_mask"]], dim=1)
    logits = model(input_ids=input_ids, attention_mask=attention).logits
    T = rec["completion_ids"].size(1)
    logits = logits[:, -T - 1 : -1] / TEMPERATURE
    return torch.log_softmax(logits.double(), dim=-1).gather(-1, rec["completion_ids"].unsqueeze(-1)).squeeze(-1)


def reference_gradient(records, step, *, accumulation, score_type="log_l", variant="dro", tau=None, delta=1e-4,
                       beta=1e3, old_params=None, num_questions=None, reward=parity_reward, parts=("j", "kl"),
                       kl_estimator="log_ratio", kl_penalty="squared_hinge", sampling=None):
    """Gradient of  -(1/Q) sum_q J_q + (1/M) sum_m beta [KL_m - delta]_+^2  for optimizer step `step` (0-based).

    Q: the step's questions (`num_questions` when given: the full count, when the records hold only kept questions);
    M: the micro-steps that hold completion tokens (all `accumulation` of them without skipping; a micro-step whose
    completions the sampling correction all dropped counts, with no penalty). Rows without completion
    tokens (skipping's placeholders) are no completion at all. `parts` selects the terms (objective "j", KL "kl").
    KL_m is the token mean of log pi_old - log pi_theta, or with `kl_estimator="k3"` of r - 1 - log r; with
    `kl_penalty="linear"` the penalty is beta * KL_m (no hinge). `sampling`: the sampling correction's settings
    (mode, clip_min, clip_max), applied to the sampler log-probs the records carry, as docs/method.md defines it
    (tests/reference.py's loops: weights per completion, normalised per question over the step)."""
    tau = tau if tau is not None else {"log_l": 10.0, "l_ratio": 1.0}[score_type]
    model, tokenizer = tiny_model_and_tokenizer()
    old_model, _ = tiny_model_and_tokenizer()
    model.load_state_dict(records[0]["params"][step], strict=False)
    old_model.load_state_dict(old_params if old_params is not None else records[0]["initial"], strict=False)
    # micro-steps of this optimizer step, per rank, in order
    per_rank = [[m for m in r["micro_inputs"] if m["step"] == step] for r in records]
    assert all(len(ms) == accumulation for ms in per_rank), [len(ms) for ms in per_rank]
    parts_of_step = [reference_rows(model, old_model, tokenizer, rank_micros[m], m, reward, score_type, sampling)
                     for m in range(accumulation) for rank_micros in per_rank]
    rows = [row for part in parts_of_step for row in part]
    if not rows:  # skipping: no question kept on any process, nothing to learn
        return {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}, 0
    # questions are identified by prompt text over the whole optimizer step (a group may span micro-steps/ranks)
    questions = sorted({row["prompt"] for row in rows})
    groups = torch.tensor([questions.index(row["prompt"]) for row in rows])
    normalised = ref_question_normalised([row["weight"] for row in rows], groups.tolist())
    scores = torch.stack([row["score"] for row in rows])
    rewards = torch.tensor([row["reward"] for row in rows], dtype=torch.float64)
    j_sum = ref_objective(scores, rewards, groups, variant, tau, num_questions=1, weights=[r["weight"] for r in rows])
    penalty, kl_micro_steps = torch.zeros((), dtype=torch.float64), len({row["micro_step"] for row in rows})
    for m in range(accumulation):
        kl_num, kl_den = torch.zeros((), dtype=torch.float64), 0.0
        for row, w in zip(rows, normalised):
            if row["micro_step"] == m and w is not None:
                for t, rho in row["kept"].items():
                    log_ratio = row["logps"][t] - row["old"][t]
                    per_token = -log_ratio if kl_estimator == "log_ratio" else log_ratio.exp() - 1 - log_ratio
                    kl_num, kl_den = kl_num + w * rho * per_token, kl_den + w
        if kl_den == 0:
            continue
        kl = kl_num / kl_den
        if kl_penalty == "linear":
            penalty = penalty + beta * kl
        elif kl.item() > delta:
            penalty = penalty + beta * (kl - delta) ** 2
    n_questions = num_questions if num_questions is not None else len(questions)
    loss = -j_sum / n_questions * ("j" in parts) + penalty / max(kl_micro_steps, 1) * ("kl" in parts)
    loss.backward()
    grads = {n: p.grad if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()
             if p.requires_grad}
    return grads, len(questions)


def reference_rows(model, old_model, tokenizer, rec, micro_step, reward, score_type, sampling):
    """One micro-batch of one process as the reference sees it: per completion with tokens, its log-probs under
    pi_theta and pi_old, its kept tokens and their ratios, its weight (None: in neither class), score, reward and
    prompt."""
    real = rec["completion_mask"].sum(dim=1) > 0
    if not real.any():
        return []
    keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "sampling_per_token_logps")
    rec = {k: rec[k][real] for k in keys if k in rec}
    mask = rec["completion_mask"].double()
    logps = completion_logps(model, rec)
    with torch.no_grad():
        old = completion_logps(old_model, rec)
    if sampling is not None:
        weights = ref_sampling_weights(old, rec["sampling_per_token_logps"], mask, **sampling)
    else:
        weights = [({t: 1.0 for t in range(mask.shape[1]) if mask[i, t] > 0}, 1.0) for i in range(mask.shape[0])]
    scores = ref_weighted_scores(logps, old, weights, score_type)
    texts = [tokenizer.decode(ids[msk.bool()], skip_special_tokens=True)
             for ids, msk in zip(rec["completion_ids"], rec["completion_mask"])]
    prompts = [tokenizer.decode(ids[msk.bool()], skip_special_tokens=True)
               for ids, msk in zip(rec["prompt_ids"], rec["prompt_mask"])]
    rewards = reward(texts, prompts=prompts)
    return [{"micro_step": micro_step, "logps": logps[i], "old": old[i], "kept": kept, "weight": weight,
             "score": scores[i], "reward": rewards[i],
             "prompt": tuple(rec["prompt_ids"][i][rec["prompt_mask"][i].bool()].tolist())}
            for i, (kept, weight) in enumerate(weights)]


def assert_grads_close(actual, expected, rtol=1e-5):
    """Per tensor: max |actual - expected| <= rtol * max |expected| (TRL scores tokens with a float32 LM head, so
    float64 models agree to ~1e-7 relative; a wrong normalisation or a missing term is off by far more)."""
    assert set(actual) == set(expected)
    total = sum(float(g.abs().sum()) for g in expected.values())
    assert total > 0, "reference gradient is zero: the test data carry no signal"
    for name in expected:
        err = float((actual[name].double() - expected[name].double()).abs().max())
        scale = float(expected[name].abs().max())
        assert err <= rtol * scale + 1e-12, f"{name}: max error {err:.3e} vs max |grad| {scale:.3e}"


# (per_device_train_batch_size, gradient_accumulation_steps, steps_per_generation): 16 completions = 4 questions
# per optimizer step in each.
WHOLE_STEP_LAYOUTS = [(16, 1, 1), (8, 2, 2), (4, 4, 4)]


@pytest.mark.parametrize("score_type,variant", [("log_l", "dro"), ("l_ratio", "basic")])
def test_same_step_gradient_for_three_layouts(tmp_path, score_type, variant):
    results = [
        run_layout(tmp_path / f"l{i}", *layout, score_type=score_type, disco_variant=variant)
        for i, layout in enumerate(WHOLE_STEP_LAYOUTS)
    ]
    reference, n_questions = reference_gradient([results[0]], 0, accumulation=1, score_type=score_type,
                                                variant=variant)
    assert n_questions == 16 // GROUP
    for result, layout in zip(results, WHOLE_STEP_LAYOUTS):
        assert len(result["grads"]) == 1, layout
        assert_grads_close(result["grads"][0], reference)
        # and the layout-specific reference (its own micro-steps) agrees too
        own, _ = reference_gradient([result], 0, accumulation=layout[1], score_type=score_type, variant=variant)
        assert_grads_close(result["grads"][0], own)


def test_steps_per_generation_larger_than_accumulation(tmp_path):
    """4 micro-batches per generation, 2 per optimizer step: the second step reuses the generation, with the old
    policy's log-probs recomputed by TRL, a live KL hinge and the L-ratio score."""
    # seed 1: the second step's KL estimate is above delta (a sampled-token estimate can be negative)
    result = run_layout(tmp_path, 4, 2, 4, max_steps=2, score_type="l_ratio", disco_variant="dro", kl_delta=0.0,
                        learning_rate=3e-2, seed=1)
    assert len(result["grads"]) == 2
    for step in range(2):
        expected, n_questions = reference_gradient([result], step, accumulation=2, score_type="l_ratio",
                                                   delta=0.0)
        assert n_questions == 2
        assert_grads_close(result["grads"][step], expected)
    logs = [h for h in result["log_history"] if "disco/kl" in h]
    assert logs[0]["disco/kl"] == 0.0 and logs[0]["disco/hinge_active"] == 0.0  # on-policy: old == current
    assert logs[1]["disco/kl"] > 0.0 and logs[1]["disco/hinge_active"] == 1.0  # off-policy: the hinge is live


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """The module's layouts on 2 processes, all in one torchrun launch (a launch's start-up, imports included, is most
    of its cost): {name: both ranks' records}."""
    # hinge, seed 1: both steps have a mixed question and the second a live hinge
    return torchrun_many(tmp_path_factory.mktemp("two-processes"), [
        ["whole", 8, 1, 1, 1, dict(score_type="log_l", disco_variant="dro")],
        ["hinge", 4, 1, 2, 2, dict(score_type="l_ratio", disco_variant="basic", kl_delta=0.0, learning_rate=3e-2,
                                   seed=1, **corrected("sequence_truncate"))],
        ["split", 2, 4, 4, 1, dict(score_type="log_l", disco_variant="dro")],
    ])


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, two_processes):
    """gloo, 2 CPU processes: the same 16 completions per step split 8 + 8 across processes (then 4 + 4 with
    accumulation) give the single-process gradient; a second step with a live hinge matches the reference where
    the KL estimate spans both processes' tokens, with the sampling correction's completion weights in it."""
    single = run_layout(tmp_path / "single", 16, 1, 1, score_type="log_l", disco_variant="dro")
    dist = two_processes["whole"]
    assert_grads_close(dist[0]["grads"][0], single["grads"][0])
    assert_grads_close(dist[1]["grads"][0], single["grads"][0])

    dist2 = two_processes["hinge"]
    for step in range(2):
        expected, n_questions = reference_gradient(dist2, step, accumulation=1, score_type="l_ratio",
                                                   variant="basic", delta=0.0,
                                                   sampling=sampling_settings("sequence_truncate"))
        assert n_questions == 2
        assert_grads_close(dist2[0]["grads"][step], expected)
    logs = [h for h in dist2[0]["log_history"] if "disco/kl" in h]
    assert logs[1]["disco/hinge_active"] == 1.0


# ------------------------------------------------------------------------------ groups larger than a micro-batch
# per_device_train_batch_size=2 < 4 completions per question: each group spans two micro-steps.


@pytest.mark.parametrize("score_type,variant", [("log_l", "dro"), ("l_ratio", "basic")])
def test_groups_larger_than_a_micro_batch(tmp_path, score_type, variant):
    whole = run_layout(tmp_path / "whole", 16, 1, 1, score_type=score_type, disco_variant=variant)
    split = run_layout(tmp_path / "split", 2, 8, 8, score_type=score_type, disco_variant=variant)
    assert_grads_close(split["grads"][0], whole["grads"][0])
    expected, n_questions = reference_gradient([split], 0, accumulation=8, score_type=score_type, variant=variant)
    assert n_questions == 4
    assert_grads_close(split["grads"][0], expected)
    def objective(run):
        return [h["disco/objective"] for h in run["log_history"] if "disco/objective" in h]

    assert objective(split) == pytest.approx(objective(whole), abs=1e-6)


@pytest.mark.parametrize("score_type", ["log_l", "l_ratio"])
def test_split_groups_off_policy_step_with_live_hinge(tmp_path, score_type):
    """Two optimizer steps per generation: the first reuses TRL's old log-probs for the look-ahead, the second
    recomputes the scores under the updated parameters; the hinge is live in the second."""
    # seed 1: the hinge is live in every micro-step of the second step (a sampled-token estimate can be negative)
    result = run_layout(tmp_path, 2, 4, 8, max_steps=2, score_type=score_type, kl_delta=0.0, learning_rate=3e-2,
                        seed=1)
    for step in range(2):
        expected, n_questions = reference_gradient([result], step, accumulation=4, score_type=score_type, delta=0.0)
        assert n_questions == 2
        assert_grads_close(result["grads"][step], expected)
    logs = [h for h in result["log_history"] if "disco/kl" in h]
    assert logs[1]["disco/hinge_active"] > 0.0  # averaged over the step's 4 micro-steps


@pytest.mark.slow
def test_split_groups_on_two_processes(tmp_path, two_processes):
    single = run_layout(tmp_path / "single", 16, 1, 1, score_type="log_l", disco_variant="dro")
    dist = two_processes["split"]
    for rank in (0, 1):
        assert_grads_close(dist[rank]["grads"][0], single["grads"][0])


def test_the_k3_kl_estimator_gives_the_reference_gradient_with_a_live_hinge(tmp_path):
    """kl_estimator="k3": the same exact step gradient, with r - 1 - log r in the hinge; never negative, so the hinge
    is live on the off-policy step whatever the sampled tokens."""
    result = run_layout(tmp_path, 4, 2, 4, max_steps=2, score_type="log_l", kl_delta=0.0, learning_rate=3e-2,
                        kl_estimator="k3")
    for step in range(2):
        expected, _ = reference_gradient([result], step, accumulation=2, delta=0.0, kl_estimator="k3")
        assert_grads_close(result["grads"][step], expected)
    logs = [h for h in result["log_history"] if "disco/kl" in h]
    assert logs[0]["disco/kl"] == 0.0 and logs[1]["disco/kl"] > 0.0 and logs[1]["disco/hinge_active"] == 1.0


def test_a_fixed_kl_penalty_gives_the_reference_gradient(tmp_path):
    """kl_penalty="linear" (the ablation): beta * KL in every micro-step, whatever delta."""
    result = run_layout(tmp_path, 4, 2, 4, max_steps=2, score_type="l_ratio", kl_delta=1.0, kl_beta=5.0,
                        learning_rate=3e-2, seed=1, kl_penalty="linear")
    for step in range(2):
        expected, _ = reference_gradient([result], step, accumulation=2, score_type="l_ratio", delta=1.0, beta=5.0,
                                         kl_penalty="linear")
        assert_grads_close(result["grads"][step], expected)
    logs = [h for h in result["log_history"] if "disco/kl" in h]
    assert logs[1]["disco/kl_penalty"] == pytest.approx(5.0 * logs[1]["disco/kl"], rel=1e-5)
    assert logs[1]["disco/kl"] != 0.0 and logs[1]["disco/hinge_active"] == 0.0  # KL far below delta=1: no hinge



# ------------------------------------------------------------------------------ samples drawn by another engine
# The generation reports sampler log-probs that are not pi_old's (disco_testing.FixedGenerationTrainer with
# sampling_spread: vLLM's role), bounds that bite: about 40% of the completions lie outside [0.6, 1.5] (sequence
# ratios), about 15% of the tokens (token ratios).
SPREAD, CLIP_MIN, CLIP_MAX = 0.4, 0.6, 1.5


def corrected(mode: str) -> dict:
    return dict(sampling_spread=SPREAD, vllm_importance_sampling_mode=mode, vllm_importance_sampling_clip_min=CLIP_MIN,
                vllm_importance_sampling_clip_max=CLIP_MAX)


def sampling_settings(mode: str) -> dict:
    return dict(mode=mode, clip_min=CLIP_MIN, clip_max=CLIP_MAX)


# whole groups in one micro-batch; groups of 4 over 2 micro-steps of 2 (accumulated whole groups: the next test)
CORRECTED_LAYOUTS = [(16, 1, 1), (2, 8, 8)]
MODES = [("sequence_mask", "log_l", "dro"), ("sequence_truncate", "l_ratio", "dro"),
         ("token_mask", "log_l", "basic"), ("token_truncate", "l_ratio", "basic")]


@pytest.mark.parametrize("mode,score_type,variant", MODES)
def test_the_corrected_step_is_the_reference_in_every_layout(tmp_path, mode, score_type, variant):
    """On-policy (one update per generation, where TRL computes no pi_old: the correction uses the first forward
    pass's log-probs, or the split-group look-ahead's), the same corrected gradient whatever the layout, equal to the
    reference's."""
    runs = [run_layout(tmp_path / f"l{i}", *layout, score_type=score_type, disco_variant=variant, **corrected(mode))
            for i, layout in enumerate(CORRECTED_LAYOUTS)]
    expected, _ = reference_gradient([runs[0]], 0, accumulation=1, score_type=score_type, variant=variant,
                                     sampling=sampling_settings(mode))
    uncorrected, _ = reference_gradient([runs[0]], 0, accumulation=1, score_type=score_type, variant=variant)
    assert max(float((expected[n] - uncorrected[n]).abs().max()) for n in expected) > 1e-3 * max(
        float(g.abs().max()) for g in expected.values())  # the correction changes the step
    for run, layout in zip(runs, CORRECTED_LAYOUTS):
        assert_grads_close(run["grads"][0], expected)
        own, _ = reference_gradient([run], 0, accumulation=layout[1], score_type=score_type, variant=variant,
                                    sampling=sampling_settings(mode))
        assert_grads_close(run["grads"][0], own)
        assert not any("old_per_token_logps" in m for m in run["micro_inputs"])  # no forward pass spent on pi_old
        logged = {k: v for h in run["log_history"] for k, v in h.items() if k.startswith("sampling/")}
        assert logged["sampling/sampling_logp_difference/mean"] > 0 and logged["sampling/kl_vllm_old"] > 0
        assert logged["sampling/frac_outside_bounds"] > 0


def test_without_the_correction_the_step_is_uncorrected_and_the_mismatch_measured(tmp_path):
    off = run_layout(tmp_path, 2, 8, 8, vllm_importance_sampling_correction=False, **corrected("sequence_mask"))
    expected, _ = reference_gradient([off], 0, accumulation=8)
    assert_grads_close(off["grads"][0], expected)
    logged = {k: v for h in off["log_history"] for k, v in h.items() if k.startswith("sampling/")}
    assert logged["sampling/frac_outside_bounds"] > 0 and logged["sampling/sampling_logp_difference/max"] > 0


@pytest.mark.parametrize("mode,score_type", [("sequence_mask", "l_ratio"), ("token_truncate", "log_l")])
@pytest.mark.parametrize("layout", [(4, 2, 4), (2, 4, 8)])
def test_the_corrected_off_policy_step_is_the_reference_with_a_live_hinge(tmp_path, mode, score_type, layout):
    """Two updates per generation (TRL computes pi_old's log-probs at generation: the mismatch is measured there, the
    weights come from them), whole and split groups; the second update is off-policy with a live hinge."""
    result = run_layout(tmp_path, *layout, max_steps=2, score_type=score_type, kl_delta=0.0, learning_rate=3e-2,
                        seed=1, **corrected(mode))
    for step in range(2):
        expected, _ = reference_gradient([result], step, accumulation=layout[1], score_type=score_type, delta=0.0,
                                         sampling=sampling_settings(mode))
        assert_grads_close(result["grads"][step], expected)
    logs = [h for h in result["log_history"] if "disco/kl" in h]
    assert logs[1]["disco/hinge_active"] > 0.0
    # measured once per generation, from the pi_old log-probs TRL computed there
    assert math.isfinite(logs[0]["sampling/importance_sampling_ratio/mean"])
    assert not any(k.startswith("sampling/") for k in logs[1])
