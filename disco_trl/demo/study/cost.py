"""What the study costs, in CPU seconds of one torch thread (`time.process_time()`, as the run files record).

`probe_cost` measures: for each kind of run (DisCO; TRL's GRPO with its reference model; the GRPO family without
one) two short runs of the design's geometry, 1 and 3 generation batches long, with a negligible evaluation; their
difference gives the seconds per optimizer step, the rest the fixed cost of a run (loading, the trainer, the
exact-KL set-up); and one held-out evaluation of the warm start at the design's size. `check_runs` times
full-length runs of the design against the estimate. `estimate_cost` multiplies out the plan with those constants
(`MEASURED`, written down from a probe; docs/study.md names the command and machine).
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from dataclasses import replace

from transformers import AutoModelForCausalLM, AutoTokenizer

from ..evaluate import evaluate_pass_at_1
from ..experiment import eval_kwargs, reward_function, run_method
from ..methods import DISCO_METHODS, METHODS
from ..runs import run_cached
from ..warmstart import eval_problems
from . import plan
from .report import negative_weights


# Measured by `disco-trl study --experiment all --probe-cost` (docs/study.md, "Cost"): CPU seconds per optimizer
# step by kind, fixed seconds per run, seconds per held-out (question x sample) evaluated.
MEASURED = {"per_step": {"disco": 0.325, "grpo-ref": 0.381, "grpo": 0.344}, "per_run": 0.4, "per_eval_sample": 0.00394}


def kind(method: str) -> str:
    if method in DISCO_METHODS:
        return "disco"
    return "grpo-ref" if METHODS[method].config.get("beta", 0.0) > 0 else "grpo"


def run_cost(settings, constants: dict) -> float:
    """Estimated CPU seconds of one run: fixed cost, steps, and its evaluations after the start (the start is shared
    by every run of a seed and counted once per seed)."""
    evals = settings.max_steps // settings.eval_every if settings.eval_every else 1
    per_eval = settings.eval_questions * settings.eval_samples * constants["per_eval_sample"]
    return constants["per_run"] + settings.max_steps * constants["per_step"][kind(settings.method)] + evals * per_eval


def estimate_cost(names: list[str], scale: plan.Scale, constants: dict | None = None) -> str:
    """A table of each experiment's runs and estimated CPU minutes (and / 2 for an idle 2-core machine with two
    workers); the calibration runs (one per mix of questions) and the starts' evaluations (one per seed and mix) are
    listed once."""
    constants = constants or MEASURED
    lines = [f"{'experiment':<14} {'runs':>5} {'steps/run':>10} {'CPU min':>8} {'2 workers':>10}"]
    start_eval = scale.eval_questions * scale.eval_samples * constants["per_eval_sample"]
    starts, calibrations = set(), {}
    total = 0.0
    for name in names:
        exp = plan.experiment(name, scale)
        jobs = plan.jobs(exp, scale, delta=1e-5)
        seconds = sum(run_cost(s, constants) for s, _ in jobs)
        starts |= {(seed, exp.difficulties) for seed in exp.seeds}
        settings, tag = plan.calibration_job(exp, scale)
        calibrations[tag] = run_cost(settings, constants)
        total += seconds
        lines.append(f"{name:<14} {len(jobs):>5} {exp.steps:>10} {seconds / 60:>8.1f} {seconds / 120:>10.1f}")
    calibration = sum(calibrations.values())
    lines.append(f"{'calibration':<14} {len(calibrations):>5} {scale.calibration_steps:>10} {calibration / 60:>8.1f}"
                 "   (one per mix of questions)")
    lines.append(f"{'starts':<14} {len(starts):>5} {'':>10} {len(starts) * start_eval / 60:>8.1f}   "
                 "(one evaluation per seed and mix, shared)")
    total += calibration + len(starts) * start_eval
    lines.append(f"{'total':<14} {'':>5} {'':>10} {total / 60:>8.1f} {total / 120:>10.1f}")
    lines.append(f"constants: {json.dumps(constants)}")
    return "\n".join(lines)


def check_runs(specs: list[str], scale: plan.Scale, model_path: str, folder: str) -> str:
    """Full-length runs of the design (`experiment:arm:seed`, e.g. `dro:tau0.1:0`), with the study's own settings,
    in a scratch runs folder: their recorded CPU seconds against `run_cost`'s estimate, and what they saw. A spec may
    add `:rate` or `:rate:steps` (a probe of the design at another rate or length, e.g. `long:grpo:0:3e-5:160`). Runs
    that need delta run the calibration run first (in the same folder)."""
    os.makedirs(folder, exist_ok=True)
    lines = [f"{'run':<28} {'CPU s':>8} {'estimate':>9}"]
    for spec in specs:
        name, arm_name, seed, *override = spec.split(":")
        exp = plan.experiment(name, scale)
        arm = exp.arm(arm_name)
        delta = None
        if plan.needs_delta(arm):
            cal_settings, tag = plan.calibration_job(exp, scale)
            calibration = run_cached(cal_settings, model_path, folder, tag)
            delta = plan.delta_from_run(calibration)["delta"]
            lines.append(f"{tag:<28} {calibration['cpu_seconds']:>8.1f} "
                         f"{run_cost(cal_settings, MEASURED):>9.1f}   (delta {delta:.2g})")
        settings = plan.arm_settings(exp, arm, int(seed), scale, delta)
        if override:
            settings.learning_rate = float(override[0])
        if len(override) > 1:
            settings.max_steps = int(override[1])
            settings.eval_every = settings.eval_every if settings.max_steps % max(1, settings.eval_every) == 0 else 0
        settings.validate()
        result = run_cached(settings, model_path, folder, f"{name}-{arm_name}" + ("-probe" if override else ""))
        lines.append(f"{spec:<28} {result['cpu_seconds']:>8.1f} {run_cost(settings, MEASURED):>9.1f}   "
                     f"({_observed(result)})")
    return "\n".join(lines)


def _observed(result: dict) -> str:
    """What a check run saw, besides its cost: Pass@1, the DRO weights' ESS, the exact KL, clipping, rewards."""
    log = result["log_history"]

    def values(key):
        return [e[key] for e in log if key in e]

    clip, reward, neg = (values(k) for k in ("clip_ratio/region_mean", "reward", "disco/score_neg"))
    weights = negative_weights(result)
    upg = result["settings"]["updates_per_generation"]
    exact = [e["demo/kl_exact"] for e in log if "demo/kl_exact" in e and plan.update_index(e["step"], upg) > 0]
    k = max(1, len(reward) // 10)
    parts = [f"Pass@1 {result['pass@1_before']:.3f} -> {result['pass@1_after']:.3f}",
             f"training reward {sum(reward[:k]) / k:.3f} -> {sum(reward[-k:]) / k:.3f} (first, last 10% of batches)"]
    if weights["neg_weight_ess"] is not None:
        over = (f"{weights['neg_weight_groups']:.0f} groups with >= 2 negatives" if weights["neg_weight_groups"]
                else "every mixed group")
        parts.append(f"mean ESS fraction {weights['neg_weight_ess']:.3f} (over {over})")
    parts += [f"mean score of the negatives {sum(neg) / len(neg):.3f}"] if neg else []
    parts += [f"median exact KL after first updates {statistics.median(exact):.2e}"] if exact else []
    if len(clip) >= 4:
        last = clip[-(len(clip) // 4):]
        parts.append(f"clip fraction {sum(clip) / len(clip):.4f}, last quarter {sum(last) / len(last):.4f}")
    return "; ".join(parts)


def _probe_run(settings, steps: int, model_path: str, folder: str) -> float:
    probe = replace(settings, max_steps=steps, eval_every=0, eval_questions=1, eval_samples=1)
    with tempfile.TemporaryDirectory(dir=folder) as out:
        result = run_method(probe, model_path, out, log=lambda *a: None, save_model=False,
                            start_eval=lambda split: {"pass@1": 0.0, "pass@1_by_ops": {}})
    return result["cpu_seconds"]


def probe_cost(names: list[str], scale: plan.Scale, model_path: str, folder: str) -> str:
    """Time short runs of each kind in the selected experiments and one evaluation; print the estimate they give."""
    os.makedirs(folder, exist_ok=True)
    kinds: dict[str, object] = {}
    for name in names:
        for settings, _ in plan.jobs(plan.experiment(name, scale), scale, delta=1e-5):
            kinds.setdefault(kind(settings.method), settings)
    upg, measured = scale.updates_per_generation, {"per_step": {}, "runs": {}}
    for k, settings in kinds.items():
        short, long = _probe_run(settings, upg, model_path, folder), _probe_run(settings, 3 * upg, model_path, folder)
        measured["per_step"][k] = round((long - short) / (2 * upg), 3)
        measured["runs"][k] = {f"{upg} steps": short, f"{3 * upg} steps": long}
    measured["per_run"] = round(max(0.0, min(r[f"{upg} steps"] - upg * measured["per_step"][k]
                                             for k, r in measured["runs"].items())), 1)
    settings = next(iter(kinds.values()))
    problems = eval_problems(scale.eval_questions, "test", plan.DIFFICULTIES)
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_path), AutoTokenizer.from_pretrained(model_path)
    cpu = time.process_time()
    evaluate_pass_at_1(model, tokenizer, problems, reward_function(), **eval_kwargs(replace(
        settings, eval_samples=scale.eval_samples)))
    measured["eval_seconds"] = round(time.process_time() - cpu, 1)
    measured["per_eval_sample"] = round(measured["eval_seconds"] / (scale.eval_questions * scale.eval_samples), 5)
    with open(os.path.join(folder, "probe.json"), "w") as f:
        json.dump(measured, f, indent=1)
    return json.dumps(measured, indent=1) + "\n\n" + estimate_cost(names, scale, measured)
