"""Tests for disco_trl.eval: the pass@k estimator, the metrics, and the whole pipeline offline (tiny local
model on a few problems of each shared benchmark: counts, file formats, resume, CLI)."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from math import comb
from pathlib import Path

import datasets
import pytest
import torch
from disco_testing import ScriptedGenerator
from transformers import AutoModelForCausalLM, AutoTokenizer

from disco_trl.eval import cli as eval_cli
from disco_trl.eval import evaluate, format_markdown, generation, identity, pass_at_k, summarize
from disco_trl.eval import run as eval_run
from disco_trl.eval.generation import TransformersGenerator
from disco_trl.toy import build_tiny_qwen2, build_tokenizer


SIX = ["aime24", "aime25", "math500", "amc23", "minerva", "olympiadbench"]

# ---------------------------------------------------------------------------------------------------------------------
# pass@k
# ---------------------------------------------------------------------------------------------------------------------


def _pass_at_k_by_enumeration(n: int, c: int, k: int) -> float:
    """Probability that a random k-subset of n samples (c correct) holds a correct one, by listing all subsets."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_matches_enumeration(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_pass_at_k_by_enumeration(n, c, k), abs=1e-12)


def test_pass_at_k_closed_form_and_edges():
    assert pass_at_k(16, 4, 1) == pytest.approx(4 / 16)  # pass@1 is the fraction correct
    assert pass_at_k(16, 0, 16) == 0.0
    assert pass_at_k(16, 1, 16) == 1.0
    assert pass_at_k(16, 13, 4) == 1.0  # fewer than k wrong samples: every k-subset has a correct one
    assert pass_at_k(200, 7, 50) == pytest.approx(1 - comb(193, 50) / comb(200, 50), rel=1e-12)
    assert pass_at_k(1000, 3, 500) == pytest.approx(1 - comb(997, 500) / comb(1000, 500), rel=1e-10)


@pytest.mark.parametrize(("n", "c", "k", "error"), [(4, 5, 1, ValueError), (4, 1, 5, ValueError),
                                                    (0, 0, 1, ValueError),
                                                    (4, 1, 0, ValueError), (4.0, 1, 1, TypeError)])
def test_pass_at_k_rejects_bad_arguments(n, c, k, error):
    with pytest.raises(error):
        pass_at_k(n, c, k)


def test_summarize_and_markdown():
    rewards = {
        "aime24": [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]],  # c = 1, 4, 0 of n = 4
        "math500": [[1, 1, 0, 0], [0, 0, 0, 1]],  # c = 2, 1
    }
    out = summarize(rewards)
    aime, math = out["benchmarks"]["aime24"], out["benchmarks"]["math500"]
    assert aime["num_correct"] == [1, 4, 0] and aime["num_problems"] == 3 and aime["samples_per_problem"] == 4
    assert aime["pass@1"] == pytest.approx((1 / 4 + 1 + 0) / 3)
    assert aime["pass@2"] == pytest.approx((pass_at_k(4, 1, 2) + 1 + 0) / 3)
    assert aime["pass@4"] == pytest.approx(2 / 3)
    assert math["pass@1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert {k for k in aime if k.startswith("pass@")} == {"pass@1", "pass@2", "pass@4"}
    assert out["average"]["pass@1"] == pytest.approx((aime["pass@1"] + math["pass@1"]) / 2)
    assert out["average"]["num_benchmarks"] == 2
    table = format_markdown(out, title="m")
    assert "| AIME 2024 | 3 | 4 | 41.7 |" in table
    assert "| MATH-500 | 2 | 4 | 37.5 |" in table
    assert "**Average**" in table and f"**{100 * out['average']['pass@1']:.1f}**" in table
    assert summarize(rewards, k_values=[1, 3])["benchmarks"]["aime24"].keys() >= {"pass@1", "pass@3"}


# ---------------------------------------------------------------------------------------------------------------------
# Pipeline
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tokenizer()
    return build_tiny_qwen2(tokenizer), tokenizer


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.mark.needs_benchmarks
def test_pipeline_on_all_six_benchmarks_with_a_tiny_model(tiny, tmp_path, capsys):
    model, tokenizer = tiny
    out = tmp_path / "eval"
    results = evaluate(model, SIX, tokenizer=tokenizer, num_samples=3, max_new_tokens=12, limit=2, output_dir=out,
                       batch_size=16, progress=True)
    assert list(results["benchmarks"]) == SIX
    for name in SIX:
        entry = results["benchmarks"][name]
        assert entry["num_problems"] == 2 and entry["samples_per_problem"] == 3
        assert {"pass@1", "pass@2", "pass@3"} <= set(entry)
        assert 0.0 <= entry["pass@1"] <= entry["pass@2"] <= entry["pass@3"] <= 1.0
    assert results["timing"]["samples_generated"] == 6 * 2 * 3
    assert results["config"]["backend"] == "transformers"

    samples = _lines(out / "samples.jsonl")
    assert len(samples) == 36
    assert {(s["benchmark"], s["problem_id"], s["sample"]) for s in samples} == {
        (b, p, j) for b in SIX for p in range(2) for j in range(3)
    }
    fields = {"benchmark", "problem_id", "key", "sample", "completion", "answer", "solution", "reward",
              "completion_tokens", "finish_reason"}
    assert all(fields <= set(s) for s in samples)
    assert all(1 <= s["completion_tokens"] <= 12 and s["finish_reason"] in ("stop", "length") for s in samples)
    problems = _lines(out / "problems.jsonl")
    assert len(problems) == 12
    assert all("<|im_start|>assistant" in p["prompt"] and "\\boxed{}" in p["prompt"] for p in problems)

    # results.json holds what evaluate returned, and its numbers follow from the records
    saved = json.loads((out / "results.json").read_text())
    assert saved["benchmarks"] == results["benchmarks"]
    for name in SIX:
        per_problem = [[s["reward"] for s in samples if s["benchmark"] == name and s["problem_id"] == p]
                       for p in range(2)]
        assert saved["benchmarks"][name]["num_correct"] == [int(sum(r)) for r in per_problem]
    assert (out / "results.md").read_text().count("\n| ") >= 7  # six benchmarks and the average
    assert json.loads((out / "config.json").read_text())["num_samples"] == 3
    err = capsys.readouterr().err
    assert "eval problems" in err and "12/12" in err


def _toy_benchmark():
    return datasets.Dataset.from_dict(
        {"prompt": ["Q: 2+2?", "Q: half of 1?"], "solution": ["4", "\\frac{1}{2}"], "problem": ["2+2?", "half of 1?"]}
    )


def test_metrics_are_exact_with_scripted_completions(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    scripted = ScriptedGenerator({
        # 3 of 4 correct
        "2+2?": [r"\boxed{4}", r"<think>\boxed{4}</think>", r"<think>\boxed{5}</think> \boxed{4}", r"\boxed{4.0}"],
        "half of 1?": [r"\boxed{0.5}", "no box", r"\boxed{2}", r"\boxed{1/3}"],  # 1 of 4 correct
    })
    monkeypatch.setattr(eval_run, "make_generator", lambda *a, **k: scripted)
    results = evaluate(model, {"toy": _toy_benchmark()}, tokenizer=tokenizer, num_samples=4, output_dir=tmp_path,
                       progress=False, batch_size=3)
    toy = results["benchmarks"]["toy"]
    assert toy["num_correct"] == [3, 1]
    assert toy["pass@1"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert toy["pass@2"] == pytest.approx((pass_at_k(4, 3, 2) + pass_at_k(4, 1, 2)) / 2)
    assert toy["pass@4"] == 1.0
    records = _lines(tmp_path / "samples.jsonl")
    assert [r["answer"] for r in records if r["problem_id"] == 1] == ["0.5", None, "2", "1/3"]


def test_sampling_ignores_top_k_from_the_models_generation_config(tiny):
    model, tokenizer = tiny
    model.generation_config.top_k = 1  # would make every sample the greedy one
    try:
        results_dir = evaluate(model, {"toy": _toy_benchmark().select([0])}, tokenizer=tokenizer, num_samples=6,
                               max_new_tokens=8, progress=False)
        assert results_dir["timing"]["samples_generated"] == 6
        gen = TransformersGenerator(model, tokenizer, batch_size=6)
        outs = gen.generate(["Q: 2+2?"] * 6, seeds=list(range(6)), temperature=0.6, top_p=0.95, max_new_tokens=8)
        texts = [t for t, _, _ in outs]
        assert len(set(texts)) > 1  # top-p sampling over the whole vocabulary, not top-1
    finally:
        model.generation_config.top_k = None


def test_per_sample_sampler_draws_from_the_temperature_top_p_distribution():
    from disco_trl.eval.generation import PerSampleSampler

    logits = torch.tensor([2.0, 1.5, 1.0, 0.0, -1.0, -3.0])
    temperature, top_p, rows = 0.7, 0.9, 20_000
    probs = torch.softmax(logits / temperature, dim=-1)  # already in descending order
    nucleus = (probs.cumsum(0) - probs) < top_p
    expected = probs * nucleus / (probs * nucleus).sum()
    sampler = PerSampleSampler(list(range(rows)), temperature=temperature, top_p=top_p)
    out = sampler(None, logits.repeat(rows, 1))
    assert torch.isfinite(out).sum(dim=-1).eq(1).all()  # one allowed token per row: generate can only pick it
    counts = torch.bincount(out.argmax(dim=-1), minlength=6).float() / rows
    assert counts[~nucleus].sum() == 0 and nucleus.sum() == 3
    assert torch.allclose(counts, expected, atol=0.015), (counts, expected)
    again = PerSampleSampler([5, 7], temperature=temperature, top_p=top_p)(None, logits.repeat(2, 1))
    assert torch.equal(again.argmax(-1), out[[5, 7]].argmax(-1))  # a row's draw depends on its seed only


def test_in_memory_model_keeps_its_training_mode(tiny):
    model, tokenizer = tiny
    model.train()
    try:
        evaluate(model, {"toy": _toy_benchmark()}, tokenizer=tokenizer, num_samples=1, max_new_tokens=2,
                 progress=False)
        assert model.training
    finally:
        model.eval()


def test_resume_generates_only_what_is_missing(tiny, tmp_path, monkeypatch):
    model, tokenizer = tiny
    bench = {"toy": _toy_benchmark()}
    first = evaluate(model, bench, tokenizer=tokenizer, num_samples=2, max_new_tokens=6, output_dir=tmp_path,
                     progress=False)
    assert first["timing"]["samples_generated"] == 4
    before = _lines(tmp_path / "samples.jsonl")

    again = evaluate(model, bench, tokenizer=tokenizer, num_samples=2, max_new_tokens=6, output_dir=tmp_path,
                     progress=False)
    assert again["timing"]["samples_generated"] == 0 and again["timing"]["samples_reused"] == 4
    assert again["benchmarks"] == first["benchmarks"]

    more = evaluate(model, bench, tokenizer=tokenizer, num_samples=3, max_new_tokens=6, output_dir=tmp_path,
                    progress=False)
    assert more["timing"]["samples_generated"] == 2
    after = _lines(tmp_path / "samples.jsonl")
    assert after[:4] == before and len(after) == 6

    # an interrupted run: the last record is cut in the middle of its line
    text = (tmp_path / "samples.jsonl").read_text().splitlines()
    (tmp_path / "samples.jsonl").write_text("\n".join(text[:-1]) + "\n" + text[-1][:20])
    with pytest.warns(UserWarning, match="partial last line"):
        healed = evaluate(model, bench, tokenizer=tokenizer, num_samples=3, max_new_tokens=6, output_dir=tmp_path,
                          progress=False)
    assert healed["timing"]["samples_generated"] == 1
    assert healed["benchmarks"]["toy"]["samples_per_problem"] == 3

    with pytest.raises(ValueError, match="other settings.*temperature"):
        evaluate(model, bench, tokenizer=tokenizer, num_samples=3, max_new_tokens=6, temperature=1.0,
                 output_dir=tmp_path, progress=False)
    fresh = evaluate(model, bench, tokenizer=tokenizer, num_samples=1, max_new_tokens=6, temperature=1.0,
                     output_dir=tmp_path, progress=False, resume=False)
    assert fresh["timing"]["samples_generated"] == 2 and len(_lines(tmp_path / "samples.jsonl")) == 2


def test_bad_arguments_fail_before_generation(tiny):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="needs its tokenizer"):
        evaluate(model, {"toy": _toy_benchmark()})
    with pytest.raises(ValueError, match=r"no \['solution'\] column"):
        evaluate(model, {"x": datasets.Dataset.from_dict({"prompt": ["q"]})}, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="num_samples"):
        evaluate(model, {"toy": _toy_benchmark()}, tokenizer=tokenizer, num_samples=0)
    with pytest.raises(ValueError, match="top_p"):
        evaluate(model, {"toy": _toy_benchmark()}, tokenizer=tokenizer, top_p=0.0)
    with pytest.raises(ValueError, match="neither a known source"):
        evaluate(model, ["aime2077"], tokenizer=tokenizer)


@pytest.mark.needs_benchmarks
def test_cli_with_a_saved_model(tiny, tmp_path, capsys):
    from disco_trl.cli import main as cli_main

    model, tokenizer = tiny
    model_dir = tmp_path / "tiny-model"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "out"
    code = cli_main([
        "eval", "--model", str(model_dir), "--benchmarks", "aime25", "amc23", "--limit", "2", "--num-samples", "2",
        "--max-new-tokens", "8", "--output-dir", str(out), "--k", "1", "2", "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| AIME 2025 | 2 | 2 |" in printed and "| AMC 2023 | 2 | 2 |" in printed and "Pass@1 (avg)" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["model"] == str(model_dir)
    assert results["config"]["temperature"] == 0.6 and results["config"]["top_p"] == 0.95
    assert len(_lines(out / "samples.jsonl")) == 2 * 2 * 2


# ---------------------------------------------------------------------------------------------------------------------
# Reliability: per-sample seeds, the samples file's tail, missing model paths, one-line CLI errors
# ---------------------------------------------------------------------------------------------------------------------


def _completions(folder):
    return {(r["problem_id"], r["sample"]): r["completion"] for r in _lines(folder / "samples.jsonl")}


def test_extending_num_samples_gives_the_samples_of_a_fresh_run(tiny, tmp_path):
    model, tokenizer = tiny
    bench = {"toy": _toy_benchmark()}
    run = dict(tokenizer=tokenizer, max_new_tokens=8, progress=False)
    evaluate(model, bench, num_samples=2, output_dir=tmp_path / "extended", **run)
    extended = evaluate(model, bench, num_samples=4, output_dir=tmp_path / "extended", **run)
    assert extended["timing"]["samples_generated"] == 4
    evaluate(model, bench, num_samples=4, output_dir=tmp_path / "fresh", batch_size=3, **run)  # other batches too
    got, fresh = _completions(tmp_path / "extended"), _completions(tmp_path / "fresh")
    assert got == fresh and len(got) == 8
    for pid in (0, 1):
        assert {got[pid, 2], got[pid, 3]}.isdisjoint({got[pid, 0], got[pid, 1]}), "new samples copy earlier ones"
    other_seed = evaluate(model, bench, num_samples=4, output_dir=tmp_path / "seed1", seed=1, **run)
    assert other_seed["timing"]["samples_generated"] == 8
    assert set(_completions(tmp_path / "seed1").values()).isdisjoint(got.values())
    with pytest.raises(ValueError, match="other settings.*seed"):  # no mixing of two seeds' samples in one folder
        evaluate(model, bench, num_samples=4, output_dir=tmp_path / "extended", seed=1, **run)
    config_path = tmp_path / "fresh" / "config.json"  # a folder written before seeds were per (problem, sample)
    old_config = {k: v for k, v in json.loads(config_path.read_text()).items() if k != "sample_seeds"}
    config_path.write_text(json.dumps(old_config))
    with pytest.raises(ValueError, match="older disco-trl whose seeds depended on the batch number"):
        evaluate(model, bench, num_samples=6, output_dir=tmp_path / "fresh", **run)


def test_a_cut_last_line_is_dropped_before_appending(tiny, tmp_path):
    model, tokenizer = tiny
    bench = {"toy": _toy_benchmark()}
    run = dict(tokenizer=tokenizer, num_samples=3, max_new_tokens=6, output_dir=tmp_path, progress=False)
    evaluate(model, bench, **run)
    samples = tmp_path / "samples.jsonl"
    lines = samples.read_text().splitlines()
    samples.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])  # interrupted in the middle of a record
    with pytest.warns(UserWarning, match=r"samples.jsonl.*partial last line.*generated again"):
        healed = evaluate(model, bench, **run)
    assert healed["timing"]["samples_generated"] == 1
    assert len(_lines(samples)) == 6  # every line is a whole record: the new one was not glued to the cut one
    assert evaluate(model, bench, **run)["timing"]["samples_generated"] == 0

    samples.write_text(samples.read_text().rstrip("\n"))  # a whole last record, only its newline missing: kept
    assert evaluate(model, bench, **run)["timing"]["samples_generated"] == 0
    assert samples.read_text().endswith("\n") and len(_lines(samples)) == 6


@pytest.mark.parametrize("path", ["./nope", "../nope/model", "/nonexistent/model", "~/nonexistent-model",
                                  "outputs/run1/checkpoint-500"])
def test_a_missing_model_path_is_named(path):
    with pytest.raises(FileNotFoundError, match=r"model path .* does not exist"):
        evaluate(path, {"toy": _toy_benchmark()})


@pytest.mark.parametrize("accepted, refused", [
    ("Qwen/Qwen2.5-Math-1.5B", "Qwen/Qwen2.5-Math-1.5B/model"),  # a Hub id has one "/"
    ("gpt2", "./gpt2"),
    ("org/local-model", "org/local-model/checkpoint-1"),  # an existing folder that looks like a Hub id
    ("./org", "./org2"),
])
def test_hub_ids_and_existing_paths_are_not_refused(tmp_path, monkeypatch, accepted, refused):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "local-model").mkdir(parents=True)
    generation.check_model_source(accepted)
    generation.check_model_source(str(tmp_path / "org"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        generation.check_model_source(refused)


def _one_line_error(capsys, argv):
    code = eval_cli.main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_cli_errors_are_one_line(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "o")]
    line = _one_line_error(capsys, ["--model", "./nope", "--benchmarks", "aime24", *out])
    assert line.startswith("disco-trl eval: ") and "./nope" in line and "does not exist" in line
    assert not (tmp_path / "o").exists()
    line = _one_line_error(capsys, ["--model", str(tmp_path), "--num-samples", "0", *out])
    assert "num_samples must be >= 1" in line
    bad = tmp_path / "empty.jsonl"
    bad.write_text("")
    line = _one_line_error(capsys, ["--model", str(tmp_path), "--benchmarks", str(bad), *out])
    assert str(bad) in line and "is empty" in line


# ---------------------------------------------------------------------------------------------------------------------
# Reliability: the model is compared by what it is, options refused, one run per folder, damaged records repaired
# ---------------------------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def _train_into(model_dir):
    """A real retraining into the same folder: three SGD steps on a language-model loss, then save_pretrained."""
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batch = tokenizer(["Compute 12 + 7 * 3 - 5. 7 * 3 = 21. The answer is \\boxed{28}."], return_tensors="pt")
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    for _ in range(3):
        model(**batch, labels=batch["input_ids"]).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(model_dir)


def _results(folder):
    return json.loads((folder / "results.json").read_text())


def test_replaced_weights_are_not_taken_for_the_old_ones(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """eval, retrain into the same folder, eval again: the old samples are not reported as the new model's."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    rows = [{"problem": f"Compute {a} + 3.", "answer": str(a + 3)} for a in range(3)]
    datasets.Dataset.from_list(rows).save_to_disk("toybench")  # a save_to_disk folder as a benchmark
    command = ["--benchmarks", "toybench", "--num-samples", "2", "--max-new-tokens", "8", "--output-dir", "ev",
               "--no-progress"]
    assert eval_cli.main(["--model", "./m", *command]) == 0
    assert _results(tmp_path / "ev")["timing"]["samples_generated"] == 6
    old = _completions(tmp_path / "ev")
    for same in ("m", str(tmp_path / "m"), "./m/"):  # one folder, however it is named
        assert eval_cli.main(["--model", same, *command]) == 0
        timing = _results(tmp_path / "ev")["timing"]
        assert timing["samples_generated"] == 0 and timing["samples_reused"] == 6
    _train_into(tmp_path / "m")
    capsys.readouterr()
    before = (tmp_path / "ev" / "samples.jsonl").read_bytes()
    line = _one_line_error(capsys, ["--model", "./m", *command])
    assert "cannot be reused" in line and "model.safetensors" in line and "--overwrite" in line, line
    assert (tmp_path / "ev" / "samples.jsonl").read_bytes() == before

    assert eval_cli.main(["--model", "./m", *command, "--overwrite"]) == 0
    assert _results(tmp_path / "ev")["timing"]["samples_generated"] == 6
    new = _completions(tmp_path / "ev")
    assert new.keys() == old.keys() and new != old
    assert eval_cli.main(["--model", "./m", *command[:-3], "--output-dir", "fresh", "--no-progress"]) == 0
    assert _completions(tmp_path / "fresh") == new  # what is reported is the retrained model's


def test_in_memory_weights_are_compared_byte_for_byte(tmp_path):
    tokenizer = build_tokenizer()
    model = build_tiny_qwen2(tokenizer, hidden_size=32, num_hidden_layers=1, intermediate_size=64)
    bench = {"toy": _toy_benchmark()}
    run = dict(tokenizer=tokenizer, num_samples=2, max_new_tokens=6, output_dir=tmp_path, progress=False)
    assert evaluate(model, bench, **run)["timing"]["samples_generated"] == 4
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.model.norm.weight[0] += 1e-3  # one number of one tensor
    with pytest.raises(ValueError, match=r"another model.*in-memory object with weights"):
        evaluate(model, bench, **run)
    model.load_state_dict(saved)
    again = evaluate(model, bench, **run)  # the same bytes again: the same model
    assert again["timing"]["samples_generated"] == 0 and again["timing"]["samples_reused"] == 4

    config_path = tmp_path / "config.json"  # a folder written when only the model's name was recorded
    config_path.write_text(json.dumps({k: v for k, v in json.loads(config_path.read_text()).items()
                                       if k != "model_identity"}))
    with pytest.raises(ValueError, match="recorded the model by its name only"):
        evaluate(model, bench, **run)


def test_identity_of_hub_ids_folders_and_tokenizers(tiny_model_dir, tmp_path):
    assert identity.model_identity("Qwen/Qwen2.5-Math-1.5B") == {"model": {"hub": "Qwen/Qwen2.5-Math-1.5B"}}
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    (tmp_path / "m" / "README.md").write_text("notes")  # not part of the model
    (tmp_path / "m" / "sub").mkdir()
    first = identity.model_identity(tmp_path / "m", tokenizer=str(tiny_model_dir))
    assert "README.md" not in first["model"]["local"] and "model.safetensors" in first["model"]["local"]
    assert first["tokenizer"] == {"local": identity.file_fingerprints(tiny_model_dir)}
    (tmp_path / "m" / "README.md").write_text("other notes")
    assert identity.model_identity(tmp_path / "m", tokenizer=str(tiny_model_dir)) == first
    config = tmp_path / "m" / "config.json"
    config.write_text(config.read_text().replace('"rms_norm_eps": 1e-06', '"rms_norm_eps": 1e-05'))
    changed = identity.model_identity(tmp_path / "m", tokenizer=str(tiny_model_dir))
    assert changed != first
    assert identity.describe_change(first, changed).startswith("the model's files changed since (config.json:")


def _tiny_benchmark_file(tmp_path, n=2):
    path = tmp_path / "bench.jsonl"
    path.write_text("".join(json.dumps({"problem": f"Compute {a} + 1.", "answer": str(a + 1)}) + "\n"
                            for a in range(n)))
    return path


@pytest.mark.parametrize("option, expected", [
    (["--dtype", "float99"], r"dtype \(--dtype\) must be one of auto, bfloat16, float16, float32; got 'float99'"),
    (["--device", "gpu"], r"device \(--device\) 'gpu' is not a device name"),
    (["--device", "cuda:63"], r"device \(--device\) 'cuda:63': (no cuda device is available|only \d+ cuda)"),
    (["--limit", "0"], r"limit \(--limit\) must be >= 1"),
    (["--limit", "-1"], r"limit \(--limit\) must be >= 1"),
    (["--k", "0"], r"k_values \(--k\) must be integers from 1 to num_samples=2"),
    (["--k", "-1"], r"k_values \(--k\) must be integers from 1 to num_samples=2"),
    (["--k", "1", "3"], r"k_values \(--k\) must be integers from 1 to num_samples=2 .*got \[1, 3\]"),
    (["--batch-size", "0"], r"batch_size \(--batch-size\) must be >= 1"),
])
def test_bad_options_are_one_line_before_any_model_loads(tmp_path, capsys, option, expected):
    not_a_model = tmp_path / "empty-folder"  # loading it would fail with another message: the check comes first
    not_a_model.mkdir()
    argv = ["--model", str(not_a_model), "--benchmarks", str(_tiny_benchmark_file(tmp_path)), "--num-samples", "2",
            "--output-dir", str(tmp_path / "o"), *option]
    code = eval_cli.main(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert re.search(expected, lines[0]) and lines[0].startswith("disco-trl eval: error: "), lines[0]
    assert not (tmp_path / "o").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a build or machine without CUDA")
def test_device_cuda_without_cuda_names_the_way_out(tmp_path, capsys):
    line = _one_line_error(capsys, ["--model", str(tmp_path), "--device", "cuda", "--output-dir", str(tmp_path / "o")])
    assert "no cuda device is available" in line and "--device cpu" in line


def test_the_output_folder_is_not_the_model_folder(tiny_model_dir, tmp_path, capsys):
    shutil.copytree(tiny_model_dir, tmp_path / "m")
    line = _one_line_error(capsys, ["--model", str(tmp_path / "m"), "--output-dir", str(tmp_path / "m" / ".")])
    assert "is the model's own folder" in line


def _eval_process(model_dir, bench, out, *extra, **popen):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = [sys.executable, "-m", "disco_trl.cli", "eval", "--model", str(model_dir), "--benchmarks", str(bench),
            "--max-new-tokens", "16", "--batch-size", "4", "--output-dir", str(out), "--no-progress", *extra]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.slow
def test_a_second_eval_into_a_held_folder_is_refused(tiny_model_dir, tmp_path):
    bench, out = _tiny_benchmark_file(tmp_path, n=1), tmp_path / "ev"
    first = _eval_process(tiny_model_dir, bench, out, "--num-samples", "100000")  # runs until killed
    try:
        deadline = time.monotonic() + 240
        while not ((out / "samples.jsonl").is_file() and (out / "samples.jsonl").stat().st_size):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first evaluation did not start generating"
            time.sleep(0.5)
        second = _eval_process(tiny_model_dir, bench, out, "--num-samples", "2")
        _, err = second.communicate(timeout=240)
        assert first.poll() is None  # the first still held the folder when the second was refused
        lines = [line for line in err.splitlines() if line.strip()]
        assert second.returncode == 1 and len(lines) == 1, err
        assert "is in use by an evaluation (disco-trl eval)" in lines[0] and f"pid {first.pid}" in lines[0]
    finally:
        first.kill()
        first.communicate()
    # a lock left by a killed evaluation does not block: the next one takes it over and resumes
    third = _eval_process(tiny_model_dir, bench, out, "--num-samples", "2")
    _, err = third.communicate(timeout=240)
    assert third.returncode == 0 and "taking over the lock" in err, err
    keys = [(r["benchmark"], r["problem_id"], r["sample"]) for r in _lines(out / "samples.jsonl")]
    assert len(keys) == len(set(keys)) and {k[2] for k in keys} >= {0, 1}
    assert not (out / ".disco-lock").exists()


def test_damaged_lines_are_dropped_once_and_generated_again(tiny, tmp_path):
    model, tokenizer = tiny
    bench = {"toy": _toy_benchmark()}
    run = dict(tokenizer=tokenizer, num_samples=3, max_new_tokens=6, output_dir=tmp_path, progress=False)
    evaluate(model, bench, **run)
    samples = tmp_path / "samples.jsonl"
    lines = samples.read_text().splitlines()
    complete = _completions(tmp_path)
    lines[1] = lines[1][:25] + "#garbage"  # damaged in the middle of the file
    lines[3] = json.dumps({"benchmark": "toy", "problem_id": 1})  # JSON, but not a whole record
    lines.append(lines[4])  # the same record twice (two runs that wrote one folder)
    samples.write_text("\n".join(lines) + "\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        healed = evaluate(model, bench, **run)
    ours = [str(w.message) for w in caught if "samples.jsonl" in str(w.message)]
    assert len(ours) == 1, ours
    assert "dropped 3 damaged or repeated line(s): line 2 (not JSON), line 4 (not a record" in ours[0]
    assert "line 5 (repeated by line 7)" in ours[0] and "generated again" in ours[0]
    assert healed["timing"]["samples_generated"] == 2 and healed["timing"]["samples_reused"] == 4
    assert _completions(tmp_path) == complete and len(_lines(samples)) == 6  # rewritten: one line per sample
    assert not list(tmp_path.glob("*.tmp"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert evaluate(model, bench, **run)["timing"]["samples_generated"] == 0
    assert not [w for w in caught if "samples.jsonl" in str(w.message)]  # repaired once: the next run is silent


def test_two_benchmark_files_of_the_same_name_are_named_apart(tiny, tmp_path):
    """Hub files are often all called test.jsonl: the second no longer replaces the first in results.json."""
    model, tokenizer = tiny
    files = []
    for version, n in (("v1", 2), ("v2", 3)):
        (tmp_path / version).mkdir()
        files.append(_tiny_benchmark_file(tmp_path / version, n=n).rename(tmp_path / version / "test.jsonl"))
    results = evaluate(model, [str(f) for f in files], tokenizer=tokenizer, num_samples=1, max_new_tokens=2,
                       output_dir=tmp_path / "out", progress=False)
    assert {k: v["num_problems"] for k, v in results["benchmarks"].items()} == {"v1/test": 2, "v2/test": 3}
    assert set(_results(tmp_path / "out")["benchmarks"]) == {"v1/test", "v2/test"}
    with pytest.raises(ValueError, match=r"the benchmark 'test' is given more than once"):
        evaluate(model, [str(files[0]), str(files[0])], tokenizer=tokenizer, num_samples=1)


def test_a_model_folder_without_tokenizer_files_is_refused_before_its_weights_load(tiny_model_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    """transformers 5 builds an empty tokenizer from such a folder; generation then failed with "cannot reshape tensor
    of 0 elements"."""
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_model_dir / name, bare / name)
    (bare / "model.safetensors").write_bytes(b"garbage: loading these weights would end in a traceback")
    line = _one_line_error(capsys, ["--model", str(bare), "--benchmarks", str(_tiny_benchmark_file(tmp_path)),
                                    "--output-dir", str(tmp_path / "o"), "--no-progress"])
    assert line.startswith(f"disco-trl eval: error: model folder '{bare}' has no tokenizer files")
    assert not (tmp_path / "o").exists()
    # its tokenizer given separately: fine (the check passes; the garbage weights then fail to load)
    with pytest.raises(Exception, match="(?i)safetensors|header|deserializ") as err:
        evaluate(str(bare), [str(_tiny_benchmark_file(tmp_path))], tokenizer=str(tiny_model_dir), num_samples=1,
                 max_new_tokens=2, backend="transformers", progress=False)
    assert "tokenizer files" not in str(err.value)
