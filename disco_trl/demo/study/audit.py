"""Recompute, from the files of the superseded first study (docs/study/v1/) and of the comparison, every number that
docs/study.md and docs/comparison.md state about them (the corrections of study v2 included):

    python -m disco_trl.demo.study.audit            # reads docs/study/v1, docs/comparison, docs/skipping

Each line is `name: value` and says which files it reads. Nothing is trained.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys

from ..plots import start_end
from . import stats
from .report import quantile


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _runs(folder: str, pattern: str) -> list[dict]:
    return [_load(p) for p in sorted(glob.glob(os.path.join(folder, pattern)))]


def _at(run: dict, step: int) -> float:
    return next(h["pass@1"] for h in run["eval_history"] if h["step"] == step)


def dro_and_hinge(v1: str) -> list[str]:
    """DisCO vs DisCO-b rewards on seed 0 at 1e-5; the KL estimate after each batch's first update at 1e-5."""
    runs = os.path.join(v1, "runs")
    a, b = (_load(os.path.join(runs, f"grid-{m}-lr1e-05-seed0.json")) for m in ("disco", "disco-b"))
    rewards = [[e["reward"] for e in r["log_history"] if "reward" in e] for r in (a, b)]
    same = sum(x == y for x, y in zip(*rewards))
    lines = [f"identical training rewards, DisCO vs DisCO-b, seed 0, lr 1e-5: {same} of {len(rewards[0])} generation "
             "batches (v1/runs/grid-disco{,-b}-lr1e-05-seed0.json)"]
    grid = _runs(runs, "grid-disco*-lr1e-05-seed*.json")
    upg = grid[0]["settings"]["updates_per_generation"]
    values = [e["disco/kl"] for r in grid for e in r["log_history"] if "disco/kl" in e and (e["step"] - 1) % upg]
    lines.append(f"KL estimate after each batch's first update, the {len(grid)} DisCO-family grid runs at 1e-5: "
                 f"{len(values)} updates, {100 * sum(v < 0 for v in values) / len(values):.1f}% negative, 10th-90th "
                 f"percentiles {quantile(values, 0.1):.2e} to {quantile(values, 0.9):.2e} "
                 "(v1/runs/grid-disco*-lr1e-05-seed*.json)")
    return lines


def best_rates_and_long_runs(v1: str) -> list[str]:
    results, runs = _load(os.path.join(v1, "results.json")), os.path.join(v1, "runs")
    grid, lines = results["grid"], []
    for m in ("grpo", "dapo"):
        val = grid[m]["3e-05"]["val"]["mean"] - grid[m]["1e-05"]["val"]["mean"]
        lines.append(f"{m}: validation Pass@1 at 3e-5 minus at 1e-5, mean of seeds 0, 1: {100 * val:+.2f} points; "
                     f"test {grid[m]['1e-05']['test']['mean']:.3f} at 1e-5, {grid[m]['3e-05']['test']['mean']:.3f} at "
                     "3e-5 (v1/results.json grid)")
    for run in _runs(runs, "long-*.json"):
        curve = [h["pass@1"] for h in run["eval_history"]]
        jump = max(abs(x - y) for x, y in zip(curve, curve[1:]))
        lines.append(f"long run {run['method']} lr {run['settings']['learning_rate']:g}: largest change between "
                     f"successive evaluations {100 * jump:.2f} points (v1/runs/long-*.json)")
    starts = sorted({(r["settings"]["seed"], r["eval_history"][0]["pass@1"]) for r in _runs(runs, "*.json")})
    lines.append(f"the warm start by evaluation seed (run seed + 1): {starts}; range {min(v for _, v in starts):.3f}-"
                 f"{max(v for _, v in starts):.3f} (every v1 run's step-0 evaluation)")
    return lines


def shared_rate(v1: str) -> list[str]:
    """The one-standard-error rule on v1's grid: validation gains pooled over the six methods, and per method."""
    grid = _runs(os.path.join(v1, "runs"), "grid-*.json")
    pooled: dict[float, list[float]] = {}
    for r in grid:
        pooled.setdefault(r["settings"]["learning_rate"], []).append(
            r["also_eval"]["pass@1_after"] - r["also_eval"]["pass@1_before"])
    choice = stats.one_se_choice(pooled)
    lines = ["v1 grid, validation gain pooled over 6 methods x 2 seeds per rate: " + ", ".join(
        f"{lr:g} {100 * m:+.2f}" for lr, m in sorted(choice["means"].items())) + f" points; best {choice['best']:g} "
        f"(SE {100 * choice['best_se']:.2f}), one-SE rule picks {choice['chosen']:g} (v1/runs/grid-*.json)"]
    for method in sorted({r["method"] for r in grid}):
        per: dict[float, list[float]] = {}
        for r in grid:
            if r["method"] == method:
                per.setdefault(r["settings"]["learning_rate"], []).append(r["also_eval"]["pass@1_after"])
        c = stats.one_se_choice(per)
        lines.append(f"  {method}: best {c['best']:g} (validation {c['best_mean']:.4f}, SE of 2 seeds "
                     f"{100 * c['best_se']:.2f} points), one-SE rule picks {c['chosen']:g}; at 1e-5 "
                     f"{c['means'][1e-5]:.4f}")
    return lines


def statistics_at_best_rates(v1: str) -> list[str]:
    results, runs = _load(os.path.join(v1, "results.json")), os.path.join(v1, "runs")
    st, lines = results["statistics"], []
    sds = {m: 100 * v["pass@1"]["std"] for m, v in st.items()}
    lines.append(f"seed SD of Pass@1 at step 160, best rates: {min(sds.values()):.2f}-{max(sds.values()):.2f} points "
                 "(v1/results.json statistics)")
    ref = {int(k): v for k, v in st["disco"]["by_seed"].items()}
    pvals = {}
    for m, v in st.items():
        if m != "disco":
            pair = stats.paired({int(k): x for k, x in v["by_seed"].items()}, ref)
            pvals[m] = pair["p"]
            lines.append(f"{m} - disco over 5 seeds: {100 * pair['mean']:+.2f} points, 95% CI "
                         f"[{100 * pair['ci95'][0]:+.2f}, {100 * pair['ci95'][1]:+.2f}], p = {pair['p']:.3f}")
    holm = stats.holm(pvals)
    lines.append("Holm over those 5 comparisons: " + ", ".join(f"{m} {p:.3f}" for m, p in holm.items()))
    for m, lr in results["best_learning_rate"].items():
        gains = {r["settings"]["seed"]: _at(r, 160) - r["eval_history"][0]["pass@1"]
                 for r in _runs(runs, f"*-{m}-lr{lr:g}-seed*.json")}
        lines.append(f"{m} (lr {lr:g}) gain against its own start at step 160: mean "
                     f"{100 * statistics.fmean(gains.values()):+.2f} points, above start on "
                     f"{sum(g > 0 for g in gains.values())}/{len(gains)} seeds (v1/runs at the best rate)")
    imbalance = results["imbalance"]
    for key in ("frac_mixed", "frac_all_wrong", "neg_per_pos_mixed"):
        values = [g[key]["start"] for g in imbalance.values()]
        lines.append(f"imbalance at the start, {key}: {min(values):.3f}-{max(values):.3f} over the 6 methods "
                     "(v1/results.json imbalance)")
    ones = [g["frac_mixed_with_1_or_2_positives"] for g in imbalance.values()]
    lines.append(f"mixed groups with 1-2 positives of 8: {min(ones):.3f}-{max(ones):.3f}")
    return lines


def comparison_and_skipping(comparison: str, skipping: str) -> list[str]:
    runs = _runs(os.path.join(comparison, "runs"), "final-*-lr1e-05-seed*.json")
    starts = [start_end(r["log_history"], "entropy")[0] for r in runs]
    lines = [f"comparison.md: entropy at the start (first 10% of steps), mean of the {len(runs)} runs at 1e-5: "
             f"{statistics.fmean(starts):.3f} (comparison/runs/final-*-lr1e-05-*)"]
    on, off = (_load(os.path.join(comparison, "ablations", d, "results.json"))["summary"]["disco"]["pass@1_after"]
               ["values"] for d in ("lr5e-5", "lr5e-5-no-hinge"))
    pair = stats.paired(dict(enumerate(on)), dict(enumerate(off)))
    lines.append(f"comparison.md: hinge on - off at 5e-5, {pair['n']} seeds: {100 * pair['mean']:+.2f} points, 95% CI "
                 f"[{100 * pair['ci95'][0]:+.2f}, {100 * pair['ci95'][1]:+.2f}], p = {pair['p']:.3f} "
                 "(comparison/ablations/lr5e-5{,-no-hinge}/results.json)")
    demo = _load(os.path.join(skipping, "skipping_demo.json"))
    after = {(r["seed"], r["skip_uninformative_questions"]): r["pass@1_after"] for r in demo["runs"]}
    seeds = sorted({s for s, _ in after})
    pair = stats.paired({s: after[(s, True)] for s in seeds}, {s: after[(s, False)] for s in seeds})
    lines.append(f"skipping demo, option on - off, {pair['n']} seeds: {100 * pair['mean']:+.2f} points, 95% CI "
                 f"[{100 * pair['ci95'][0]:+.2f}, {100 * pair['ci95'][1]:+.2f}] (skipping/skipping_demo.json)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disco_trl.demo.study.audit", description=__doc__)
    parser.add_argument("--docs", default="docs", help="the docs folder (default docs)")
    args = parser.parse_args(argv)
    v1 = os.path.join(args.docs, "study", "v1")
    lines = dro_and_hinge(v1) + best_rates_and_long_runs(v1) + shared_rate(v1) + statistics_at_best_rates(v1)
    lines += comparison_and_skipping(os.path.join(args.docs, "comparison"), os.path.join(args.docs, "skipping"))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
