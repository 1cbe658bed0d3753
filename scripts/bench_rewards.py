"""Time `boxed_math_reward` on a generation batch: serial (in-process) vs the parallel worker pool.

    flock /tmp/disco-cpu.lock python scripts/bench_rewards.py            # 1,024 completions, prints JSON

The batch is built from the real benchmark answers (MATH-500, Minerva, OlympiadBench): a quarter of the completions
box their own problem's reference answer, the rest box another problem's answer (so most need math-verify: the
hardest case for the grader). A second batch has AIME/AMC-style integer answers only (the common case in training
on DeepScaleR / DAPO-Math-17k), which the fast path decides without math-verify.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import subprocess
import sys
import time

from disco_trl import rewards
from disco_trl.data import load_math_dataset
from disco_trl.rewards import grading


def build_batch(kind: str, size: int, seed: int = 0) -> tuple[list[str], list[str]]:
    names = ["math500", "minerva", "olympiadbench"] if kind == "mixed" else ["aime24", "aime25", "amc23"]
    pool = [s for name in names for s in load_math_dataset(name, conversational=False)["solution"]]
    rng = random.Random(seed)
    completions, solutions = [], []
    for k in range(size):
        i = rng.randrange(len(pool))
        j = i if k % 4 == 0 else rng.randrange(len(pool))
        completions.append(f"<think>Some reasoning about the problem.</think> The final answer is "
                           f"$\\boxed{{{pool[j]}}}$.")
        solutions.append(pool[i])
    return completions, solutions


def run_one(mode: str, kind: str, size: int) -> dict:
    """Runs in a fresh interpreter so that caches and worker pools start cold."""
    env = dict(os.environ)
    env["DISCO_REWARD_WORKERS"] = {"serial": "0", "pool1": "1", "pool2": "2"}[mode]
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, str(size)],
        env=env, capture_output=True, text=True, check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["mode"] = mode
    return result


def child(kind: str, size: int) -> None:
    logging.disable(logging.WARNING)
    completions, solutions = build_batch(kind, size)
    answers = [rewards.extract_boxed_answer(c) for c in completions]
    slow = sum(grading.quick_grade(s, a) is None for s, a in zip(solutions, answers) if a)
    start = time.perf_counter()
    first = rewards.boxed_math_reward(completions, solutions)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    rewards.boxed_math_reward(completions, solutions)
    warm = time.perf_counter() - start
    # new references for the same answers: nothing cached on the reference side
    shifted = solutions[1:] + solutions[:1]
    start = time.perf_counter()
    rewards.boxed_math_reward(completions, shifted)
    warm_new = time.perf_counter() - start
    print(json.dumps(dict(kind=kind, completions=size, need_math_verify=slow, accepted=int(sum(first)),
                          cold_s=round(cold, 3), repeat_s=round(warm, 3), warm_new_refs_s=round(warm_new, 3))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--child", nargs=2, metavar=("KIND", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count()
    rows = []
    for kind in ("mixed", "integer"):
        for mode in ("serial", "pool1", "pool2"):
            row = run_one(mode, kind, args.size)
            rows.append(row)
            print(json.dumps(row), flush=True)
    # fast path: 32 short completions with small integer answers, graded serially in the calling process
    boxed_math_reward = rewards.boxed_math_reward
    golds = [str(n) for n in range(32)]
    completions = [f"<think>{n} - 1 + 1</think> \\boxed{{{n if n % 2 else n + 1}}}" for n in range(32)]
    boxed_math_reward(completions, golds)
    reps = 300
    start = time.perf_counter()
    for _ in range(reps):
        boxed_math_reward(completions, golds)
    per = (time.perf_counter() - start) / (reps * 32)
    print(json.dumps({"fast_path_ms_per_completion": round(per * 1e3, 4), "batch": 32, "cores": cores}))


if __name__ == "__main__":
    main()
