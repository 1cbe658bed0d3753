"""`disco-trl study`: the plan's checks, the statistics, the hard held-out pool, and a tiny end-to-end study that
resumes from its run files."""

from __future__ import annotations

import json
import math

import pytest

from disco_trl.demo import task
from disco_trl.demo import warmstart as ws
from disco_trl.demo.experiment import recording_reward
from disco_trl.demo.study.report import entropy_flag, paired


def test_hard_pool_is_its_own_mix_and_disjoint_from_training_and_the_default_pool():
    hard_test, hard_val = ws.eval_problems(100, "test", (3, 4)), ws.eval_problems(100, "val", (3, 4))
    assert sorted(p.num_ops for p in hard_test) == sorted([3, 4] * 50)
    default = {p.expression for split in ("test", "val") for p in ws.eval_problems(100, split)}
    hard = {p.expression for p in hard_test} | {p.expression for p in hard_val}
    assert len(hard) == 200 and not hard & default
    train = ws.train_problems(4000, seed=3, difficulties=(3, 4), held_out_difficulties=(3, 4))
    assert {p.num_ops for p in train} == {3, 4}
    assert not {p.expression for p in train} & (hard | default)
    # The default mix keeps its original pool, so earlier comparisons are unchanged.
    original = task.make_problems(ws.NUM_EVAL_PROBLEMS_RESERVED, 12345)  # the pool before other mixes existed
    assert [p.expression for p in ws.eval_problems(5)] == [p.expression for p in original[:5]]


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


def test_paired_statistics_and_entropy_flags():
    a = {0: 0.30, 1: 0.32, 2: 0.31, 3: 0.35, 4: 0.33}
    b = {0: 0.28, 1: 0.31, 2: 0.27, 3: 0.34, 4: 0.30, 9: 0.9}  # seed 9 is not shared: ignored
    p = paired(a, b)
    diffs = [0.02, 0.01, 0.04, 0.01, 0.03]
    assert p["seeds"] == [0, 1, 2, 3, 4] and p["diffs"] == pytest.approx(diffs)
    sd = (sum((d - 0.022) ** 2 for d in diffs) / 4) ** 0.5
    assert p["mean"] == pytest.approx(0.022) and p["sd"] == pytest.approx(sd)
    assert p["ci95"][0] == pytest.approx(0.022 - 2.776 * sd / 5 ** 0.5)
    assert p["detectable"] == pytest.approx((2.776 + 0.941) * sd / 5 ** 0.5)
    assert math.isnan(paired({0: 1.0}, {0: 0.5})["detectable"]) and paired({0: 1.0}, {1: 1.0}) is None
    assert entropy_flag(0.2, 0.05) == "collapses" and entropy_flag(0.2, 0.5) == "explodes"
    assert entropy_flag(0.2, float("nan")) == "explodes" and entropy_flag(0.2, 0.15) is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--grid-seeds", "0,1", "--long-seeds", "1"], "seed 1 is in both --grid-seeds and --long-seeds"),
        (["--steps", "160", "--long-steps", "160"], "--long-steps=160 must be larger than --steps=160"),
        (["--steps", "160", "--long-eval-every", "60"], "--long-eval-every=60 must divide --steps=160"),
        (["--difficulties", "3,5"], "between 1 and 4"),
        (["--lr-grid", "1e-5,-1"], "learning rates must be finite numbers > 0"),
    ],
)
def test_study_rejects_an_inconsistent_plan_before_any_work(argv, message, capsys, tmp_path):
    from disco_trl.demo.study.command import main

    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--output-dir", str(tmp_path / "never")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


TINY = ws.WarmStartConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          intermediate_size=64, sft_steps=6, sft_batch_size=8, sft_warmup_steps=2)


def test_tiny_study_writes_every_part_and_resumes(tmp_path, capsys, monkeypatch):
    from disco_trl.cli import main
    from disco_trl.demo.study import command as study

    monkeypatch.setattr(study, "warmstart_config", lambda quick: TINY)  # a seconds-long warm start

    out = tmp_path / "study"
    argv = ["study", "--quick", "--methods", "disco,dr_grpo", "--lr-grid", "1e-4,1e-3", "--grid-seeds", "0",
            "--long-seeds", "1", "--extra-seeds", "2", "--steps", "2", "--long-steps", "4", "--long-eval-every", "2",
            "--eval-questions", "4", "--output-dir", str(out), "--cache-dir", str(tmp_path / "cache")]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["grid"]) == {"disco", "dr_grpo"} and set(results["grid"]["disco"]) == {"0.0001", "0.001"}
    for method, per in results["grid"].items():
        val = {lr: g["val"]["mean"] for lr, g in per.items()}
        best = max(val, key=lambda lr: (val[lr], -float(lr)))
        assert results["best_learning_rate"][method] == float(best)  # chosen on validation, not test
        stats = results["statistics"][method]
        assert stats["pass@1"]["n"] == 3 and set(stats["by_seed"]) == {"0", "1", "2"}  # grid, long@2, extra
        assert set(stats["gain_by_ops"]) == {"2", "3", "4"}
        assert results["long"][method]["steps"] == [0, 2, 4]
        assert results["imbalance"][method]["positives_histogram"]  # recorded for both families
    assert results["statistics"]["dr_grpo"]["vs_disco"]["seeds"] == [0, 1, 2]
    timing = results["meta"]["timing"]
    assert timing["runs"] == 8 and timing["sum_run_cpu_seconds"] > 0 and timing["runs_without_cpu_record"] == 0
    for name in ("stepsize.png", "long_runs.png", "imbalance.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert "## Step size" in (out / "results.md").read_text()
    assert len(list((out / "runs").glob("*.json"))) == 8
    capsys.readouterr()

    assert main(argv) == 0  # resumes: every run is reused
    assert capsys.readouterr().out.count("reusing the finished run") == 8

    # --partial reports what has finished without running anything: here, the study minus one extra run.
    (out / "runs" / "extra-dr_grpo-lr0.0001-seed2.json").unlink(missing_ok=True)
    (out / "runs" / "extra-dr_grpo-lr0.001-seed2.json").unlink(missing_ok=True)
    assert main([*argv, "--partial"]) == 0
    partial = json.loads((out / "results.json").read_text())
    assert partial["meta"]["partial"] and partial["meta"]["timing"]["runs"] == 7
    assert partial["meta"]["planned_runs"] == 8 and partial["statistics"]["dr_grpo"]["pass@1"]["n"] == 2
    assert "Partial report" in (out / "results.md").read_text()
    assert len(list((out / "runs").glob("*.json"))) == 7  # nothing was run


def test_run_lock_is_exclusive_and_a_dead_holder_is_taken_over(tmp_path):
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
        assert f.read() == str(__import__("os").getpid())
