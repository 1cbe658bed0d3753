"""The numbers of one experiment of `disco-trl study`: per run, per arm, the declared comparisons and their verdicts.

A run's *gain* is its test Pass@1 after training minus its seed's start (the warm start scored with the same
questions and the same evaluation sampling seed). Comparisons are paired over seeds: gain(a) - gain(b) per seed,
whose mean, 95% t interval and p-value `stats.paired` gives; Holm's correction runs over the experiment's primary
comparisons. Diagnostics come from the per-step records: the DRO weights' effective sample size over the negatives,
the exact KL(pi_old || pi_theta) against the token estimate, the hinge, clipping, entropy, rewards, groups.
"""

from __future__ import annotations

import math
import statistics

from . import stats
from .plan import DRO_EXPERIMENTS, Experiment, update_index


ENTROPY_COLLAPSE, ENTROPY_EXPLOSION = 0.5, 2.0  # final / initial entropy below / above these: flagged
DRO_ACTIVE_ESS = 0.9  # mean ESS fraction at or below this: the weights differ from the basic form's (docs/study.md)
NOISE_DRIVEN = 0.25  # hinge decisions (estimate > delta) differing from the exact ones on more updates: noise-driven
CLIPPING_BINDS = 0.002  # C: GRPO's or DAPO's clipped-token fraction over the last quarter of the steps at least this
HEAVY_IMBALANCE = 4.0  # E: negatives per positive in a mixed group, at least this over the first batches


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.fmean(values) if values else None


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def series(run: dict, key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in run["log_history"] if e.get(key) is not None and math.isfinite(e[key])]


def negative_weights(run: dict) -> dict:
    """The DRO weights' mean ESS fraction and largest weight over the run's questions: over the mixed questions with at
    least 2 negatives, each weighing once, when the run logged how many each step covered (`disco/neg_weight_groups`);
    else (earlier runs) the mean over steps of their averages over every mixed question."""
    rows = [e for e in run["log_history"] if e.get("disco/neg_weight_ess") is not None]
    if rows and all("disco/neg_weight_groups" in e for e in rows):
        groups = sum(e["disco/neg_weight_groups"] for e in rows)
        return {"neg_weight_groups": groups, **{
            key: sum(e[f"disco/{key}"] * e["disco/neg_weight_groups"] for e in rows) / groups
            for key in ("neg_weight_ess", "neg_weight_max")}}
    return {"neg_weight_groups": None, "neg_weight_ess": _mean(e["disco/neg_weight_ess"] for e in rows),
            "neg_weight_max": _mean(e.get("disco/neg_weight_max") for e in rows)}


def entropy_flag(start: float | None, end: float | None) -> str | None:
    if start is None or end is None:
        return None
    if not math.isfinite(end) or end > ENTROPY_EXPLOSION * start:
        return "explodes"
    if end < ENTROPY_COLLAPSE * start:
        return "collapses"
    return None


def kl_diagnostics(run: dict, delta: float | None) -> dict:
    """The exact KL per update against the token estimates, over the updates after each batch's first (the first has
    pi_theta = pi_old): the exact KL's median per update index, how often the paper's estimate is negative, its 10th
    and 90th percentiles, its error against the exact value, and how often the hinge's decision (estimate > delta)
    differs from the exact one (exact > delta)."""
    upg = run["settings"]["updates_per_generation"]
    rows = [e for e in run["log_history"] if "demo/kl_exact" in e]
    later = [e for e in rows if update_index(e["step"], upg) > 0]
    if not later:
        return {}
    exact = [e["demo/kl_exact"] for e in later]
    estimate = [e.get("disco/kl", e["demo/kl_log_ratio"]) for e in later]
    k3 = [e["demo/kl_k3"] for e in later]
    out = {"exact_median": statistics.median(exact), "exact_mean": statistics.fmean(exact), "exact_max": max(exact),
           "exact_median_by_update": {str(i): statistics.median(e["demo/kl_exact"] for e in rows
                                                                if update_index(e["step"], upg) == i)
                                      for i in range(upg)},
           "first_update_exact_max": max((e["demo/kl_exact"] for e in rows if update_index(e["step"], upg) == 0),
                                         default=None),
           "estimate_frac_negative": sum(v < 0 for v in estimate) / len(estimate),
           "estimate_p10": quantile(estimate, 0.1), "estimate_p90": quantile(estimate, 0.9),
           "estimate_error_p10": quantile([a - b for a, b in zip(estimate, exact)], 0.1),
           "estimate_error_p90": quantile([a - b for a, b in zip(estimate, exact)], 0.9),
           "k3_p10": quantile(k3, 0.1), "k3_p90": quantile(k3, 0.9),
           "k3_error_p10": quantile([a - b for a, b in zip(k3, exact)], 0.1),
           "k3_error_p90": quantile([a - b for a, b in zip(k3, exact)], 0.9), "updates": len(later)}
    if delta:
        out["frac_exact_above_delta"] = sum(v > delta for v in exact) / len(exact)
        out["frac_estimate_above_delta"] = sum(v > delta for v in estimate) / len(estimate)
        wrong = sum((a > delta) != (b > delta) for a, b in zip(estimate, exact))
        out["frac_hinge_decision_wrong"] = wrong / len(exact)
    return out


def _first_tenth(values: list) -> list:
    return values[:max(1, len(values) // 10)]


def run_summary(run: dict, delta: float | None) -> dict:
    """One run: start, end and gain, the evaluation curve, and its per-step diagnostics."""
    history = run["eval_history"]
    start, end = history[0], history[-1]
    entropy = [v for _, v in series(run, "entropy")]
    k = max(1, len(entropy) // 20)
    rewards = [v for _, v in series(run, "reward")]
    clip = [v for _, v in series(run, "clip_ratio/region_mean")]
    kr = max(1, len(rewards) // 10)
    ent_start, ent_end = _mean(entropy[:k]), _mean(entropy[-k:])
    return {
        "seed": run["settings"]["seed"], "start": start["pass@1"], "final": end["pass@1"], "final_step": end["step"],
        "gain": end["pass@1"] - start["pass@1"],
        "gain_by_ops": {o: end["pass@1_by_ops"][o] - start["pass@1_by_ops"][o] for o in start.get("pass@1_by_ops", {})
                        if o in end.get("pass@1_by_ops", {})},
        "curve": [[h["step"], h["pass@1"]] for h in history],
        "entropy_start": ent_start, "entropy_end": ent_end, "entropy": entropy_flag(ent_start, ent_end),
        "reward_start": _mean(rewards[:kr]), "reward_end": _mean(rewards[-kr:]),
        **negative_weights(run),
        "hinge_active": None if not run["settings"].get("kl_beta") else  # no penalty: nothing is active
        _mean(v for _, v in series(run, "disco/hinge_active")),
        "kl_penalty": _mean(v for _, v in series(run, "disco/kl_penalty")),
        "clip_ratio": _mean(clip), "clip_ratio_last_quarter": _mean(clip[-max(1, len(clip) // 4):]),
        "frac_mixed": _mean(g["frac_mixed"] for g in run.get("group_history", [])),
        "neg_per_pos_mixed_first": _mean(g["neg_per_pos_mixed"] for g in _first_tenth(run.get("group_history", []))),
        "neg_per_pos_mixed": _mean(g["neg_per_pos_mixed"] for g in run.get("group_history", [])),
        "kl": kl_diagnostics(run, delta), "cpu_seconds": run.get("cpu_seconds"),
    }


def arm_summary(runs: list[dict], label: str, delta: float | None) -> dict:
    """An arm over its seeds: mean gain, sd, the gain against the seeds' own starts (paired), diagnostics' means."""
    per_run = [run_summary(r, delta) for r in runs]
    gains = {p["seed"]: p["gain"] for p in per_run}
    finals, starts = ({p["seed"]: p[k] for p in per_run} for k in ("final", "start"))
    out = {"label": label, "n": len(per_run), "seeds": sorted(gains), "runs": per_run,
           "gain_mean": _mean(gains.values()),
           "gain_sd": statistics.stdev(gains.values()) if len(gains) > 1 else None,
           "vs_start": stats.paired(finals, starts),
           "seeds_above_start": sum(g > 0 for g in gains.values())}
    for key in ("start", "final", "entropy_start", "entropy_end", "reward_start", "reward_end", "neg_weight_ess",
                "neg_weight_max", "neg_weight_groups", "hinge_active", "kl_penalty", "clip_ratio",
                "clip_ratio_last_quarter", "frac_mixed", "neg_per_pos_mixed", "neg_per_pos_mixed_first"):
        out[key] = _mean(p[key] for p in per_run)
    kl_keys = sorted({k for p in per_run for k, v in p["kl"].items() if isinstance(v, float | int)})
    out["kl"] = {k: _mean(p["kl"].get(k) for p in per_run) for k in kl_keys}
    return out


def comparisons(exp: Experiment, arms: dict[str, dict]) -> dict:
    """Every declared comparison: the paired difference of gains, Holm over the primary ones, the verdict."""
    out = {}
    for c in exp.comparisons:
        a, b = arms.get(c.a), arms.get(c.b)
        pair = None if not a or not b else stats.paired({r["seed"]: r["gain"] for r in a["runs"]},
                                                          {r["seed"]: r["gain"] for r in b["runs"]})
        out[c.name] = {"a": c.a, "b": c.b, "primary": c.primary, **(pair or {"n": 0, "p": math.nan})}
    adjusted = stats.holm({name: v["p"] for name, v in out.items() if v["primary"]})
    for name, v in out.items():
        v["p_holm"] = adjusted.get(name, math.nan)
        v["verdict"] = stats.verdict(v if v["n"] else None, v["p_holm"] if v["primary"] else v["p"], exp.margin)
    return out


def mechanism_checks(exp: Experiment, arms: dict[str, dict]) -> dict:
    """The pre-registered descriptive checks (docs/study.md): A, whether each tau's DRO weights differ from the basic
    form's (mean ESS fraction at most DRO_ACTIVE_ESS); B, whether each hinge arm's decisions are noise-driven (they
    differ from the exact KL's on more than NOISE_DRIVEN of the updates); C, whether clipping binds (GRPO's or DAPO's
    clipped fraction over the last quarter of the steps at least CLIPPING_BINDS) and "steadier entropy": every DisCO
    seed's entropy stays within 0.5-2 x its start while some GRPO or DAPO seed leaves that band. E: A's check, and
    whether every arm's mixed groups held at least HEAVY_IMBALANCE negatives per positive over its first tenth of the
    generation batches (mean over seeds)."""
    if exp.name in DRO_EXPERIMENTS:
        out = {name: {"neg_weight_ess": arm["neg_weight_ess"], "neg_weight_groups": arm.get("neg_weight_groups"),
                      "active": arm["neg_weight_ess"] is not None and arm["neg_weight_ess"] <= DRO_ACTIVE_ESS}
               for name, arm in arms.items() if name != "basic"}
        if exp.name == "dro-powered":  # E: the imbalance it was designed for, over each arm's first batches
            first = {name: arm.get("neg_per_pos_mixed_first") for name, arm in arms.items()}
            out["imbalance"] = {"neg_per_pos_mixed_first": first, "heavy": all(
                v is not None and v >= HEAVY_IMBALANCE for v in first.values()) and bool(first)}
        return out
    if exp.name == "trust-region":
        out = {}
        for name, arm in arms.items():
            wrong = arm["kl"].get("frac_hinge_decision_wrong")
            if name.startswith("hinge") and wrong is not None:
                out[name] = {"frac_hinge_decision_wrong": wrong, "noise_driven": wrong > NOISE_DRIVEN}
        return out
    flags = {name: [r["entropy"] for r in arm["runs"]] for name, arm in arms.items()}
    disco_steady = all(f is None for name in ("disco", "disco-b") for f in flags.get(name, [])) and \
        any(name in flags for name in ("disco", "disco-b"))
    others_leave = any(f is not None for name in ("grpo", "dapo") for f in flags.get(name, []))
    clipping = [arms[name].get("clip_ratio_last_quarter") for name in ("grpo", "dapo") if name in arms]
    binds = any(c is not None and c >= CLIPPING_BINDS for c in clipping)
    return {"entropy_flags": flags, "clipping_binds": binds, "steadier_entropy": disco_steady and others_leave}


def cost_summary(runs: list[dict], calibration: dict | None, starts: list[dict]) -> dict:
    """What an experiment cost: CPU seconds of its runs, of its seeds' start evaluations and of its calibration run,
    and, for runs that record when they ran, the wall time from the first one's start (the calibration's included)
    to the last one's end, how many processes made them, their torch threads and the highest 1-minute load average
    seen at the end of a run."""
    timed = [r for r in runs if r.get("started_at") is not None] + \
        ([calibration] if calibration and calibration.get("started_at") is not None else [])
    out = {"runs_cpu_seconds": round(sum(r.get("cpu_seconds") or 0.0 for r in runs), 1),
           "starts": len(starts), "starts_cpu_seconds": round(sum(s.get("cpu_seconds") or 0.0 for s in starts), 1),
           "calibration_cpu_seconds": (calibration or {}).get("cpu_seconds"), "wall_seconds": None}
    if timed:
        out["wall_seconds"] = round(max(r["finished_at"] for r in timed) - min(r["started_at"] for r in timed), 1)
        out["processes"] = len({r.get("process") for r in runs if r.get("started_at") is not None})
        out["torch_threads"] = sorted({r["torch_threads"] for r in runs if r.get("torch_threads") is not None})
        out["load_average_max"] = max((r["load_average"] for r in runs if r.get("load_average") is not None),
                                      default=None)
    return out


def summarize(exp: Experiment, runs_by_arm: dict[str, list], calibration: dict | None, meta: dict,
              starts: list[dict] | None = None) -> dict:
    """An experiment's results.json: every arm, the declared comparisons with their verdicts, the descriptive checks,
    and what it cost (`starts`: the start evaluation records of its seeds, `runs.start_record`)."""
    delta = calibration["delta"] if calibration else None
    arms = {a.name: arm_summary([r for r in runs_by_arm.get(a.name, []) if r is not None], a.label, delta)
            for a in exp.arms}
    arms = {name: arm for name, arm in arms.items() if arm["n"]}
    planned = len(exp.arms) * len(exp.seeds)
    finished = sum(arm["n"] for arm in arms.values())
    cpu = [r["cpu_seconds"] for arm in arms.values() for r in arm["runs"] if r["cpu_seconds"] is not None]
    counted = any(r["neg_weight_groups"] is not None for arm in arms.values() for r in arm["runs"])
    return {
        "design": f"{exp.design} (pre-registered in docs/study.md)", "experiment": exp.name, "title": exp.title,
        "meta": {**meta, "planned_runs": planned, "finished_runs": finished, "seeds": list(exp.seeds),
                 "steps": exp.steps, "eval_every": exp.eval_every, "train_pool": exp.train_pool,
                 "margin": exp.margin, "run_cpu_seconds": round(sum(cpu), 1),
                 "neg_weight_groups": ">=2 negatives" if counted else "every mixed group",
                 "cost": cost_summary([r for rs in runs_by_arm.values() for r in rs if r is not None], calibration,
                                      starts or [])},
        "calibration": calibration, "arms": arms, "comparisons": comparisons(exp, arms),
        "mechanism": mechanism_checks(exp, arms),
    }
