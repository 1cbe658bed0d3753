"""`results.md` of each experiment of `disco-trl study`, rendered from its `results.json` (numbers: report.py), and
the index of verdicts. Pass@1 differences are in points (1 point = 0.01 Pass@1).

    python -m disco_trl.demo.study.markdown docs/study   # render every results.md again from the results.json files
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict

from .plan import DRO_EXPERIMENTS, EXPERIMENTS, Scale


def _f(value, fmt="{:.3f}") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def _pts(value) -> str:
    return _f(None if value is None else 100 * value, "{:+.2f}")


def _ci(pair: dict | None) -> str:
    if not pair or "ci95" not in pair:
        return "n/a"
    return f"[{_pts(pair['ci95'][0])}, {_pts(pair['ci95'][1])}]"


def _header(s: dict) -> list[str]:
    meta, cal = s["meta"], s.get("calibration")
    lines = [f"# {s['title']}", "", f"Design: {s['design']}. Command: `{meta['command']}`", "",
             f"{meta['finished_runs']} of {meta['planned_runs']} runs finished; seeds {meta['seeds']}, "
             f"{meta['steps']} steps per run"
             + (f", evaluated every {meta['eval_every']}" if meta["eval_every"] else "")
             + (f", a fixed pool of {meta['train_pool']} training questions" if meta["train_pool"] else "")
             + ("." if meta.get("cost") else f". CPU time of the finished runs: {meta['run_cpu_seconds'] / 60:.1f} "
                "min (one thread each; the seeds' start evaluations, in runs/starts/, and the calibration run are not "
                "included)."), ""]
    lines += [f"Warm start: {_warm_start(s)}", ""] + _cost(meta.get("cost"))
    if meta.get("note"):
        lines += [f"**Note.** {meta['note']}", ""]
    design = json.loads(json.dumps(asdict(Scale())))  # a size recorded before it existed had its default
    if any((meta.get("scale") or {}).get(k, v) != v for k, v in design.items()):
        lines += ["**Not the pre-registered scale** (flags changed seeds, steps, evaluation or pool sizes): "
                  f"`{json.dumps(meta.get('scale'))}`.", ""]
    if meta.get("partial"):
        lines += ["**Partial report** (`--partial`): only finished runs; verdicts are provisional.", ""]
    if cal:
        lines += [f"delta = **{cal['delta']:.2g}** ({cal['rule']}; median exact KL {cal['median_exact_kl']:.3g}, "
                  f"median token estimate {cal['median_estimate']:.3g}, over {cal['updates']} updates).", ""]
    return lines


def _cost(cost: dict | None) -> list[str]:
    """The experiment's cost and wall time (runs that record when they ran)."""
    if not cost:
        return []
    calibration = cost.get("calibration_cpu_seconds")
    line = (f"Cost: {cost['runs_cpu_seconds'] / 60:.1f} CPU min for the runs, "
            f"{cost['starts_cpu_seconds'] / 60:.1f} for the {cost['starts']} start evaluations"
            + (f", {calibration / 60:.1f} for the calibration run" if calibration is not None else "") + ".")
    if cost.get("wall_seconds") is not None:
        load = cost.get("load_average_max")
        line += (f" Wall time {cost['wall_seconds'] / 60:.1f} min from the first run's start to the last one's end, "
                 f"by {cost['processes']} process(es) with {'/'.join(map(str, cost['torch_threads']))} torch "
                 "thread(s) each" + (f"; highest 1-minute load average at a run's end {load:.2f}" if load else "")
                 + ".")
    return [line, ""]


def _warm_start(s: dict) -> str:
    """Which model the experiment started from, as its results.json records it, and its start Pass@1."""
    recorded = s["meta"].get("start") or s["meta"].get("warmstart") or {}  # "warmstart": v2, a machine's own
    starts = [r["start"] for a in s["arms"].values() for r in a["runs"]]
    parts = [f"`{recorded['fingerprint']}`" if recorded.get("fingerprint") else "fingerprint not recorded",
             f"SFT final loss {recorded['sft_final_loss']:.3f}" if recorded.get("sft_final_loss") else
             "SFT loss not recorded"]
    start = f"; start Pass@1 {sum(starts) / len(starts):.3f} (mean over its seeds' own starts)" if starts else ""
    return f"{', '.join(parts)}{start}."


def _arms(s: dict) -> list[str]:
    lines = ["## Arms: test Pass@1 and gain against each seed's own start", "",
             "| arm | n | start | final | gain (points) | gain 95% CI | seeds above start | ESS fraction | max weight "
             "| exact KL (median) | hinge active | clip fraction | entropy start -> end | reward start -> end |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a in s["arms"].values():
        flag = {"collapses": " (collapses)", "explodes": " (explodes)"}.get(a["runs"][0]["entropy"] or "", "")
        lines.append(
            f"| {a['label']} | {a['n']} | {_f(a['start'])} | {_f(a['final'])} | {_pts(a['gain_mean'])} ± "
            f"{_f(None if a['gain_sd'] is None else 100 * a['gain_sd'], '{:.2f}')} | {_ci(a['vs_start'])} | "
            f"{a['seeds_above_start']}/{a['n']} | {_f(a['neg_weight_ess'])} | {_f(a['neg_weight_max'])} | "
            f"{_f(a['kl'].get('exact_median'), '{:.2e}')} | {_f(a['hinge_active'], '{:.2f}')} | "
            f"{_f(a['clip_ratio'], '{:.4f}')} | {_f(a['entropy_start'])} -> {_f(a['entropy_end'])}{flag} | "
            f"{_f(a['reward_start'])} -> {_f(a['reward_end'])} |")
    return lines + ["", _ess_note(s) + " Hinge active: fraction of updates with the token estimate above delta.", ""]


def _ess_note(s: dict) -> str:
    """What the ESS columns average over: the mixed groups with at least 2 negatives (runs that log how many, through
    `disco/neg_weight_groups`), or every mixed group (earlier runs)."""
    text = ("ESS fraction: the DRO weights' effective sample size over a question's negatives as a fraction of them "
            "(1: the basic form's equal weights, which DisCO-b's row shows: its own); max weight: the largest of them")
    if s["meta"].get("neg_weight_groups") == ">=2 negatives":
        return text + (", both averaged over the mixed groups with at least 2 negatives (a group with one negative "
                       "gives it all the weight whatever tau; the DRO check below says how many such "
                       "groups a run saw, mean over its seeds).")
    return text + (", both averaged over every mixed group, those with a single negative included (ESS fraction and "
                   "max weight 1 there whatever tau): these runs predate the metric over groups with at least 2 "
                   "negatives.")


def _comparisons(s: dict) -> list[str]:
    lines = ["## Declared comparisons: paired difference of gains over seeds", "",
             "Holm's correction over the primary comparisons; margin for \"not shown\": "
             f"±{100 * s['meta']['margin']:.1f} points. Paired SD: of the differences over seeds; detectable: the "
             "smallest difference those seeds detect with 80% power at the two-sided 5% level.", "",
             "| comparison | primary | n | difference (points) | 95% CI | p | p (Holm) | verdict | paired SD | "
             "detectable (80%) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in s["comparisons"].items():
        lines.append(f"| {name} | {'yes' if c['primary'] else 'no'} | {c['n']} | {_pts(c.get('mean'))} | {_ci(c)} | "
                     f"{_f(c.get('p'), '{:.3f}')} | {_f(c.get('p_holm'), '{:.3f}')} | **{c['verdict']}** | "
                     f"{_pts(c.get('sd')).lstrip('+')} | {_pts(c.get('detectable')).lstrip('+')} |")
    return lines + [""] + _mechanism(s)


def _mechanism(s: dict) -> list[str]:
    """The pre-registered descriptive checks (report.mechanism_checks)."""
    checks, lines = s.get("mechanism") or {}, []
    if s["experiment"] in DRO_EXPERIMENTS:
        lines += [f"- DRO active (mean ESS fraction <= 0.9) for {name}: **{'yes' if m['active'] else 'no'}** "
                  f"({_f(m['neg_weight_ess'])}" + (f", over {m['neg_weight_groups']:.0f} groups with >= 2 negatives "
                                                   "per run" if m.get("neg_weight_groups") else "") + ")"
                  for name, m in checks.items() if name != "imbalance"]
        if "imbalance" in checks:
            first = ", ".join(f"{name} {_f(v, '{:.2f}')}" for name, v in
                              checks["imbalance"]["neg_per_pos_mixed_first"].items())
            lines.append(f"- Heavy imbalance (>= 4 negatives per positive in a mixed group over each arm's first "
                         f"tenth of batches): **{'yes' if checks['imbalance']['heavy'] else 'no'}** ({first})")
    elif s["experiment"] == "trust-region":
        lines += [f"- {name}: the hinge's decision differs from the exact KL's on "
                  f"{_f(m['frac_hinge_decision_wrong'], '{:.2f}')} of the updates: "
                  f"**{'noise-driven' if m['noise_driven'] else 'not noise-driven'}** (threshold 0.25)"
                  for name, m in checks.items()]
    elif checks:
        binds = "yes" if checks["clipping_binds"] else "no: the regime of the entropy claim is not reached"
        lines.append(f"- Clipping binds (GRPO or DAPO clip fraction >= 0.2% over the last quarter): **{binds}**")
        lines.append(f"- Entropy flags per seed: {checks['entropy_flags']}; steadier entropy for DisCO: "
                     f"**{'yes' if checks['steadier_entropy'] else 'no'}**")
    return lines + [""] if lines else []


def _seeds(s: dict) -> list[str]:
    seeds = s["meta"]["seeds"]
    lines = ["## Per seed: gain (points) and start", "", "| arm | " + " | ".join(f"seed {k}" for k in seeds) + " |",
             "|---|" + "---|" * len(seeds)]
    for a in s["arms"].values():
        by_seed = {r["seed"]: r for r in a["runs"]}
        lines.append(f"| {a['label']} | " + " | ".join(
            f"{_pts(by_seed[k]['gain'])} ({by_seed[k]['start']:.3f})" if k in by_seed else "" for k in seeds) + " |")
    return lines + [""]


def _kl(s: dict) -> list[str]:
    lines = ["## KL(pi_old || pi_theta): exact against the token estimates (updates after each batch's first)", "",
             "| arm | exact median | exact mean | estimate < 0 | estimate p10, p90 | estimate - exact p10, p90 | "
             "k3 - exact p10, p90 | exact > delta | estimate > delta | hinge decision differs |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    e = "{:.2e}"
    for a in s["arms"].values():
        k = a["kl"]
        if not k:
            continue
        lines.append(f"| {a['label']} | {_f(k.get('exact_median'), e)} | {_f(k.get('exact_mean'), e)} | "
                     f"{_f(k.get('estimate_frac_negative'), '{:.2f}')} | {_f(k.get('estimate_p10'), e)}, "
                     f"{_f(k.get('estimate_p90'), e)} | {_f(k.get('estimate_error_p10'), e)}, "
                     f"{_f(k.get('estimate_error_p90'), e)} | {_f(k.get('k3_error_p10'), e)}, "
                     f"{_f(k.get('k3_error_p90'), e)} | {_f(k.get('frac_exact_above_delta'), '{:.2f}')} | "
                     f"{_f(k.get('frac_estimate_above_delta'), '{:.2f}')} | "
                     f"{_f(k.get('frac_hinge_decision_wrong'), '{:.2f}')} |")
    return lines + [""]


def render(summary: dict) -> str:
    lines = _header(summary) + _arms(summary) + _comparisons(summary) + _seeds(summary) + _kl(summary)
    return "\n".join(lines) + "\n"


def render_index(summaries: list[dict]) -> str:
    """OUTPUT_DIR/results.md: each reported experiment's declared comparisons and verdicts."""
    lines = ["# The study: verdicts of the experiments reported so far", "",
             "Pre-registered in docs/study.md; each experiment's folder has its results.md and results.json.", "",
             "| experiment | comparison | primary | n | difference (points) | 95% CI | p (Holm) | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        for name, c in s["comparisons"].items():
            lines.append(f"| {s['experiment']} | {name} | {'yes' if c['primary'] else 'no'} | {c['n']} | "
                         f"{_pts(c.get('mean'))} | {_ci(c)} | {_f(c.get('p_holm'), '{:.3f}')} | {c['verdict']} |")
    lines += ["", "Where each experiment started (experiments that started from different models are not comparable):",
              ""]
    for s in summaries:
        note = f" {s['meta']['note']}" if s["meta"].get("note") else ""
        lines.append(f"- {s['experiment']} ({s['design'].split(' (')[0]}): {_warm_start(s)}{note}")
    return "\n".join(lines) + "\n"


def write_index(output_dir: str) -> list[dict]:
    """OUTPUT_DIR/results.md from every experiment's results.json found there (this invocation's or an earlier one's);
    returns those summaries."""
    reported = []
    for name in EXPERIMENTS:
        path = os.path.join(output_dir, name, "results.json")
        if os.path.isfile(path):
            with open(path) as f:
                reported.append(json.load(f))
    with open(os.path.join(output_dir, "results.md"), "w") as f:
        f.write(render_index(reported))
    return reported


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m disco_trl.demo.study.markdown",
                                     description="Render each experiment's results.md and the index again from the "
                                                 "results.json files in OUTPUT_DIR (nothing is run).")
    parser.add_argument("output_dir", help="the study's output folder, e.g. docs/study")
    args = parser.parse_args(argv)
    for summary in write_index(args.output_dir):
        with open(os.path.join(args.output_dir, summary["experiment"], "results.md"), "w") as f:
            f.write(render(summary))
    print(f"rendered {args.output_dir}/results.md and each experiment's results.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
