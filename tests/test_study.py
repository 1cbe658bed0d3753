"""`disco-trl study`: the statistics on known inputs, the pre-registered plan, the delta rule, the exact-KL diagnostic
against a brute-force computation, and a tiny run of every experiment that writes its records and resumes."""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import statistics

import pytest
import torch
from disco_testing import tiny_start
from transformers import AutoModelForCausalLM, AutoTokenizer

from disco_trl.demo import experiment, task
from disco_trl.demo import warmstart as ws
from disco_trl.demo.exact_kl import ExactKLDiscoTrainer, ExactKLGRPOTrainer, kl_terms
from disco_trl.demo.experiment import RunSettings, build_trainer, recording_reward, training_questions
from disco_trl.demo.study import plan, report, stats
from disco_trl.demo.study.cost import MEASURED, estimate_cost, run_cost
from disco_trl.demo.study.report import mechanism_checks


def length_reward(completions, solution, **kwargs):
    """A reward the untrained tiny model earns sometimes (the boxed-answer reward it never earns): mixed groups, so
    the objective has a gradient and the policy moves."""
    return [float(len(c[0]["content"]) % 3 == 0) for c in completions]


@pytest.fixture
def tiny_model(tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "reward_function", lambda: length_reward)
    return tiny_start(tmp_path / "start")


# --------------------------------------------------------------------------------------------------- statistics
def test_t_distribution_matches_the_tables():
    for df, q975, q80 in [(1, 12.706, 1.376), (2, 4.303, 1.061), (4, 2.776, 0.941), (10, 2.228, 0.879),
                          (30, 2.042, 0.854)]:
        assert stats.t_quantile(0.975, df) == pytest.approx(q975, abs=1e-3)
        assert stats.t_quantile(0.80, df) == pytest.approx(q80, abs=1e-3)
        assert stats.t_cdf(q975, df) == pytest.approx(0.975, abs=1e-4)
    assert stats.t_cdf(0.0, 3) == 0.5 and stats.t_cdf(-1.0, 3) == pytest.approx(0.19550, abs=1e-5)
    assert stats.t_cdf(1.0, 1) == pytest.approx(0.75)  # Cauchy: 1/2 + atan(1)/pi


def test_paired_differences_interval_and_p_value():
    a = {0: 0.30, 1: 0.32, 2: 0.31, 3: 0.35, 4: 0.33}
    b = {0: 0.28, 1: 0.31, 2: 0.27, 3: 0.34, 4: 0.30, 9: 0.9}  # seed 9 is not shared: ignored
    p = stats.paired(a, b)
    diffs = [0.02, 0.01, 0.04, 0.01, 0.03]
    sd = statistics.stdev(diffs)
    assert p["seeds"] == [0, 1, 2, 3, 4] and p["diffs"] == pytest.approx(diffs)
    assert p["mean"] == pytest.approx(0.022) and p["sd"] == pytest.approx(sd)
    assert p["ci95"] == pytest.approx([0.022 - 2.7764 * sd / 5 ** 0.5, 0.022 + 2.7764 * sd / 5 ** 0.5], abs=1e-5)
    t = 0.022 / (sd / 5 ** 0.5)
    assert p["t"] == pytest.approx(t) and p["p"] == pytest.approx(2 * (1 - stats.t_cdf(t, 4)))
    assert 0.005 < p["p"] < 0.02  # t = 3.88 on 4 df
    assert p["detectable"] == pytest.approx((2.7764 + 0.9410) * sd / 5 ** 0.5, rel=1e-3)
    # diffs 1, 2, 3: t = 2 / (1 / sqrt 3) on 2 df, where P(T <= t) = 1/2 + t / (2 sqrt(2 + t^2)) exactly
    small = stats.paired({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    t = 2 * 3 ** 0.5
    assert small["t"] == pytest.approx(t) and small["p"] == pytest.approx(1 - t / (2 + t * t) ** 0.5)
    assert small["p"] == pytest.approx(0.0742, abs=1e-4)
    assert math.isnan(stats.paired({0: 1.0}, {0: 0.5})["p"]) and stats.paired({0: 1.0}, {1: 1.0}) is None


def test_seeds_for_a_difference_is_the_fewest_whose_detectable_difference_is_small_enough():
    assert stats.detectable(1.0, 30) == pytest.approx((2.0452 + 0.8538) / 30 ** 0.5, rel=1e-3)
    n = stats.seeds_for(0.5, 0.98)
    assert stats.detectable(0.98, n) <= 0.5 < stats.detectable(0.98, n - 1) and n == 33
    assert stats.seeds_for(10.0, 0.0) == 2
    with pytest.raises(ValueError, match="difference > 0"):
        stats.seeds_for(0.0, 1.0)


def test_the_audit_recomputes_what_the_docs_say_about_study_v2(tmp_path):
    """The numbers docs/study.md and comparison.md quote beyond v2's tables, from the committed results.json files;
    the reports render again from them unchanged."""
    from disco_trl.demo.study import audit, markdown

    study = os.path.join(os.path.dirname(__file__), os.pardir, "docs", "study")
    text = "\n".join(audit.v2_dro(study) + audit.v2_trust_region(study) + audit.v2_long(study))
    for quoted in ("basic 1.00000 / 0.399", "tau0.1 0.88045 / 0.476", "2.36-2.52 negatives per positive",
                   "32 seeds detect 0.5 points", "paired SD 3.55-3.77, smallest difference detectable 5.90-6.27",
                   "= 0.076", "= 5.29: 70x", "CPU s per run: 335.6-369.4", "+72%", "10 seeds would detect 1.48-2.59",
                   "low at step 160, step 160 -> 640: +0.57", "low at step 160, step 160 -> 640: +1.49"):
        assert quoted in text, quoted
    for name in ("dro", "long", "dro-powered"):  # v2's A and C, v3's E
        shutil.copytree(os.path.join(study, name), tmp_path / name)
    assert markdown.main([str(tmp_path)]) == 0
    for name in ("dro", "long", "dro-powered"):
        with open(os.path.join(study, name, "results.md")) as committed:
            assert (tmp_path / name / "results.md").read_text() == committed.read()
    assert "another machine" in (tmp_path / "results.md").read_text()  # C's own warm start, disclosed in the index


def test_holm_adjusts_step_down_and_keeps_order():
    adjusted = stats.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "b": 0.06, "c": 0.06})  # 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04)
    adjusted = stats.holm({"a": 0.5, "b": 0.001, "c": float("nan")})  # a comparison without data is not counted
    assert adjusted["b"] == pytest.approx(0.002) and adjusted["a"] == pytest.approx(0.5)
    assert math.isnan(adjusted["c"])
    assert stats.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}
    # The old study's DAPO comparison: p = 0.035 alone, Holm over its 5 comparisons 5 x 0.035 when it is smallest.
    assert stats.holm({"dapo": 0.035, **{f"m{i}": 0.5 for i in range(4)}})["dapo"] == pytest.approx(0.175)


def test_one_standard_error_rule_picks_the_smallest_rate_within_one_se_of_the_best():
    values = {3e-6: [0.10, 0.11, 0.12], 1e-5: [0.14, 0.15, 0.16], 3e-5: [0.15, 0.16, 0.17], 1e-4: [0.05, 0.06, 0.07]}
    choice = stats.one_se_choice(values)
    assert choice["best"] == 3e-5 and choice["best_se"] == pytest.approx(0.01 / 3 ** 0.5)
    assert choice["chosen"] == 3e-5  # 1e-5's mean 0.15 is 0.0100 below 0.16, more than one SE (0.0058)
    values[1e-5] = [0.15, 0.155, 0.16]
    assert stats.one_se_choice(values)["chosen"] == 1e-5  # 0.005 below: within one SE, and smaller
    with pytest.raises(ValueError, match="at least 2"):
        stats.one_se_choice({1e-5: [0.1], 3e-5: [0.2, 0.3]})


def test_verdicts_follow_the_preregistered_rule():
    base = {"n": 5, "mean": 0.03, "ci95": [0.01, 0.05]}
    assert stats.verdict(base, 0.01, margin=0.015) == "shown"
    assert stats.verdict({**base, "mean": -0.03, "ci95": [-0.05, -0.01]}, 0.01, margin=0.015) == "reversed"
    assert stats.verdict({**base, "mean": 0.0, "ci95": [-0.01, 0.01]}, 0.4, margin=0.015) == "not shown"
    assert stats.verdict({**base, "mean": 0.01, "ci95": [-0.01, 0.03]}, 0.2, margin=0.015) == "inconclusive"
    assert stats.verdict({**base, "ci95": [0.01, 0.05]}, 0.06, margin=0.015) == "inconclusive"  # Holm > 0.05
    assert stats.verdict(None, float("nan"), margin=0.015) == "inconclusive"


def test_descriptive_checks_follow_the_preregistered_thresholds():
    scale = plan.Scale()
    dro = {"tau0.1": {"neg_weight_ess": 0.87}, "tau1": {"neg_weight_ess": 0.99}, "basic": {"neg_weight_ess": 0.99}}
    assert mechanism_checks(plan.experiment("dro", scale), dro) == {
        "tau0.1": {"neg_weight_ess": 0.87, "neg_weight_groups": None, "active": True},
        "tau1": {"neg_weight_ess": 0.99, "neg_weight_groups": None, "active": False}}
    tr = {"hinge-3e-05": {"kl": {"frac_hinge_decision_wrong": 0.4}},
          "hinge-0.0001": {"kl": {"frac_hinge_decision_wrong": 0.1}}, "off-3e-05": {"kl": {}}}
    checks = mechanism_checks(plan.experiment("trust-region", scale), tr)
    assert {k: v["noise_driven"] for k, v in checks.items()} == {"hinge-3e-05": True, "hinge-0.0001": False}
    long = {name: {"runs": [{"entropy": None}, {"entropy": None}]} for name in ("disco", "disco-b", "dapo")}
    long["grpo"] = {"runs": [{"entropy": None}, {"entropy": "collapses"}], "clip_ratio_last_quarter": 0.0015}
    checks = mechanism_checks(plan.experiment("long", scale), long)
    assert checks["steadier_entropy"] is True and checks["clipping_binds"] is False
    long["dapo"]["clip_ratio_last_quarter"] = 0.0025
    assert mechanism_checks(plan.experiment("long", scale), long)["clipping_binds"] is True
    long["disco-b"]["runs"][0]["entropy"] = "explodes"
    assert mechanism_checks(plan.experiment("long", scale), long)["steadier_entropy"] is False


def test_the_dro_weights_of_a_run_weigh_each_group_with_two_negatives_once():
    log = [{"step": 1, "disco/neg_weight_ess": 0.5, "disco/neg_weight_max": 0.9, "disco/neg_weight_groups": 1.0},
           {"step": 2, "disco/neg_weight_ess": 0.8, "disco/neg_weight_max": 0.6, "disco/neg_weight_groups": 3.0},
           {"step": 3}]  # a step without a group of two negatives logs nothing
    out = report.negative_weights({"log_history": log})
    assert out == pytest.approx({"neg_weight_groups": 4.0, "neg_weight_ess": (0.5 + 3 * 0.8) / 4,
                                 "neg_weight_max": (0.9 + 3 * 0.6) / 4})
    older = [{k: v for k, v in e.items() if k != "disco/neg_weight_groups"} for e in log]  # runs before the count
    assert report.negative_weights({"log_history": older}) == pytest.approx(
        {"neg_weight_groups": None, "neg_weight_ess": 0.65, "neg_weight_max": 0.75})


def test_an_experiments_cost_counts_runs_starts_calibration_and_its_wall_time():
    runs = [{"cpu_seconds": 100.0, "started_at": 1000.0, "finished_at": 1110.0, "process": 7, "torch_threads": 1,
             "load_average": 2.1},
            {"cpu_seconds": 90.0, "started_at": 1005.0, "finished_at": 1120.0, "process": 8, "torch_threads": 1,
             "load_average": 1.9}]
    calibration = {"delta": 3e-5, "cpu_seconds": 50.0, "started_at": 940.0, "finished_at": 995.0}
    cost = report.cost_summary(runs, calibration, [{"cpu_seconds": 12.5}, {"cpu_seconds": 12.0}])
    assert cost == {"runs_cpu_seconds": 190.0, "starts": 2, "starts_cpu_seconds": 24.5,
                    "calibration_cpu_seconds": 50.0, "wall_seconds": 180.0, "processes": 2, "torch_threads": [1],
                    "load_average_max": 2.1}
    assert report.cost_summary([{"cpu_seconds": 5.0}], None, [])["wall_seconds"] is None  # older runs: no times


def test_the_powered_dro_experiment_checks_that_its_groups_were_heavily_imbalanced():
    exp = plan.experiment("dro-powered", plan.Scale())
    arms = {"tau0.03": {"neg_weight_ess": 0.62, "neg_weight_groups": 310.0, "neg_per_pos_mixed_first": 4.6},
            "basic": {"neg_weight_ess": 1.0, "neg_weight_groups": 305.0, "neg_per_pos_mixed_first": 4.4}}
    checks = mechanism_checks(exp, arms)
    assert checks["tau0.03"] == {"neg_weight_ess": 0.62, "neg_weight_groups": 310.0, "active": True}
    assert checks["imbalance"]["heavy"] is True and "basic" not in checks
    arms["basic"]["neg_per_pos_mixed_first"] = 3.9
    assert mechanism_checks(exp, arms)["imbalance"]["heavy"] is False


# --------------------------------------------------------------------------------------------------- the plan
def test_the_preregistered_plan():
    scale = plan.Scale()
    delta = 2.5e-5
    dro = plan.jobs(plan.experiment("dro", scale), scale, delta)
    assert len(dro) == 30 and {s.seed for s, _ in dro} == {0, 1, 2, 3, 4}
    assert sorted({s.tau for s, _ in dro if s.method == "disco"}) == [0.03, 0.1, 0.3, 1.0, 10.0]
    assert {s.method for s, _ in dro} == {"disco", "disco-b"}
    tr = plan.jobs(plan.experiment("trust-region", scale), scale, delta)
    assert len(tr) == 30 and {s.learning_rate for s, _ in tr} == {3e-5, 1e-4}
    for s, tag in tr:
        kind = tag.split("-")[2]
        assert (s.kl_penalty, s.kl_beta, s.kl_delta) == {"hinge": ("squared_hinge", 1e3, delta),
                                                         "off": ("squared_hinge", 0.0, 0.0),
                                                         "fixed": ("linear", 2 * 1e3 * delta, delta)}[kind]
    long = plan.jobs(plan.experiment("long", scale), scale, delta)
    assert len(long) == 12 and {s.method for s, _ in long} == {"disco", "disco-b", "grpo", "dapo"}
    assert {(s.max_steps, s.eval_every, s.train_pool, s.seed < 3) for s, _ in long} == {(640, 160, 256, True)}
    powered = plan.jobs(plan.experiment("dro-powered", scale), scale, delta)
    assert len(powered) == 64 and {s.seed for s, _ in powered} == set(range(32))
    assert {(s.method, s.tau) for s, _ in powered} == {("disco", 0.03), ("disco-b", None)}
    assert {(s.max_steps, s.learning_rate, s.kl_delta, tuple(s.train_difficulties), tuple(s.eval_difficulties))
            for s, _ in powered} == {(320, 1e-5, delta, (4,), (4,))}
    assert plan.experiment("dro-powered", scale).margin == 0.006
    cal, tag = plan.calibration_job(plan.experiment("dro-powered", scale), scale)
    assert tag == "calibration-ops4" and tuple(cal.train_difficulties) == tuple(cal.eval_difficulties) == (4,)
    assert plan.calibration_job(plan.experiment("dro", scale), scale)[1] == "calibration"
    every = [s for s, _ in dro + tr + long]
    assert {(s.updates_per_generation, s.questions_per_generation, s.eval_questions, s.eval_samples, s.exact_kl,
             s.eval_split, tuple(s.train_difficulties)) for s in every} == {(8, 16, 100, 32, True, "test", (2, 3, 4))}
    assert {s.learning_rate for s, _ in dro} == {plan.SHARED_LR} == {1e-5}
    assert {s.learning_rate for s, _ in long} == {plan.LONG_LR} == {3e-5}  # one rate for the four methods
    assert {s.max_steps for s, _ in dro + tr} == {160}
    cal = plan.calibration_settings(scale)
    assert (cal.method, cal.seed, cal.kl_beta, cal.learning_rate, cal.updates_per_generation) == \
        ("disco", 100, 0.0, 1e-5, 8)
    names = {e: [(c.name, c.primary) for c in plan.experiment(e, scale).comparisons] for e in plan.EXPERIMENTS}
    assert [n for n, primary in names["dro"] if primary] == ["tau 1 - DisCO-b", "tau 0.3 - DisCO-b",
                                                              "tau 0.1 - DisCO-b", "tau 0.03 - DisCO-b"]
    assert len([n for n, primary in names["trust-region"] if primary]) == 4
    assert [n for n, _ in names["long"]] == ["DisCO - GRPO", "DisCO - DAPO", "DisCO - DisCO-b"]
    assert names["dro-powered"] == [("tau 0.03 - DisCO-b", True)]
    with pytest.raises(ValueError, match="needs delta"):
        plan.jobs(plan.experiment("dro", scale), scale, None)
    assert len(plan.jobs(plan.experiment("trust-region", scale), scale, None, with_delta=False)) == 10


def test_delta_is_the_median_exact_kl_after_each_batch_first_update():
    log = []
    for step in range(1, 17):  # 2 generation batches of 8 updates
        index = (step - 1) % 8
        log.append({"step": step, "demo/kl_exact": 0.0 if index == 0 else 1e-5 * index,
                    "disco/kl": 0.0 if index == 0 else -1e-5})
    run = {"settings": {"updates_per_generation": 8, "learning_rate": 1e-5, "seed": 100}, "log_history": log}
    out = plan.delta_from_run(run)
    assert out["updates"] == 14 and out["median_exact_kl"] == pytest.approx(4e-5) and out["delta"] == 4e-5
    assert out["median_estimate"] == -1e-5
    log[1]["demo/kl_exact"] = 1.23456e-5
    assert plan.delta_from_run(run)["delta"] == 4e-5  # the median, not the mean
    with pytest.raises(ValueError, match="no update"):
        plan.delta_from_run({**run, "log_history": [{**e, "demo/kl_exact": 0.0} for e in log]})


def test_cost_estimate_counts_every_run_once():
    scale = plan.Scale()
    settings = plan.arm_settings(plan.experiment("long", scale), plan.experiment("long", scale).arm("grpo"), 0,
                                 scale, None)
    expected = MEASURED["per_run"] + 640 * MEASURED["per_step"]["grpo-ref"] + 4 * 3200 * MEASURED["per_eval_sample"]
    assert run_cost(settings, MEASURED) == pytest.approx(expected)
    table = estimate_cost(list(plan.EXPERIMENTS), scale)
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:-1]}
    assert [rows[name][1] for name in plan.EXPERIMENTS] == ["30", "30", "12", "64"]
    assert (rows["calibration"][1], rows["starts"][1]) == ("2", "37")  # per mix: 5 seeds of A-C, 32 of E


def test_a_fixed_pool_is_drawn_once_and_repeated(tiny_model, tmp_path):
    settings = RunSettings(method="disco", max_steps=32, questions_per_generation=8, updates_per_generation=8,
                           train_pool=16, train_difficulties=(2, 3, 4), eval_difficulties=(2, 3, 4), disable_tqdm=True)
    assert training_questions(settings) == 16
    assert training_questions(RunSettings(max_steps=160)) == (160 // 4 + 1) * 16  # fresh questions
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = build_trainer(settings, tiny_model, str(tmp_path / "t"), tokenizer, length_reward, [], [], [])
    prompts = [row["prompt"][0]["content"] for row in trainer.train_dataset]
    assert len(prompts) == len(set(prompts)) == 16
    with pytest.raises(ValueError, match="multiple of questions_per_generation"):
        RunSettings(questions_per_generation=16, updates_per_generation=8, train_pool=20).validate()
    with pytest.raises(ValueError, match="is a DisCO option"):
        RunSettings(method="grpo", kl_penalty="linear").validate()


# --------------------------------------------------------------------------------------------------- exact KL
@torch.no_grad()
def brute_force_kl(old_model, new_model, inputs, temperature: float) -> float:
    """KL(pi_old || pi_theta) at every completion token, one unpadded prefix at a time, summed over the vocabulary."""
    total, tokens = 0.0, 0
    for row in range(inputs["completion_ids"].size(0)):
        prompt = inputs["prompt_ids"][row][inputs["prompt_mask"][row].bool()]
        completion = inputs["completion_ids"][row]
        for t in range(int(inputs["completion_mask"][row].sum())):
            prefix = torch.cat([prompt, completion[:t]]).unsqueeze(0)
            old = torch.log_softmax(old_model(prefix).logits[0, -1].double() / temperature, dim=-1)
            new = torch.log_softmax(new_model(prefix).logits[0, -1].double() / temperature, dim=-1)
            total += float((old.exp() * (old - new)).sum().detach())
            tokens += 1
    return total / tokens


def test_exact_kl_is_nonnegative_zero_after_generation_and_matches_brute_force(tiny_model, tmp_path):
    settings = RunSettings(method="disco", max_steps=16, learning_rate=3e-3, questions_per_generation=8,
                           updates_per_generation=8, max_completion_length=12, exact_kl=True, disable_tqdm=True,
                           train_difficulties=(2, 3, 4), eval_difficulties=(2, 3, 4), kl_beta=0.0)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    trainer = build_trainer(settings, tiny_model, str(tmp_path / "t"), tokenizer, length_reward, [], [], [])
    assert isinstance(trainer, ExactKLDiscoTrainer)
    recorded, generate, compute = {}, trainer._generate_and_score_completions, trainer._compute_loss

    def snapshot_generation(inputs):
        recorded.setdefault("old", copy.deepcopy(trainer.model.state_dict()))  # pi_old of the first batch
        return generate(inputs)

    def snapshot_micro_step(model, inputs):
        if trainer._step == 5:  # the 6th update of the first generation batch
            recorded["inputs"] = {k: v.clone() for k, v in inputs.items() if isinstance(v, torch.Tensor)}
            recorded["new"] = copy.deepcopy(trainer.model.state_dict())
        return compute(model, inputs)

    trainer._generate_and_score_completions, trainer._compute_loss = snapshot_generation, snapshot_micro_step
    trainer.train()
    history = trainer.exact_kl_history
    assert [h["micro_step"] for h in history] == list(range(16))
    assert all(h["demo/kl_exact"] >= 0.0 for h in history)
    assert all(abs(h["demo/kl_exact"]) < 1e-9 and abs(h["demo/kl_log_ratio"]) < 1e-6 for h in history[::8])
    assert max(h["demo/kl_exact"] for h in history) > 1e-6  # the policy moved within each batch
    old, new = (AutoModelForCausalLM.from_pretrained(tiny_model) for _ in range(2))
    old.load_state_dict(recorded["old"])
    new.load_state_dict(recorded["new"])
    expected = brute_force_kl(old, new, recorded["inputs"], settings.temperature)
    assert expected > 1e-6 and history[5]["demo/kl_exact"] == pytest.approx(expected, rel=1e-3)
    # the paper's estimate on the same tokens is what DisCO logged as disco/kl
    logged = [e for e in trainer.state.log_history if "disco/kl" in e]
    assert [e["demo/kl_log_ratio"] for e in logged] == pytest.approx([e["disco/kl"] for e in logged], abs=1e-6)


def test_kl_terms_on_known_distributions():
    old = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [0.9, 0.05, 0.05]]]))
    new = torch.log(torch.tensor([[[0.25, 0.5, 0.25], [0.9, 0.05, 0.05]]]))
    ids, mask = torch.tensor([[1, 0]]), torch.tensor([[1.0, 1.0]])
    out = kl_terms(old, new, ids, mask)
    kl_first = 0.5 * math.log(2) + 0.25 * math.log(0.5)
    assert out["demo/kl_exact"] == pytest.approx(kl_first / 2)
    assert out["demo/kl_log_ratio"] == pytest.approx((math.log(0.25) - math.log(0.5)) / 2)  # token 1: 0.25 -> 0.5
    assert out["demo/kl_k3"] == pytest.approx((2 - 1 - math.log(2)) / 2)
    assert kl_terms(old, new, ids, torch.tensor([[0.0, 1.0]]))["demo/kl_exact"] == pytest.approx(0.0, abs=1e-12)


def test_the_grpo_family_gets_the_same_diagnostic(tiny_model, tmp_path):
    settings = RunSettings(method="dapo", max_steps=8, learning_rate=3e-3, questions_per_generation=8,
                           updates_per_generation=8, max_completion_length=12, exact_kl=True, disable_tqdm=True,
                           train_difficulties=(2, 3, 4), eval_difficulties=(2, 3, 4))
    trainer = build_trainer(settings, tiny_model, str(tmp_path / "t"), AutoTokenizer.from_pretrained(tiny_model),
                            length_reward, [], [], [])
    assert isinstance(trainer, ExactKLGRPOTrainer)
    trainer.train()
    history = trainer.exact_kl_history
    assert len(history) == 8 and all(h["demo/kl_exact"] >= 0.0 for h in history)
    assert history[0]["demo/kl_exact"] < 1e-9 < history[-1]["demo/kl_exact"]
    assert all("demo/kl_exact" in e for e in trainer.state.log_history if "loss" in e)


# --------------------------------------------------------------------------------------------------- the command
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--experiment", "dro,nope"], "unknown"),
        (["--long-steps", "20", "--long-eval-every", "6"], "--long-eval-every=6 must divide --long-steps=20"),
        (["--eval-questions", "101"], "at most 100"),
        (["--train-pool", "20"], "multiple of questions_per_generation"),
        (["--seeds", "0,-1"], "seeds must be >= 0"),
        (["--check-run", "dro:nope:0"], "dro has arms"),
    ],
)
def test_study_rejects_an_inconsistent_plan_before_any_work(argv, message, capsys, tmp_path):
    from disco_trl.demo.study.command import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output-dir", str(tmp_path / "never")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_plan_flag_prints_the_runs_and_their_cost(capsys):
    from disco_trl.demo.study.command import main

    assert main(["--experiment", "dro", "--plan"]) == 0
    out = capsys.readouterr().out
    assert out.split("\n")[1].split()[:2] == ["dro", "30"] and "calibration" in out and "total" in out


def test_tiny_study_runs_every_experiment_records_diagnostics_and_resumes(tiny_model, tmp_path, capsys):
    from disco_trl.cli import main

    out = tmp_path / "study"
    argv = ["study", "--quick", "--experiment", "all", "--seeds", "0", "--long-seeds", "0", "--powered-seeds", "0",
            "--output-dir", str(out), "--start-model", tiny_model]
    assert main(argv) == 0
    runs = sorted(p.name for p in (out / "runs").glob("*.json"))
    assert len(runs) == 2 + 6 + 6 + 4 + 2 and "calibration-disco-lr1e-05-seed100.json" in runs
    assert "calibration-ops4-disco-lr1e-05-seed100.json" in runs  # E's delta from its own mix
    assert len(list((out / "runs" / "starts").glob("start-test-seed0-*.json"))) == 2  # seed 0 on each mix
    for name, arms in (("dro", 6), ("trust-region", 6), ("long", 4), ("dro-powered", 2)):
        results = json.loads((out / name / "results.json").read_text())
        assert results["design"].startswith("study v3" if name == "dro-powered" else "study v2")
        assert len(results["arms"]) == arms
        assert results["calibration"]["delta"] > 0 and (out / name / "gains.png").read_bytes()[:4] == b"\x89PNG"
        for arm in results["arms"].values():
            assert arm["kl"]["exact_median"] >= 0 and arm["runs"][0]["start"] == arm["start"]
    dro = json.loads((out / "dro" / "results.json").read_text())
    assert 0 < dro["arms"]["tau0.03"]["neg_weight_ess"] <= dro["arms"]["tau10"]["neg_weight_ess"] <= 1.0
    powered = json.loads((out / "dro-powered" / "results.json").read_text())
    assert powered["meta"]["neg_weight_groups"] == ">=2 negatives" and powered["arms"]["basic"]["neg_weight_ess"] == \
        pytest.approx(1.0) and powered["arms"]["tau0.03"]["neg_weight_groups"] > 0
    assert powered["calibration"]["rule"].endswith("on 4-operation questions")
    cost = powered["meta"]["cost"]
    assert cost["starts"] == 1 and cost["wall_seconds"] > 0 and cost["processes"] == 1 and cost["runs_cpu_seconds"] > 0
    text = (out / "dro-powered" / "results.md").read_text()
    assert "Cost: " in text and "Heavy imbalance" in text and "groups with >= 2 negatives per run" in text
    assert (out / "dro" / "weights.png").exists() and (out / "long" / "dynamics.png").exists()
    record = json.loads((out / "runs" / "long-dapo-dapo-lr3e-05-seed0.json").read_text())
    steps = [e for e in record["log_history"] if "loss" in e]
    assert all("demo/kl_exact" in e and "clip_ratio/region_mean" in e for e in steps)
    assert [h["step"] for h in record["eval_history"]] == [0, 8, 16]
    disco = json.loads((out / "runs" / "dro-tau0.3-disco-lr1e-05-seed0.json").read_text())
    assert any("disco/neg_weight_ess" in e for e in disco["log_history"]) and disco["settings"]["tau"] == 0.3
    index = (out / "results.md").read_text()
    assert all(f"| {name} |" in index for name in plan.EXPERIMENTS)  # every experiment's verdicts listed
    tr = json.loads((out / "trust-region" / "results.json").read_text())
    assert set(tr["mechanism"]) == {"hinge-3e-05", "hinge-0.0001"}
    assert "noise-driven" in (out / "trust-region" / "results.md").read_text()
    assert "Not the pre-registered scale" in (out / "long" / "results.md").read_text()  # --quick is not the design
    assert isinstance(json.loads((out / "long" / "results.json").read_text())["mechanism"]["steadier_entropy"], bool)
    capsys.readouterr()

    # A run file of another design (no exact KL, no pool: an older study's) is not taken for this one.
    path = out / "runs" / "long-dapo-dapo-lr3e-05-seed0.json"
    old = json.loads(path.read_text())
    for key in ("exact_kl", "train_pool", "kl_penalty", "kl_estimator"):
        old["settings"].pop(key)
    path.write_text(json.dumps(old))
    only = argv.index("all")
    assert main([*argv[:only], "long", *argv[only + 1:]]) == 0
    assert capsys.readouterr().out.count("reusing the finished run") == 4  # calibration and 3 arms: not the old file
    assert json.loads(path.read_text())["settings"]["exact_kl"] is True
    assert "| dro |" in (out / "results.md").read_text()  # after `--experiment long`: the index keeps A's verdicts

    (out / "runs" / "dro-basic-disco-b-lr1e-05-seed0.json").unlink()
    assert main([*argv[:only], "dro", *argv[only + 1:], "--partial"]) == 0
    partial = json.loads((out / "dro" / "results.json").read_text())
    assert partial["meta"]["partial"] and partial["meta"]["finished_runs"] == 5 and "basic" not in partial["arms"]
    assert not (out / "runs" / "dro-basic-disco-b-lr1e-05-seed0.json").exists()  # nothing was run


def test_recording_reward_counts_positives_per_group():
    history = []

    def reward(completions, solution, **kwargs):
        return [1.0 if c == "right" else 0.0 for c in completions]

    record = recording_reward(reward, num_generations=4, updates_per_generation=2, history=history)
    assert record.__name__ == "reward"  # TRL names the logged reward after the function
    out = record(prompts=None, completions=["right", "x", "x", "x",  "x", "x", "x", "x",  "right"] + ["right"] * 3,
                 solution=None)
    assert out == [1.0, 0, 0, 0, 0, 0, 0, 0, 1.0, 1.0, 1.0, 1.0]
    record(prompts=None, completions=["right", "right", "x", "x"], solution=None)
    first, second = history
    assert first["step"] == 0 and second["step"] == 2
    assert first["positives_histogram"] == [1, 1, 0, 0, 1]
    assert first["frac_mixed"] == pytest.approx(1 / 3) and first["frac_all_wrong"] == pytest.approx(1 / 3)
    assert first["neg_per_pos_mixed"] == 3.0 and second["neg_per_pos_mixed"] == 1.0


def test_hard_pool_is_its_own_mix_and_disjoint_from_training_and_the_default_pool():
    hard_test, hard_val = ws.eval_problems(100, "test", (3, 4)), ws.eval_problems(100, "val", (3, 4))
    assert sorted(p.num_ops for p in hard_test) == sorted([3, 4] * 50)
    default = {p.expression for split in ("test", "val") for p in ws.eval_problems(100, split)}
    hard = {p.expression for p in hard_test} | {p.expression for p in hard_val}
    assert len(hard) == 200 and not hard & default
    train = ws.train_problems(4000, seed=3, difficulties=(3, 4), held_out_difficulties=(3, 4))
    assert {p.num_ops for p in train} == {3, 4}
    assert not {p.expression for p in train} & (hard | default)
    original = task.make_problems(ws.NUM_EVAL_PROBLEMS_RESERVED, 12345)  # the pool before other mixes existed
    assert [p.expression for p in ws.eval_problems(5)] == [p.expression for p in original[:5]]


def test_run_lock_is_exclusive_and_a_dead_holder_is_taken_over(tmp_path):
    import os
    import subprocess
    import sys

    from disco_trl.demo.runs import claim

    lock = str(tmp_path / "run.json.lock")
    assert claim(lock) and not claim(lock)  # held (by this live process)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock, "w") as f:
        f.write(str(dead.pid))  # a process that has exited: a stale lock
    assert claim(lock)
    with open(lock) as f:
        assert f.read() == str(os.getpid())


def test_study_md_quotes_experiment_e_from_its_committed_results():
    """docs/study.md's results of E are the numbers of docs/study/dro-powered/results.json (the verdict included)."""
    docs = os.path.join(os.path.dirname(__file__), os.pardir, "docs")
    with open(os.path.join(docs, "study", "dro-powered", "results.json")) as f:
        results = json.load(f)
    with open(os.path.join(docs, "study.md")) as f:
        text = " ".join(f.read().split())
    e1 = results["comparisons"]["tau 0.03 - DisCO-b"]
    assert results["meta"]["finished_runs"] == results["meta"]["planned_runs"] == 64 and e1["n"] == 32
    low, high = (100 * x for x in e1["ci95"])
    quoted = f"{100 * e1['mean']:+.2f} points, 95% CI [{low:+.2f}, {high:+.2f}], p = {e1['p']:.3f}"
    assert quoted in text and f"(n = 32 seeds): {e1['verdict']}." in text, quoted
    ess = results["arms"]["tau0.03"]["neg_weight_ess"]
    assert f"mean ESS fraction over the groups with at least 2 negatives was {ess:.3f}" in text
