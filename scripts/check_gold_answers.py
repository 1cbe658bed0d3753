"""Sweep the benchmark reference answers through the grader; prints one JSON line per benchmark.

    flock /tmp/disco-cpu.lock python scripts/check_gold_answers.py

Columns:
  math_verify_alone  the reference parsed by math-verify as ``$gold$`` against ``\\boxed{gold}`` (default configs)
  grader_path        our math-verify path alone (fast path off): gold parsed boxed and as-is, answer boxed
  reward             boxed_math_reward on "... \\boxed{gold}" completions (fast path, then math-verify)
  shifted_accepted   problem i's answer graded against problem i+1's reference: accepted pairs, and those whose two
                     references differ as strings (a false acceptance unless the values coincide)
"""

from __future__ import annotations

import json
import logging
import time

from math_verify import parse, verify

from disco_trl import rewards
from disco_trl.data import BENCHMARKS, load_math_dataset
from disco_trl.rewards import grading


def main() -> None:
    logging.disable(logging.WARNING)
    total_start = time.perf_counter()
    for name in BENCHMARKS:
        gold = load_math_dataset(name, conversational=False)["solution"]
        start = time.perf_counter()
        alone = sum(bool(verify(parse(f"${g}$"), parse(f"\\boxed{{{g}}}"))) for g in gold)
        t_alone = time.perf_counter() - start
        start = time.perf_counter()
        path = int(sum(rewards.grade_answers(gold, gold, fast_path=False)))
        t_path = time.perf_counter() - start
        completions = [f"<think>...</think> The final answer is $\\boxed{{{g}}}$." for g in gold]
        start = time.perf_counter()
        reward = int(sum(rewards.boxed_math_reward(completions, gold)))
        t_reward = time.perf_counter() - start
        others = gold[1:] + gold[:1]
        start = time.perf_counter()
        shifted = rewards.boxed_math_reward([f"\\boxed{{{g}}}" for g in gold], others)
        t_shift = time.perf_counter() - start
        accepted = [(a, b) for a, b, x in zip(gold, others, shifted) if x]
        different = [(a, b) for a, b in accepted if grading.normalize_spelling(a) != grading.normalize_spelling(b)]
        print(json.dumps({
            "benchmark": name, "problems": len(gold),
            "math_verify_alone": alone, "grader_path": path, "reward": reward,
            "shifted_accepted": len(accepted), "shifted_accepted_different": different,
            "seconds": {"math_verify_alone_serial": round(t_alone, 2), "grader_path": round(t_path, 2),
                        "reward": round(t_reward, 2), "shifted": round(t_shift, 2)},
        }), flush=True)
    print(json.dumps({"total_seconds": round(time.perf_counter() - total_start, 1)}))


if __name__ == "__main__":
    main()
