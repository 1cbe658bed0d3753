"""The `math_pass_at_k` metric of HuggingFace `evaluate` (disco_trl/eval/math_pass_at_k.py, disco_trl/eval/scoring.py):
loaded offline from the package, the same numbers as `disco-trl eval` on the same samples, and bad input refused
naming the argument. (The metric loaded from an installed wheel: tests/test_packaging.py.)"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import datasets
import evaluate
import numpy as np
import pytest
from disco_testing import ScriptedGenerator

import disco_trl
from disco_trl.eval import evaluate as disco_evaluate
from disco_trl.eval import metric_path, metrics, pass_at_k, score_completions
from disco_trl.eval import run as eval_run
from disco_trl.toy import build_tiny_qwen2, build_tokenizer


# Completions of three problems, 4 each: exact matches, answers only math-verify accepts (0.5 for \frac{1}{2}, 2^2
# for 4: the grader processes), answers after </think>, no box, wrong answers.
SCRIPT = {
    "2+2?": [r"\boxed{4}", r"<think>\boxed{5}</think> so \boxed{4}", r"\boxed{2^2}", r"\boxed{5}"],  # 3 correct
    "half of 1?": [r"\boxed{0.5}", "no box", r"\boxed{1/3}", r"\boxed{\dfrac{1}{2}}"],  # 2 correct
    "3 times 1?": [r"\boxed{4}", r"\boxed{31}", "3", r"\boxed{}"],  # none correct
}
SOLUTIONS = ["4", r"\frac{1}{2}", "3"]


@pytest.fixture(scope="module")
def math_metric():
    return evaluate.load(metric_path(), keep_in_memory=True)


@pytest.fixture
def no_network(monkeypatch):
    """Offline, as for a user without the Hub; every connection attempt is recorded (and fails)."""
    attempts = []

    def refuse(*args):
        attempts.append(args)
        raise OSError(f"no network in this test (tried {args})")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)  # a name looked up: before any connection is tried
    return attempts


def test_the_metric_loads_offline_from_the_package(no_network):
    assert Path(metric_path()).is_relative_to(Path(disco_trl.__file__).parent)
    metric = evaluate.load(metric_path(), keep_in_memory=True)
    assert metric.name == "math_pass_at_k" and "Pass@k" in metric.description
    result = metric.compute(predictions=[[r"\boxed{4}", r"\boxed{5}"], [r"\boxed{\frac{1}{2}}", "no answer"]],
                            references=["4", "0.5"], k=[1, 2])
    assert result == {"num_problems": 2, "samples_per_problem": 2, "num_correct": [1, 1], "pass@1": 0.5,
                      "pass@2": 1.0}
    assert no_network == []


def test_disco_trl_eval_and_the_metric_give_identical_numbers(math_metric, tmp_path, monkeypatch):
    """One run of `disco-trl eval` (its `evaluate`, the generator scripted), then the metric on its samples.jsonl:
    the same per-problem verdicts and the same numbers, exactly, through the one `pass_at_k`."""
    calls = []

    def recording_pass_at_k(n, c, k):  # the real estimator; the calls are recorded
        calls.append((n, c, k))
        return pass_at_k(n, c, k)

    monkeypatch.setattr(metrics, "pass_at_k", recording_pass_at_k)
    monkeypatch.setattr(eval_run, "make_generator", lambda *a, **k: ScriptedGenerator(
        {problem: list(completions) for problem, completions in SCRIPT.items()}, batch_size=5))
    tokenizer = build_tokenizer()
    bench = datasets.Dataset.from_dict({"prompt": [f"Q: {p}" for p in SCRIPT], "solution": SOLUTIONS,
                                        "problem": list(SCRIPT)})
    results = disco_evaluate(build_tiny_qwen2(tokenizer), {"toy": bench}, tokenizer=tokenizer, num_samples=4,
                             output_dir=tmp_path, progress=False)
    eval_calls, calls[:] = list(calls), []

    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    samples.sort(key=lambda s: (s["problem_id"], s["sample"]))
    predictions = [[s["completion"] for s in samples if s["problem_id"] == p] for p in range(3)]
    references = [next(s["solution"] for s in samples if s["problem_id"] == p) for p in range(3)]
    assert predictions == list(SCRIPT.values()) and references == SOLUTIONS
    computed = math_metric.compute(predictions=predictions, references=references)

    toy = results["benchmarks"]["toy"]
    assert toy["num_correct"] == [3, 2, 0]
    assert computed == toy  # pass@1, pass@2, pass@4 (the same default k), the counts: all equal, not just close
    assert json.loads((tmp_path / "results.json").read_text())["benchmarks"]["toy"] == computed
    assert calls == eval_calls and len(calls) == 3 * 3  # pass@1, pass@2 and pass@4 of each problem, one estimator
    assert score_completions(predictions, references, k=[1, 4]) == {
        key: toy[key] for key in ("num_problems", "samples_per_problem", "num_correct", "pass@1", "pass@4")}


def test_one_completion_per_problem_ragged_counts_and_batches(math_metric):
    flat = math_metric.compute(predictions=[r"\boxed{4}", r"\boxed{0.5}", r"\boxed{2}"],
                               references=["4", r"\frac{1}{2}", "3"])
    assert flat == {"num_problems": 3, "samples_per_problem": 1, "num_correct": [1, 1, 0], "pass@1": 2 / 3}

    ragged = math_metric.compute(predictions=[[r"\boxed{4}"], [r"\boxed{1}", r"\boxed{3}", r"\boxed{3}"]],
                                 references=["4", "3"], k=np.int64(1))
    assert ragged["samples_per_problem"] == [1, 3] and ragged["num_correct"] == [1, 2]
    assert ragged["pass@1"] == (1 + 2 / 3) / 2

    predictions, references = list(SCRIPT.values()), SOLUTIONS
    for start in range(0, 3, 2):  # the usual evaluate loop: add_batch, then compute
        math_metric.add_batch(predictions=predictions[start : start + 2], references=references[start : start + 2])
    assert math_metric.compute(k=3) == score_completions(predictions, references, k=3)


@pytest.mark.parametrize("inputs, message", [
    (dict(predictions=[[r"\boxed{1}"]], references=["1", "2"]), r"number of predictions \(1\) and references \(2\)"),
    (dict(predictions=[], references=[]), "predictions is empty"),
    (dict(predictions=[["a", "b"], ["c"]], references=["1", "2"], k=2),
     r"k=2: each k of pass@k must be an integer from 1 to 1, the number of completions of predictions\[1\]"),
    (dict(predictions=[["a", "b"]], references=["1"], k=[1, 4]), r"k=\[1, 4\]: .* from 1 to 2"),
    (dict(predictions=[["a"]], references=["1"], k=0), "k=0"),
    (dict(predictions=[["a"]], references=["1"], k=[]), r"k=\[\]"),
    (dict(predictions=[["a", "b"]], references=["1"], k=1.0), r"k=1.0"),
    (dict(predictions=[["a"], []], references=["1", "2"]), r"predictions\[1\] is empty"),
    (dict(predictions=[["a"], ["b"]], references=["1", " "]), r"references\[1\] must be .* non-empty string"),
    (dict(predictions=[["a"]], references=[None]), "Input references: None"),
])
def test_bad_input_is_refused_naming_the_argument(math_metric, inputs, message):
    with pytest.raises(ValueError, match=message):
        math_metric.compute(**inputs)


@pytest.mark.parametrize("predictions, references, message", [
    ("\\boxed{1}", ["1"], "predictions must be a list with one list of completions per problem"),
    (["\\boxed{1}"], ["1"], r"predictions\[0\] must be the list of that problem's completions, got str"),
    ([["a", None]], ["1"], r"predictions\[0\]\[1\] must be a completion's text \(str\), got None"),
    ([["a"], ["b"]], ["1"], "predictions has 2 problems but references has 1 answers"),
    ([["a"]], "1", "references must be a list"),
    ([["a"]], [27], r"references\[0\] must be the problem's final answer as a non-empty string"),
])
def test_score_completions_refuses_bad_input_naming_the_argument(predictions, references, message):
    with pytest.raises(ValueError, match=message):
        score_completions(predictions, references)
