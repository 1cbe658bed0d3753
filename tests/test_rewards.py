"""Tests for disco_trl.rewards: extraction, equivalence, robustness (timeouts, threads, processes), speed and the
real benchmark answers (gold answers accepted, other problems' answers rejected)."""

from __future__ import annotations

import mmap
import multiprocessing
import os
import signal
import threading
import time

import pytest
import torch.utils.data

from disco_trl.data import BENCHMARKS, load_math_dataset
from disco_trl.rewards import (
    BoxedMathReward,
    MathGraderPool,
    boxed_math_reward,
    completion_text,
    extract_boxed_answer,
    grade_answers,
    grading,
    pool,
    shutdown_grader_pool,
)


# ---------------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"so the answer is \boxed{42}.", "42"),
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
        (r"first \boxed{1} then \boxed{2}", "2"),  # the last box wins
        (r"\boxed{\{1, 2\}}", r"\{1, 2\}"),  # escaped braces are not grouping
        (r"\boxed{\text{(B)}}", r"\text{(B)}"),
        (r"\boxed{\boxed{7}}", "7"),  # a box that only wraps a box
        (r"$\boxed 5$", "5"),  # TeX's brace-less argument
        (r"\fbox{9}", "9"),
        (r"\boxed { 3 }", "3"),
        (r"\boxed{3", None),  # truncated: unbalanced
        (r"\boxed{}", None),
        ("no box here: 42", None),
        ("", None),
        (r"<think>maybe \boxed{1}</think> final: \boxed{2}", "2"),
        (r"<think>I guess \boxed{1}</think> I am not sure.", None),  # only the text after </think> counts
        (r"<think>unfinished \boxed{1}", "1"),  # no </think>: the whole text
        (r"\boxed{a}\boxeddots", "a"),  # \boxeddots is another macro
    ],
)
def test_extract_boxed_answer(text, expected):
    assert extract_boxed_answer(text) == expected


def test_extract_after_think_can_be_disabled():
    text = r"<think>\boxed{1}</think> no box after"
    assert extract_boxed_answer(text) is None
    assert extract_boxed_answer(text, after_think=False) == "1"


def test_extraction_is_linear_on_megabyte_text():
    big = "x" * 3_000_000 + r"\boxed{12}" + "{" * 200_000  # long text, many stray braces after the box
    start = time.perf_counter()
    assert extract_boxed_answer(big) == "12"
    unbalanced = r"\boxed{" + "{" * 1_000_000
    assert extract_boxed_answer(unbalanced) is None
    assert time.perf_counter() - start < 2.0


def test_completion_text_forms():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert completion_text([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]) == "a"
    parts = [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    assert completion_text([{"role": "assistant", "content": parts}]) == "ab"
    assert completion_text(None) == ""


# ---------------------------------------------------------------------------------------------------------------------
# Grading
# ---------------------------------------------------------------------------------------------------------------------

EQUIVALENT = [
    ("28", r"28"),
    ("27", r"27.0"),  # AMC stores answers as floats
    ("1000", r"1000"),
    (r"\frac{1}{2}", r"0.5"),
    (r"\frac{1}{2}", r"\dfrac{1}{2}"),
    (r"\frac{4}{3}", r"\frac43"),
    (r"2\sqrt{2}", r"\sqrt{8}"),
    (r"(1, 2)", r"(1,2)"),
    (r"\left( 3, \frac{\pi}{2} \right)", r"(3, \frac{\pi}{2})"),
    (r"[-2,7]", r"[-2, 7]"),
    (r"x^2+1", r"1+x^2"),
    ("5", "x = 5"),
    (r"\pi", r"\pi"),
    (r"6 - 5i", r"6-5i"),
]
NOT_EQUIVALENT = [
    ("28", "27"),
    ("28", "28.5"),
    (r"\frac{1}{2}", r"\frac{1}{3}"),
    (r"(1, 2)", r"(2, 1)"),
    (r"x^2+1", r"x^2-1"),
    (r"2\sqrt{2}", r"3"),
    ("5", r"\text{five}"),
]


def test_equivalent_answers_score_one():
    golds = [g for g, _ in EQUIVALENT]
    completions = [f"Reasoning... The final answer is $\\boxed{{{a}}}$." for _, a in EQUIVALENT]
    assert boxed_math_reward(completions, golds) == [1.0] * len(EQUIVALENT)


def test_different_answers_score_zero():
    golds = [g for g, _ in NOT_EQUIVALENT]
    completions = [f"The answer is \\boxed{{{a}}}" for _, a in NOT_EQUIVALENT]
    assert boxed_math_reward(completions, golds) == [0.0] * len(NOT_EQUIVALENT)


def test_plain_and_conversational_completions_agree():
    golds = [g for g, _ in EQUIVALENT + NOT_EQUIVALENT]
    texts = [f"\\boxed{{{a}}}" for _, a in EQUIVALENT + NOT_EQUIVALENT]
    plain = boxed_math_reward(texts, golds)
    chat = boxed_math_reward([[{"role": "assistant", "content": t}] for t in texts], golds)
    assert plain == chat == [1.0] * len(EQUIVALENT) + [0.0] * len(NOT_EQUIVALENT)


def test_answer_must_follow_think():
    gold = ["12"]
    assert boxed_math_reward([r"<think>\boxed{12}</think> so \boxed{13}"], gold) == [0.0]
    assert boxed_math_reward([r"<think>\boxed{13}</think> so \boxed{12}"], gold) == [1.0]
    assert boxed_math_reward(["12 without any box"], gold) == [0.0]


def test_trl_reward_signature_and_log_extra():
    logged = {}
    scores = boxed_math_reward(
        completions=[[{"role": "assistant", "content": r"\boxed{3}"}], [{"role": "assistant", "content": "none"}]],
        solution=["3", "3"],
        prompts=[[{"role": "user", "content": "q"}]] * 2,
        completion_ids=[[1, 2], [3]],
        trainer_state=None,
        log_extra=lambda name, values: logged.setdefault(name, values),
        log_metric=lambda *a, **k: None,
    )
    assert scores == [1.0, 0.0]
    assert logged["boxed_answer"] == ["3", "[no boxed answer]"]


def test_bad_inputs_are_reported_clearly():
    with pytest.raises(ValueError, match="solution"):
        boxed_math_reward([r"\boxed{1}"])
    with pytest.raises(ValueError, match="2 completions but 3 solutions"):
        boxed_math_reward([r"\boxed{1}", r"\boxed{2}"], ["1", "2", "3"])


def test_spaces_between_digits_are_significant():
    """`2 3` is not `23`: the fast path must not strip a space that separates digits (math-verify decides)."""
    assert grading.quick_grade("23", "2 3") is None and grading.quick_grade("2 3", "23") is None
    assert boxed_math_reward([r"\boxed{2 3}", r"\boxed{23}", r"\boxed{1 000}"], ["23", "2 3", "1000"]) == [0.0] * 3
    assert boxed_math_reward([r"x = \boxed{2 3}"], ["x=23"]) == [0.0]


def test_ordinary_spacing_still_grades_on_the_fast_path():
    shutdown_grader_pool()
    golds = ["23", "23", "(1, 2)", "2, 3", r"\frac{1}{2}", "2 3", "1000", "x^2 + 1"]
    answers = [r"\boxed{ 23 }", r"\boxed{23.}", r"\boxed{(1,2)}", r"\boxed{2,3}", r"\boxed{\dfrac{1}{2}}",
               r"\boxed{2  3}", r"\boxed{1\,000}", r"\boxed{x^2+1}"]
    assert boxed_math_reward(answers, golds) == [1.0] * len(golds)
    assert pool._POOLS == {}, "these answers are decided without math-verify, as before"
    assert boxed_math_reward([r"\boxed{2,300}"], ["2300"]) == [1.0]  # math-verify, as before


def test_in_process_mode_matches_worker_pool(monkeypatch):
    pairs = EQUIVALENT + NOT_EQUIVALENT
    answers, golds = [a for _, a in pairs], [g for g, _ in pairs]
    pooled = grade_answers(answers, golds, fast_path=False)
    monkeypatch.setenv("DISCO_REWARD_WORKERS", "0")
    inline = grade_answers(answers, golds, fast_path=False)
    assert pooled == inline == [1.0] * len(EQUIVALENT) + [0.0] * len(NOT_EQUIVALENT)


def test_configured_reward_object_is_picklable():
    import pickle

    reward = pickle.loads(pickle.dumps(BoxedMathReward(timeout=3, max_workers=1, after_think=False)))
    assert reward.__name__ == "boxed_math_reward"
    assert reward([r"<think>\boxed{0.5}</think>", r"\boxed{2}"], [r"\frac12", "3"]) == [1.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------------
# Robustness: bounded time, threads, processes
# ---------------------------------------------------------------------------------------------------------------------

PATHOLOGICAL = [
    r"\boxed{10^{10^{10}}}",  # math-verify's own (signal) timeout ends these in the worker
    r"\boxed{(10^{8})!}",
    r"\boxed{\binom{10^{9}}{10^{5}}}",
    r"\boxed{2^{1000000000}}",
    r"\boxed{(x+1)^{300}-(x-1)^{300}}",
    r"\boxed{" + "(" * 400 + "1" + ")" * 400 + "}",  # deep nesting
    r"\boxed{" + "{" * 3000 + "1" + "}" * 3000 + "}",  # longer than any answer: rejected before parsing
    r"\boxed{" + "1+" * 450 + "1}",
    r"\boxed{" + "9" * 5000 + "}",  # a 5,000-digit integer (over Python's int-to-str limit)
    r"\boxed{\frac{1}{2}",  # unbalanced
    r"\boxed{\frac{\frac{\frac{" + "x" * 100,
    "z" * 2_000_000,  # a megabyte string without a box
    "{" * 1_000_000 + r"\boxed{" + "}" * 10,
]


def _bound(n_slow: int) -> float:
    # each answer may use up to the per-answer deadline; answers run in parallel on the workers; plus slack for a
    # loaded 2-core machine and for restarting killed workers
    return pool.DEFAULT_TIMEOUT_S * (n_slow / 2 + 1) + 15.0


def test_pathological_answers_score_zero_in_bounded_time():
    start = time.perf_counter()
    scores = boxed_math_reward(PATHOLOGICAL, ["5"] * len(PATHOLOGICAL))
    elapsed = time.perf_counter() - start
    assert scores == [0.0] * len(PATHOLOGICAL)
    assert elapsed < _bound(5)


def test_bounded_from_a_non_main_thread():
    result: dict = {}

    def run():
        try:
            result["scores"] = boxed_math_reward(
                [r"\boxed{(10^{8})!}", r"\boxed{\frac{1}{2}}", r"\boxed{10^{10^{10}}}"], ["5", "0.5", "5"]
            )
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=run)
    start = time.perf_counter()
    thread.start()
    thread.join(timeout=_bound(2))
    assert not thread.is_alive(), "grading from a thread did not finish in bounded time"
    assert "error" not in result, result.get("error")
    assert result["scores"] == [0.0, 1.0, 0.0]
    assert time.perf_counter() - start < _bound(2)


def _child(queue):
    queue.put(boxed_math_reward([r"\boxed{\frac{2}{4}}", r"\boxed{10^{10^{10}}}", r"\boxed{3}"], ["0.5", "5", "4"]))


def test_works_in_a_forked_child_process_after_the_parent_started_workers():
    assert grade_answers([r"\frac{2}{4}"], ["0.5"], fast_path=False) == [1.0]  # the parent's pool is up
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    scores = queue.get(timeout=_bound(2) + 10)
    proc.join(timeout=10)
    assert scores == [1.0, 0.0, 0.0]
    assert proc.exitcode == 0
    assert grade_answers([r"\frac{3}{6}"], ["0.5"], fast_path=False) == [1.0]  # the parent's pool still works


def test_hard_deadline_kills_and_replaces_a_stuck_worker():
    pool = MathGraderPool(max_workers=1, timeout=0.3)
    try:
        start = time.perf_counter()
        verdicts = pool.grade([("5", r"10^{10^{10}}"), ("0.5", r"\frac{1}{2}")])
        elapsed = time.perf_counter() - start
        assert verdicts == [False, True]
        assert pool.restarts >= 1  # the first answer ran past 0.3 s: its worker was killed
        assert elapsed < 10.0
        assert pool.grade([("2", r"\sqrt{4}")]) == [True]  # the replacement worker serves
    finally:
        pool.shutdown()


def test_a_dead_worker_is_replaced():
    pool = MathGraderPool(max_workers=1, timeout=5)
    try:
        assert pool.grade([("0.5", r"\frac{1}{2}")]) == [True]
        (worker,) = pool._workers
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=5)
        assert pool.grade([("0.5", r"\frac{2}{4}"), ("3", "4")]) == [True, False]
    finally:
        pool.shutdown()


class _GradedInTheWorker(torch.utils.data.Dataset):
    """A dataset graded inside a DataLoader worker: a forked, *daemonic* process (daemons may not start
    multiprocessing children, so a multiprocessing-based pool cannot start its workers there)."""

    items = [(r"\boxed{\frac{2}{4}}", "0.5"), (r"\boxed{10^{10^{10}}}", "5"), (r"\boxed{\sqrt{8}}", r"2\sqrt{2}")]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, k):
        text, gold = self.items[k]
        return (multiprocessing.current_process().daemon, boxed_math_reward([text], [gold])[0])


def test_works_in_a_torch_dataloader_worker():
    assert grade_answers([r"\frac{2}{4}"], ["0.5"], fast_path=False) == [1.0]  # the parent's pool is up
    start = time.perf_counter()
    got = list(torch.utils.data.DataLoader(_GradedInTheWorker(), num_workers=1, batch_size=None))
    assert [daemon for daemon, _ in got] == [True] * 3, "the items were not graded in a daemonic worker"
    assert [score for _, score in got] == [1.0, 0.0, 1.0]
    assert time.perf_counter() - start < _bound(1)


def test_the_worker_memory_cap_does_not_depend_on_the_callers_size():
    """A trainer's address space is large (a model's weights, CUDA's reservations): the graders' 3 GiB cap
    must leave them room, so they are fresh interpreters rather than copies of the caller."""
    try:  # 4 GiB of address space reserved and never touched (PROT_NONE), as CUDA reserves it: no memory used
        reserved = mmap.mmap(-1, 4 << 30, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=0)
    except OSError as exc:  # pragma: no cover - an address-space limit on the test process itself
        pytest.skip(f"cannot reserve 4 GiB of address space here: {exc}")
    grader = MathGraderPool(max_workers=1, timeout=5)
    try:
        assert grader.grade([("0.5", r"\frac{2}{4}"), (r"2\sqrt{2}", r"\sqrt{8}"), ("x^2+1", "1+x^2")]) == [True] * 3
        (worker,) = grader._workers
        with open(f"/proc/{worker.proc.pid}/limits") as limits:
            cap = next(int(line.split()[3]) for line in limits if line.startswith("Max address space"))
        assert cap <= 3 * 1024**3
    finally:
        grader.shutdown()
        reserved.close()


# ---------------------------------------------------------------------------------------------------------------------
# Speed: the common case never starts a process
# ---------------------------------------------------------------------------------------------------------------------


def test_small_integer_batches_are_fast_and_start_no_process():
    shutdown_grader_pool()
    golds = [str(n) for n in range(32)]
    completions = [
        f"<think>{n} + 1 - 1 = {n}</think> The answer is \\boxed{{{n if n % 3 else n + 1}}}." for n in range(32)
    ]
    expected = [0.0 if n % 3 == 0 else 1.0 for n in range(32)]
    assert boxed_math_reward(completions, golds) == expected
    repeats = 200
    start = time.perf_counter()
    for _ in range(repeats):
        boxed_math_reward(completions, golds)
    per_completion = (time.perf_counter() - start) / (repeats * len(completions))
    assert per_completion < 2e-4, f"{per_completion * 1e3:.3f} ms per completion"
    assert pool._POOLS == {}, "a batch of plain integer answers must not start grader processes"


def test_large_batches_use_several_workers():
    shutdown_grader_pool()
    golds = [rf"\frac{{{k}}}{{{k + 1}}}" for k in range(64)]
    answers = [rf"\frac{{{2 * k}}}{{{2 * k + 2}}}" for k in range(64)]
    assert grade_answers(answers, golds) == [1.0] * 64
    shared = pool.shared_pool()
    assert shared.num_workers == min(shared.max_workers, 64 // pool.ANSWERS_PER_WORKER)


# ---------------------------------------------------------------------------------------------------------------------
# Real benchmark answers
# ---------------------------------------------------------------------------------------------------------------------

# Gold answers that math-verify alone accepts (gold parsed as $gold$, answer as \boxed{gold}), as measured
# when the fast path was written.
MATH_VERIFY_ALONE = {"aime24": 30, "aime25": 30, "amc23": 40, "math500": 500, "minerva": 270, "olympiadbench": 673}


@pytest.fixture(scope="module")
def benchmark_solutions():
    return {name: load_math_dataset(name, conversational=False)["solution"] for name in BENCHMARKS}


@pytest.mark.needs_benchmarks
def test_gold_answers_are_accepted(benchmark_solutions):
    for name, solutions in benchmark_solutions.items():
        completions = [f"<think>...</think> The final answer is $\\boxed{{{s}}}$." for s in solutions]
        assert boxed_math_reward(completions, solutions) == [1.0] * len(solutions), name


@pytest.mark.needs_benchmarks
def test_gold_answers_through_math_verify_alone(benchmark_solutions):
    """The same sweep with the fast path off: every gold answer goes through the math-verify workers."""
    for name, solutions in benchmark_solutions.items():
        scores = grade_answers(solutions, solutions, fast_path=False)
        accepted = int(sum(scores))
        assert accepted >= MATH_VERIFY_ALONE[name], (name, accepted, [s for s, x in zip(solutions, scores) if not x])
        assert accepted == len(solutions), (name, [s for s, x in zip(solutions, scores) if not x])


def _shifted_false_accepts(solutions: list[str], shift: int = 1) -> tuple[int, int, list]:
    """Grade problem i's gold answer against problem i+shift's reference; count acceptances of different answers."""
    others = solutions[shift:] + solutions[:shift]
    completions = [f"\\boxed{{{s}}}" for s in solutions]
    scores = boxed_math_reward(completions, others)
    norm = grading.normalize_spelling
    accepted = [(a, b) for a, b, x in zip(solutions, others, scores) if x]
    different = [(a, b) for a, b in accepted if norm(a) != norm(b)]
    return len(accepted), len(different), different


@pytest.mark.needs_benchmarks
def test_other_problems_answers_are_rejected_subset(benchmark_solutions):
    """Fast representative subset: AIME, AMC, and the first 60 problems of MATH-500, Minerva and OlympiadBench."""
    total_pairs = total_false = 0
    for solutions in benchmark_solutions.values():
        subset = solutions if len(solutions) <= 40 else solutions[:60]
        _, false, examples = _shifted_false_accepts(subset)
        total_pairs += len(subset)
        total_false += false
    assert total_false <= 0.005 * total_pairs, examples


@pytest.mark.slow
@pytest.mark.needs_benchmarks
def test_other_problems_answers_are_rejected_full(benchmark_solutions):
    """All 1,547 problems, each graded against the next problem's reference (about 25 s on 2 cores)."""
    total_pairs = total_false = 0
    found = []
    for solutions in benchmark_solutions.values():
        _, false, examples = _shifted_false_accepts(solutions)
        total_pairs += len(solutions)
        total_false += false
        found += examples
    # measured: 1 of 1,547 (MATH-500: reference "x=5" accepted for reference "5", which is the same value)
    assert total_false <= 0.005 * total_pairs, found
