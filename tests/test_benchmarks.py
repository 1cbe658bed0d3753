"""benchmarks/bench_disco.py (and its parts in benchmarks/benchlib/): the quick mode runs end to end and writes its
table and JSON; its arithmetic is right.

The benchmark's numbers themselves are not checked here (they are machine-dependent and belong in
docs/performance.md); only that the run is complete, consistent and well-formed. `benchmarks/` is on the test path
(pyproject.toml's `pythonpath`), as it is on a script's when it runs as `python benchmarks/bench_disco.py`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import bench_disco as bench
import pytest
import torch
from benchlib import report, sweep, timing


ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_disco.py"
ALL_METHODS = ["trl-default", "grpo-beta0", "trl-default-ref-kl", "disco", "disco-lratio"]
BASELINE = "trl-default"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=ENV,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text()), (out / "results.md").read_text()


@pytest.mark.slow
def test_quick_run_writes_complete_json(quick_run):
    _, result, _ = quick_run
    cfg = result["config"]
    assert cfg["quick"] is True and cfg["methods"] == ALL_METHODS
    assert set(result["summary"]) == set(ALL_METHODS)
    assert len(result["load_avg_before"]) == 3 and len(result["load_avg_after"]) == 3
    assert result["machine"]["torch_threads"] == 1
    assert result["identical_completions_across_methods"] is True

    runs = result["runs"]
    assert len(runs) == cfg["reps"] * len(ALL_METHODS)
    for rep in range(cfg["reps"]):
        in_rep = [r for r in runs if r["rep"] == rep]
        assert sorted(r["method"] for r in in_rep) == sorted(ALL_METHODS)
        # Same tokens and the same micro-batch geometry for every method of a repetition.
        assert len({r["completion_checksum"] for r in in_rep}) == 1
        assert len({r["completions_served"] for r in in_rep}) == 1
        assert len({(r["microbatch"]["rows"], r["microbatch"]["completion_tokens"]) for r in in_rep}) == 1
    # Methods alternate: the order rotates between repetitions.
    first = [r["method"] for r in runs if r["rep"] == 0]
    second = [r["method"] for r in runs if r["rep"] == 1]
    assert first != second and second == first[1:] + first[:1]
    for r in runs:
        for key, n in (("step_s", cfg["steps"]), ("step_cpu_s", cfg["steps"]), ("loss_s", cfg["loss_reps"]),
                       ("loss_cpu_s", cfg["loss_reps"])):
            assert len(r[key]) == n and all(t > 0 for t in r[key]), key
        assert r["step_peak_bytes"] > 0 and r["loss_peak_bytes"] > 0
        mb = r["microbatch"]
        assert mb["rows"] == cfg["per_device_train_batch_size"]
        assert mb["completion_tokens"] == mb["rows"] * cfg["completion_length"]

    for method, s in result["summary"].items():
        for key in ("step_s", "loss_s", "step_cpu_s", "loss_cpu_s", "step_peak_mib", "loss_peak_mib"):
            assert s[key]["min"] <= s[key]["median"] <= s[key]["max"] and s[key]["min"] > 0, (method, key)
        for key in ("step_ratio", "loss_ratio", "step_cpu_ratio", "loss_cpu_ratio", "step_peak_ratio",
                    "loss_peak_ratio"):
            assert 0 < s[key]["min"] <= s[key]["median"] <= s[key]["max"], (method, key)
    for key in ("step_ratio", "loss_ratio", "step_cpu_ratio", "loss_cpu_ratio", "step_peak_ratio",
                "loss_peak_ratio"):
        assert result["summary"][BASELINE][key] == {"median": 1.0, "min": 1.0, "max": 1.0}


@pytest.mark.slow
def test_quick_run_sweep_covers_the_three_axes(quick_run):
    _, result, _ = quick_run
    rows = result["sweep"]
    axes = {r["axis"] for r in rows}
    assert {"generations", "completion_length", "questions"} <= axes
    assert sorted(r["num_generations"] for r in rows if r["axis"] == "generations") == [2, 4]
    assert sorted(r["completion_length"] for r in rows if r["axis"] == "completion_length") == [16, 32]
    assert sorted(r["questions_per_microbatch"] for r in rows if r["axis"] == "questions") == [1, 2]
    for r in rows:
        assert r["completion_tokens"] == r["num_generations"] * r["questions_per_microbatch"] * r["completion_length"]
        assert all(r["fn_s"][m] > 0 for m in sweep.SWEEP_METHODS)
        if r["completion_tokens"] <= result["config"]["sweep_max_tokens"]:
            assert all(r["compute_loss_s"][m] > 0 for m in sweep.SWEEP_METHODS)
            share = (r["fn_s"]["disco"] - r["fn_s"][BASELINE]) / r["compute_loss_s"][BASELINE]
            assert r["fn_overhead_share"]["disco"] == pytest.approx(share)
            ratio = r["compute_loss_s"]["disco-lratio"] / r["compute_loss_s"][BASELINE]
            assert r["compute_loss_ratio"]["disco-lratio"] == pytest.approx(ratio)
    assert result["sweep_verdict"]


@pytest.mark.slow
def test_quick_run_markdown_table_matches_json(quick_run):
    out, result, md = quick_run
    assert "| method | step ms | step ratio |" in md
    assert result["command"] in md and result["machine"]["device_name"] in md
    for method in ALL_METHODS:
        row = next(line for line in md.splitlines() if line.startswith(f"| `{method}` |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == 9
        step_ms = float(cells[1])
        assert step_ms > 0
        assert step_ms == pytest.approx(result["summary"][method]["step_s"]["median"] * 1e3, abs=0.051)
        for i in (2, 4, 6, 8):
            median, lo, hi = map(float, re.match(r"([\d.]+) \[([\d.]+), ([\d.]+)\]", cells[i]).groups())
            assert 0 < lo <= median <= hi
        assert all(float(cells[i]) > 0 for i in (3, 5, 7))
    assert "## Scaling sweep" in md
    axis_row = re.compile(r"\| (generations|completion_length|questions|all_max) \|")
    sweep_lines = [line for line in md.splitlines() if axis_row.match(line)]
    assert len(sweep_lines) == len(result["sweep"])


def test_summary_ratios_are_per_repetition():
    def run(rep, method, step, loss, mem):
        return {"rep": rep, "method": method, "step_median_s": step, "loss_median_s": loss,
                "step_peak_bytes": mem, "loss_peak_bytes": mem / 2}

    runs = [run(0, BASELINE, 1.0, 0.5, 2**20), run(0, "disco", 1.2, 0.5, 2**21),
            run(1, BASELINE, 2.0, 1.0, 2**20), run(1, "disco", 1.8, 1.5, 2**20),
            run(2, BASELINE, 1.0, 1.0, 2**20), run(2, "disco", 1.0, 1.0, 2**20)]
    s = report.summarise(runs, [BASELINE, "disco"])["disco"]
    # Ratios are taken inside each repetition (1.2, 0.9, 1.0), not between medians (1.2 / 1.0).
    assert s["step_ratio"] == {"median": pytest.approx(1.0), "min": pytest.approx(0.9), "max": pytest.approx(1.2)}
    assert s["loss_ratio"] == {"median": pytest.approx(1.0), "min": pytest.approx(1.0), "max": pytest.approx(1.5)}
    assert s["step_s"] == {"median": 1.2, "min": 1.0, "max": 1.8}
    assert s["step_peak_mib"] == {"median": 1.0, "min": 1.0, "max": 2.0}
    assert s["step_peak_ratio"]["max"] == pytest.approx(2.0)


def test_sweep_verdict_flags_a_growing_share():
    rows = [
        {"axis": "completion_length", "compute_loss_s": {BASELINE: 1.0},
         "fn_overhead_share": {"disco": 0.05, "disco-lratio": 0.05}},
        {"axis": "completion_length", "compute_loss_s": {BASELINE: 1.0},
         "fn_overhead_share": {"disco": 0.01, "disco-lratio": 0.10}},
        {"axis": "questions", "compute_loss_s": None},
    ]
    verdict = sweep.sweep_verdict(rows)
    assert verdict["completion_length/disco"]["flat_or_shrinks"] is True
    assert verdict["completion_length/disco-lratio"]["flat_or_shrinks"] is False
    assert not any(k.startswith("questions/") for k in verdict)  # no model timings: no verdict


def test_pure_losses_match_their_definitions():
    torch.manual_seed(0)
    logps, old, mask, rewards, group_ids, advantages = sweep.pure_loss_inputs(4, 3, 10, "cpu", seed=1)
    x = logps.clone().requires_grad_(True)
    # At ratio 1 (old = current), TRL's clipped surrogate with the 'dapo' reduction is -sum(A * mask) / sum(mask).
    loss = sweep.grpo_token_loss(x, x.detach(), advantages, mask, loss_type="dapo")
    loss.backward()
    expected = -(advantages[:, None] * mask).sum() / mask.sum()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    assert torch.allclose(x.grad, -advantages[:, None] * mask / mask.sum(), atol=1e-7)
    # 'grpo' reduction: per-sequence mean, then mean over sequences.
    per_seq = sweep.grpo_token_loss(x, x.detach(), advantages, mask, loss_type="grpo")
    assert per_seq.item() == pytest.approx(-advantages.mean().item(), abs=1e-6)

    from disco_trl.losses import discriminative_objective, sequence_scores

    # DisCO with old = current: KL is 0, the hinge is inactive, the loss is -J.
    d = sweep.disco_pure_loss(x, x.detach(), rewards, group_ids, mask, score_type="log_l", tau=10.0, num_questions=3)
    scores = sequence_scores(x, None, mask, score_type="log_l")
    j = discriminative_objective(scores, rewards, group_ids, variant="dro", tau=10.0, num_questions=3)
    assert d.item() == pytest.approx(-j.item(), abs=1e-6)
    # Far from the old policy the squared hinge adds beta * (KL - delta)^2.
    far = sweep.disco_pure_loss(x, x.detach() + 0.1, rewards, group_ids, mask, score_type="log_l", tau=10.0,
                           num_questions=3)
    assert far.item() == pytest.approx(-j.item() + 1e3 * (0.1 - 1e-4) ** 2, rel=1e-4)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "disco"], "must include the baseline 'trl-default'"),
        (["--methods", "trl-default,ppo"], "unknown name(s) ['ppo']"),
        (["--methods", "grpo,disco"], "must include the baseline 'trl-default'"),  # the demo's grpo is another method
        (["--reps", "0"], "--reps must be >= 1"),
        (["--num-generations", "1"], "--num-generations must be >= 2"),
        (["--sweep-lengths", "128,8k"], "--sweep-lengths must be a comma-separated list of integers"),
        (["--ref-beta", "0"], "--ref-beta must be > 0"),
    ],
)
def test_bad_options_fail_before_any_compute(argv, message):
    with pytest.raises(SystemExit) as err:
        bench.parse_args(argv)
    assert message in str(err.value)


def test_quick_defaults_are_small_and_full_defaults_are_the_documented_ones():
    quick = bench.parse_args(["--quick"])
    assert quick.model_preset == "tiny" and quick.reps == 2 and quick.completion_length == 32
    full = bench.parse_args([])
    assert full.sweep_generations == [4, 8, 16, 32, 64]
    assert full.sweep_lengths == [128, 512, 2048, 8192]
    assert full.sweep_questions == [1, 2, 4, 8]
    assert full.methods == ALL_METHODS and full.reps >= 3
    assert not math.isnan(full.ref_beta) and full.ref_beta > 0


@pytest.mark.gpu
def test_quick_run_on_cuda_uses_cuda_memory_stats(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cuda", "--output-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=ENV,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["machine"]["device"] == "cuda" and "GPU" in result["machine"]["device_name"]
    assert result["memory_method"].startswith("torch.cuda.max_memory_allocated")
    assert all(r["step_peak_bytes"] > 0 for r in result["runs"])


def test_baton_runs_one_thread_at_a_time_round_robin():
    import threading
    import time

    baton = timing.Baton([0, 1, 2], timeout=30)
    log, running, overlaps = [], [], []

    def work(slot, steps):
        baton.wait_turn(slot)
        for step in range(steps):
            running.append(slot)
            if running != [slot]:  # somebody else is inside a step
                overlaps.append(list(running))
            time.sleep(0.002)
            log.append((slot, step))
            running.remove(slot)
            if step < steps - 1:
                baton.pass_on(slot)
                baton.wait_turn(slot)
        baton.pass_on(slot, finished=True)

    threads = [threading.Thread(target=work, args=(slot, n)) for slot, n in ((0, 3), (1, 1), (2, 3))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not overlaps
    assert log == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (0, 2), (2, 2)]
    assert baton.holder is None


def test_performance_doc_tables_are_the_committed_measurement():
    """docs/performance.md shows the table the benchmark wrote for the committed run, number for number."""
    doc = (ROOT / "docs" / "performance.md").read_text()
    data = ROOT / "docs" / "benchmark-results"
    result = json.loads((data / "cpu-epyc-2core.json").read_text())
    table = report.markdown(result)
    assert table == (data / "cpu-epyc-2core.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `") or re.match(r"\| [a-z_]+ \| \d", line)]
    assert len(rows) == len(result["summary"]) + len(result["sweep"])
    for row in rows:
        assert row in doc, row
    assert result["command"].split("--output-dir")[0].strip().removeprefix("python ") in doc
    assert result["machine"]["torch"] in doc and result["machine"]["trl"] in doc


def test_vllm_mismatch_report_is_the_definitions():
    """benchmarks/vllm_mismatch.py's report (its sampling and scoring need vLLM and a model; the arithmetic does not):
    d = log pi_old - log pi_vLLM per token, D = sum_t d per completion, on two questions of two completions."""
    import argparse

    import vllm_mismatch

    old = [torch.tensor([-1.0, -2.0]), torch.tensor([-1.0]), torch.tensor([-0.5, -0.5, -0.5]), torch.tensor([-3.0])]
    d = [[0.5, -0.25], [1.5], [0.0, 0.0, 0.0], [-0.1]]
    rows = [([7], [1] * len(o), (o - torch.tensor(x)).tolist()) for o, x in zip(old, d)]
    args = argparse.Namespace(model="m", data=None, num_prompts=2, num_generations=2, temperature=0.6, top_p=1.0,
                              top_k=0, vllm_dtype="auto", trainer_dtype="float32", clip_min=None, clip_max=3.0,
                              max_completion_length=3)
    result = vllm_mismatch.report(args, rows, [o.double() for o in old], sampling_seconds=1.0)
    flat = [x for row in d for x in row]
    assert result["per_token"]["tokens"] == 7
    assert result["per_token"]["abs_difference"]["mean"] == pytest.approx(sum(map(abs, flat)) / 7)
    assert result["per_token"]["abs_difference"]["max"] == pytest.approx(1.5)
    assert result["per_token"]["kl_vllm_old_k3"] == pytest.approx(sum(math.expm1(x) - x for x in flat) / 7)
    assert result["per_token"]["frac_tokens_outside_bounds"] == pytest.approx(1 / 7)  # e^1.5 > 3
    ratios = [math.exp(sum(x)) for x in d]
    assert result["per_completion"]["ratio"]["max"] == pytest.approx(max(ratios))
    assert result["per_completion"]["frac_outside_bounds"] == pytest.approx(1 / 4)
    first = torch.softmax(torch.tensor([0.25, 1.5]), 0)  # the first question's normalised ratios
    second = torch.softmax(torch.tensor([0.0, -0.1]), 0)
    ess = (1 / (first**2).sum() / 2 + 1 / (second**2).sum() / 2) / 2
    assert result["per_completion"]["ess_fraction_per_question"] == pytest.approx(float(ess))
    assert result["logged_metrics"]["sampling/frac_outside_bounds"] == pytest.approx(1 / 4)
    assert sum(b["per_completion"]["completions"] for b in result["by_length_quartile"]) == 4
