"""The numbers of `disco-trl study`: grid table, statistics at the best rate, imbalance, long runs, timing.

Statistics: per method, the mean and standard deviation over seeds; per pair, the paired differences over shared
seeds (the same seed gives both methods the same training questions in the same order and the same evaluation
sampling seed), their mean, a 95% confidence interval (Student t), and the smallest difference the design detects
with 80% power at the 5% level, (t_0.975 + t_0.80) * sd(differences) / sqrt(n).
"""

from __future__ import annotations

import math
import statistics

from ..methods import METHODS
from ..plots import start_end


# Student t quantiles by degrees of freedom (two-sided 5% level; one-sided 20%, for 80% power).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}
T_80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883, 10: 0.879,
        12: 0.873, 15: 0.866, 20: 0.860, 30: 0.854}
ENTROPY_COLLAPSE, ENTROPY_EXPLOSION = 0.5, 2.0  # final / initial entropy below / above these: flagged
REFERENCE = "disco"


def t_quantile(table: dict[int, float], df: int) -> float:
    """The tabulated quantile for `df` degrees of freedom (the next smaller tabulated df beyond the table: slightly
    conservative)."""
    if df < 1:
        return math.nan
    return table[max(k for k in table if k <= df)]


def describe(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values), "min": min(values), "max": max(values)}


def paired(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    n = len(diffs)
    mean = statistics.fmean(diffs)
    sd = statistics.stdev(diffs) if n > 1 else math.nan
    half = t_quantile(T_975, n - 1) * sd / math.sqrt(n) if n > 1 else math.nan
    detectable = (t_quantile(T_975, n - 1) + t_quantile(T_80, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
    return {"seeds": seeds, "diffs": diffs, "mean": mean, "sd": sd, "ci95": [mean - half, mean + half],
            "t": mean / (sd / math.sqrt(n)) if n > 1 and sd > 0 else math.nan, "detectable": detectable}


def eval_at(run: dict, step: int) -> dict | None:
    return next((h for h in run["eval_history"] if h["step"] == step), None)


def entropy_start_end(run: dict) -> tuple[float | None, float | None]:
    return start_end(run["log_history"], "entropy")


def entropy_flag(start: float | None, end: float | None) -> str | None:
    if start is None or end is None:
        return None
    if not math.isfinite(end) or end > ENTROPY_EXPLOSION * start:
        return "explodes"
    if end < ENTROPY_COLLAPSE * start:
        return "collapses"
    return None


def _mean(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def grid_summary(grid: dict, steps: int) -> dict:
    out = {}
    for method, per_lr in grid.items():
        out[method] = {}
        for lr, runs in per_lr.items():
            test = [eval_at(r, steps)["pass@1"] for r in runs]
            start = [r["eval_history"][0]["pass@1"] for r in runs]
            ent = [entropy_start_end(r) for r in runs]
            ent_start, ent_end = _mean([e[0] for e in ent]), _mean([e[1] for e in ent])
            out[method][f"{lr:g}"] = {
                "learning_rate": lr,
                "seeds": [r["settings"]["seed"] for r in runs],
                "test": describe(test),
                "val": describe([r["also_eval"]["pass@1_after"] for r in runs]),
                "start_test": statistics.fmean(start),
                "start_val": statistics.fmean(r["also_eval"]["pass@1_before"] for r in runs),
                "entropy_start": ent_start,
                "entropy_end": ent_end,
                "below_start": statistics.fmean(test) < statistics.fmean(start),
                "entropy": entropy_flag(ent_start, ent_end),
                "kl_old_mean": _mean([_mean([e.get("disco/kl") for e in r["log_history"]]) for r in runs]),
                "clip_ratio_mean": _mean([_mean([e.get("clip_ratio/region_mean") for e in r["log_history"]])
                                          for r in runs]),
            }
    return out


def stat_points(parts: dict) -> dict[str, list[dict]]:
    """Per method, every seed's Pass@1 at step `steps` at the best rate: grid runs, long runs' evaluation at that
    step, extra runs."""
    steps, points = parts["steps"], {}
    for method, lr in parts["best"].items():
        sources = [("grid", r) for r in parts["grid"][method][lr]] + [("long", r) for r in parts["long"][method]] + \
            [("extra", r) for r in parts["extra"][method]]
        points[method] = []
        for source, run in sources:
            at, start = eval_at(run, steps), run["eval_history"][0]
            points[method].append({"seed": run["settings"]["seed"], "source": source, "pass@1": at["pass@1"],
                                   "by_ops": at.get("pass@1_by_ops"), "start": start["pass@1"],
                                   "start_by_ops": start.get("pass@1_by_ops")})
    return points


def group_summary(runs: list[dict], steps: int) -> dict:
    """How the positives fall in the training groups (first / last 10% of the generation batches up to `steps`)."""
    histories = [[g for g in r.get("group_history", []) if g["step"] < steps] for r in runs]
    histories = [h for h in histories if h]
    if not histories:
        return {}
    out = {}
    for key in ("frac_mixed", "frac_all_wrong", "frac_all_right", "neg_per_pos_mixed"):
        firsts, lasts = [], []
        for h in histories:
            k = max(1, len(h) // 10)
            firsts.append(_mean([g[key] for g in h[:k]]))
            lasts.append(_mean([g[key] for g in h[-k:]]))
        out[key] = {"start": _mean(firsts), "end": _mean(lasts)}
    hist = [sum(g["positives_histogram"][j] for h in histories for g in h) for j in
            range(len(histories[0][0]["positives_histogram"]))]
    mixed = sum(hist[1:-1])
    out["positives_histogram"] = hist
    out["frac_mixed_with_1_or_2_positives"] = (hist[1] + hist[2]) / mixed if mixed else None
    return out


def statistics_summary(points: dict[str, list[dict]], best: dict[str, float]) -> dict:
    out = {}
    for method, pts in points.items():
        by_seed = {p["seed"]: p["pass@1"] for p in pts}
        ops = sorted({k for p in pts for k in (p["by_ops"] or {})})
        out[method] = {
            "label": METHODS[method].label,
            "learning_rate": best[method],
            "pass@1": describe(list(by_seed.values())),
            "start": statistics.fmean(p["start"] for p in pts),
            "by_seed": {str(s): v for s, v in by_seed.items()},
            "gain_by_ops": {k: _mean([p["by_ops"][k] - p["start_by_ops"][k] for p in pts if p["by_ops"]])
                            for k in ops},
            "after_by_ops": {k: _mean([p["by_ops"][k] for p in pts if p["by_ops"]]) for k in ops},
            "start_by_ops": {k: _mean([p["start_by_ops"][k] for p in pts if p["start_by_ops"]]) for k in ops},
        }
    ref = points.get(REFERENCE)
    if ref:
        ref_by_seed = {p["seed"]: p["pass@1"] for p in ref}
        for method, pts in points.items():
            if method != REFERENCE:
                out[method]["vs_disco"] = paired({p["seed"]: p["pass@1"] for p in pts}, ref_by_seed)
    return out


def long_summary(long_runs: dict, long_steps: int) -> dict:
    out = {}
    for method, runs in long_runs.items():
        if not runs:
            continue
        steps = [h["step"] for h in runs[0]["eval_history"]]
        curve = [_mean([eval_at(r, s)["pass@1"] for r in runs if eval_at(r, s)]) for s in steps]
        ent = [entropy_start_end(r) for r in runs]
        ent_start, ent_end = _mean([e[0] for e in ent]), _mean([e[1] for e in ent])
        peak = max(range(len(curve)), key=lambda i: curve[i])
        out[method] = {"seeds": [r["settings"]["seed"] for r in runs], "steps": steps, "pass@1": curve,
                       "final": curve[-1], "peak": curve[peak], "peak_step": steps[peak],
                       "entropy_start": ent_start, "entropy_end": ent_end, "entropy": entropy_flag(ent_start, ent_end),
                       "groups": group_summary(runs, long_steps + 1)}
    return out


def timing_summary(parts: dict, timing: dict) -> dict:
    runs = [r for per in parts["grid"].values() for rs in per.values() for r in rs]
    runs += [r for rs in parts["long"].values() for r in rs] + [r for rs in parts["extra"].values() for r in rs]
    cpu = [r.get("cpu_seconds") for r in runs]
    return {**timing, "runs": len(runs), "sum_run_wall_seconds": round(sum(r["total_seconds"] for r in runs), 1),
            "sum_run_cpu_seconds": round(sum(c for c in cpu if c is not None), 1),
            "runs_without_cpu_record": sum(c is None for c in cpu)}


def summarize(parts: dict, args, command: str, timing: dict) -> dict:
    probe = parts["probe"]
    best = parts["best"]
    stat_runs = {m: parts["grid"][m][best[m]] + parts["long"][m] + parts["extra"][m] for m in best}
    return {
        "meta": {"command": command, "methods": list(best), "difficulties": list(args.difficulties),
                 "partial": bool(getattr(args, "partial", False)),
                 "planned_runs": len(args.methods) * (len(args.lr_grid) * len(args.grid_seeds) + len(args.extra_seeds)
                                                      + len(args.long_seeds)),
                 "steps": parts["steps"], "long_steps": parts["long_steps"], "long_eval_every": parts["long_every"],
                 "lr_grid": list(args.lr_grid), "grid_seeds": list(args.grid_seeds),
                 "long_seeds": list(args.long_seeds), "extra_seeds": list(args.extra_seeds),
                 "eval_questions": probe.eval_questions, "eval_samples": probe.eval_samples,
                 "temperature": probe.temperature, "questions_per_generation": probe.questions_per_generation,
                 "num_generations": probe.num_generations, "updates_per_generation": probe.updates_per_generation,
                 "warmstart": {k: parts["warmstart"][k] for k in ("config", "num_parameters")},
                 "timing": timing_summary(parts, timing)},
        "grid": grid_summary(parts["grid"], parts["steps"]),
        "best_learning_rate": dict(best),
        "statistics": statistics_summary(stat_points(parts), best),
        "imbalance": {m: group_summary(runs, parts["steps"]) for m, runs in stat_runs.items()},
        "long": long_summary(parts["long"], parts["long_steps"]),
    }
