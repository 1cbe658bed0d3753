"""Recompute, from the committed files of the first study (docs/study/v1/), of study v2 (docs/study/*/results.json)
and of the comparison, every number that docs/study.md and docs/comparison.md state about them beyond the tables
(the corrections of v2 and of its review included), and the power calculation of study v3:

    python -m disco_trl.demo.study.audit   # docs/study/v1, docs/study/*/results.json, docs/comparison, docs/skipping

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
from . import plan, stats
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


def _v2(study: str, name: str) -> dict:
    return _load(os.path.join(study, name, "results.json"))


def _span(values, fmt: str = "{:.2f}") -> str:
    values = sorted(values)
    return fmt.format(values[0]) + "-" + fmt.format(values[-1])


def v2_dro(study: str) -> list[str]:
    """Study v2's A (dro/results.json): the DRO weights against DisCO-b's equal ones, the groups, what the design could
    detect and exclude, and the seeds a 0.5-point difference needs at its paired spread."""
    s = _v2(study, "dro")
    arms, comps = s["arms"], s["comparisons"]
    lines = ["v2 A, mean ESS fraction / largest weight over the mixed groups (every mixed group, one negative "
             "included): " + ", ".join(f"{n} {a['neg_weight_ess']:.5f} / {a['neg_weight_max']:.3f}"
                                       for n, a in arms.items()) + " (study/dro/results.json)"]
    lines.append(f"v2 A, groups: {_span([100 * a['frac_mixed'] for a in arms.values()], '{:.0f}')}% mixed, "
                 f"{_span([a['neg_per_pos_mixed'] for a in arms.values()])} negatives per positive in a mixed group")
    primary = {n: c for n, c in comps.items() if c["primary"]}
    lines.append("v2 A, primary comparisons: paired SD / smallest difference detectable (80%) / largest effect the "
                 "95% CI leaves open, points: " + ", ".join(
                     f"{n} {100 * c['sd']:.2f} / {100 * c['detectable']:.2f} / "
                     f"{100 * max(abs(v) for v in c['ci95']):.2f}" for n, c in primary.items()))
    lines.append("v2 A, gain against the seeds' starts: " + _span([100 * a["gain_mean"] for a in arms.values()])
                 + f" points (DisCO-b {100 * arms['basic']['gain_mean']:+.2f})")
    active = [primary[f"tau {t} - DisCO-b"] for t in ("0.1", "0.03")]
    sd = max(c["sd"] for c in active)
    n = stats.seeds_for(0.005, sd)
    lines.append(f"power: at the larger paired SD of tau 0.1 and 0.03 - DisCO-b ({100 * sd:.2f} points), "
                 f"{n} seeds detect 0.5 points (80%, two-sided 5%); 30 seeds detect "
                 f"{100 * stats.detectable(sd, 30):.2f}; 5 detect {100 * stats.detectable(sd, 5):.2f}")
    # with no effect, the 95% interval lies inside [-m, m] with 80% probability when m = (t_0.975 + t_0.90) SE
    se = sd / n ** 0.5
    margin = (stats.t_quantile(0.975, n - 1) + stats.t_quantile(0.90, n - 1)) * se
    inside = 2 * stats.t_cdf((0.006 - stats.t_quantile(0.975, n - 1) * se) / se, n - 1) - 1
    lines.append(f"power: with {n} seeds and no effect, the 95% interval (half-width "
                 f"{100 * stats.t_quantile(0.975, n - 1) * se:.2f} points) lies inside +-{100 * margin:.2f} points "
                 f"with 80% probability; inside +-0.6 with {100 * inside:.0f}%")
    return lines


def v2_trust_region(study: str) -> list[str]:
    """Study v2's B: the spread at 3e-5 against what the design could detect; B4's fixed weight against the hinge's
    pull d/dKL beta (KL - delta)^2 = 2 beta (KL - delta) at the KL the hinge arm ran at."""
    s = _v2(study, "trust-region")
    arms, comps, delta = s["arms"], s["comparisons"], s["calibration"]["delta"]
    low = [c for n, c in comps.items() if "3e-05" in n]
    spread = _span([100 * a["gain_sd"] for n, a in arms.items() if "3e-05" in n])
    lines = [f"v2 B at 3e-5: seed SD of the arms' gains {spread} points; B1, B2 paired SD "
             f"{_span([100 * c['sd'] for c in low])}, smallest difference detectable "
             f"{_span([100 * c['detectable'] for c in low])}, differences found "
             f"{_span([100 * abs(c['mean']) for c in low])} (study/trust-region/results.json)"]
    fixed = 2 * plan.KL_BETA * delta
    kl = arms["hinge-0.0001"]["kl"]
    for what in ("median", "mean"):
        pull = 2 * plan.KL_BETA * (kl[f"exact_{what}"] - delta)
        lines.append(f"v2 B4: fixed penalty weight 2 beta delta = {fixed:.3f}; the hinge's pull 2 beta (KL - delta) "
                     f"at the hinge arm's {what} exact KL at 1e-4 ({kl[f'exact_{what}']:.2e}) = {pull:.2f}: "
                     f"{pull / fixed:.0f}x the fixed weight")
    return lines


# C's GRPO arm at 3e-5, seed 0, as measured on the cost machine by `--check-run long:grpo:0` (docs/study.md, Cost);
# its run file was made in a scratch folder and is not committed.
COST_MACHINE_GRPO_SEED0 = 215.3


def v2_long(study: str) -> list[str]:
    """Study v2's C: cost per run and the like-for-like run, the warm start, held-out Pass@1 per evaluation (mean
    over seeds) and its rise after the low, the training reward's first 10% of steps."""
    s = _v2(study, "long")
    arms, meta = s["arms"], s["meta"]
    cpu = {(n, r["seed"]): r["cpu_seconds"] for n, a in arms.items() for r in a["runs"]}
    grpo = cpu[("grpo", 0)]
    lines = [f"v2 C, CPU s per run: {_span(cpu.values(), '{:.1f}')}; GRPO seed 0 {grpo:.1f} against "
             f"{COST_MACHINE_GRPO_SEED0} on the cost machine: {100 * (grpo / COST_MACHINE_GRPO_SEED0 - 1):+.0f}%; "
             f"runs {meta['run_cpu_seconds'] / 60:.1f} CPU min, one invocation's wall time "
             f"{meta['this_invocation']['wall_seconds'] / 60:.1f} min (study/long/results.json)",
             f"v2 C, warm start: SFT loss {meta['warmstart'].get('sft_final_loss', float('nan')):.3f}, start Pass@1 "
             f"{statistics.fmean(r['start'] for r in arms['disco']['runs']):.3f} (mean over seeds); A's start "
             f"{_v2(study, 'dro')['arms']['basic']['start']:.3f} (A's and B's SFT loss is not in their results.json)"]
    sds = [c["sd"] for c in s["comparisons"].values()]
    lines.append(f"v2 C, paired SD of C1-C3 {_span([100 * v for v in sds])} points: 10 seeds would detect "
                 f"{_span([100 * stats.detectable(v, 10) for v in sds])}")
    for name, arm in arms.items():
        curves = [dict(r["curve"]) for r in arm["runs"]]
        mean = {step: statistics.fmean(c[step] for c in curves) for step in curves[0]}
        low = min((step for step in mean if step), key=mean.get)
        lines.append(f"v2 C, {name}: held-out Pass@1 " + " / ".join(f"{v:.3f}" for v in mean.values())
                     + f" (steps {', '.join(map(str, mean))}); low at step {low}, step {low} -> {max(mean)}: "
                     f"{100 * (mean[max(mean)] - mean[low]):+.2f} points; training reward, first 10% of steps "
                     f"{arm['reward_start']:.3f}, last 10% {arm['reward_end']:.3f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disco_trl.demo.study.audit", description=__doc__)
    parser.add_argument("--docs", default="docs", help="the docs folder (default docs)")
    args = parser.parse_args(argv)
    v1 = os.path.join(args.docs, "study", "v1")
    lines = dro_and_hinge(v1) + best_rates_and_long_runs(v1) + shared_rate(v1) + statistics_at_best_rates(v1)
    lines += comparison_and_skipping(os.path.join(args.docs, "comparison"), os.path.join(args.docs, "skipping"))
    study = os.path.join(args.docs, "study")
    lines += v2_dro(study) + v2_trust_region(study) + v2_long(study)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
