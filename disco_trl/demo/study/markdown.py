"""`results.md` of `disco-trl study`, rendered from its `results.json` (see report.py for the numbers)."""

from __future__ import annotations

import math

from ..methods import METHODS


def _f(value, fmt="{:.3f}"):
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return fmt.format(value)


def _pm(d: dict) -> str:
    return f"{d['mean']:.3f} ± {_f(d['std'])}"


def _header(meta: dict) -> list[str]:
    t = meta["timing"]
    return [
        "# The study: sparse rewards, large steps, long runs, enough seeds",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Task mix: {', '.join(map(str, meta['difficulties']))} operations (training and held-out). "
        f"{meta['questions_per_generation']} questions x {meta['num_generations']} completions per generation batch, "
        f"{meta['updates_per_generation']} updates per batch, T={meta['temperature']}. Held-out Pass@1: "
        f"{meta['eval_questions']} questions x {meta['eval_samples']} samples; the rate is chosen on the validation "
        f"questions, every number below is on the test questions. Grid: rates "
        f"{', '.join(f'{x:g}' for x in meta['lr_grid'])} x seeds {meta['grid_seeds']}, {meta['steps']} steps; "
        f"long runs: seeds {meta['long_seeds']}, "
        f"{meta['long_steps']} steps; extra seeds {meta['extra_seeds']} at {meta['steps']} steps.",
        "",
        *([f"**Partial report** (`--partial`): {t['runs']} of the {meta['planned_runs']} planned runs have "
           "finished; the best rates come from the grid runs finished so far, and parts with no runs are absent. "
           "Re-running the command without `--partial` resumes the study.", ""] if meta.get("partial") else []),
        f"Compute: {t['runs']} runs, {t['sum_run_wall_seconds'] / 60:.1f} min of run wall time and "
        f"{t['sum_run_cpu_seconds'] / 60:.1f} min of CPU time (all threads; / 2 cores = "
        f"{t['sum_run_cpu_seconds'] / 120:.1f} min, the estimate of the wall time on an otherwise idle 2-core "
        f"machine). This invocation: {t['this_invocation_wall_seconds'] / 60:.1f} min wall, "
        f"{t['this_invocation_cpu_seconds'] / 60:.1f} min CPU.",
        "",
    ]


def _grid(results: dict) -> list[str]:
    grid, meta = results["grid"], results["meta"]
    lrs = [f"{x:g}" for x in meta["lr_grid"]]
    lines = [f"## Step size: test Pass@1 after {meta['steps']} steps against the learning rate",
             "", f"Mean ± std over seeds {meta['grid_seeds']}. Marks: `<` below the start, `c` entropy collapses "
             "(final < 0.5 x initial), `x` entropy explodes (> 2 x); **bold**: the rate chosen on validation.", "",
             "| method | start | " + " | ".join(lrs) + " |", "|---|---|" + "---|" * len(lrs)]
    for method, per in grid.items():
        cells = []
        for lr in lrs:
            if lr not in per:
                cells.append("")
                continue
            g = per[lr]
            marks = ("<" if g["below_start"] else "") + {"collapses": "c", "explodes": "x"}.get(g["entropy"], "")
            text = _pm(g["test"]) + (f" {marks}" if marks else "")
            cells.append(f"**{text}**" if float(lr) == results["best_learning_rate"][method] else text)
        start = next(iter(per.values()))["start_test"]
        lines.append(f"| {METHODS[method].label} | {start:.3f} | " + " | ".join(cells) + " |")
    lines += ["", "Entropy at the end of training (start about "
              f"{_f(next(iter(next(iter(grid.values())).values()))['entropy_start'])} nats/token), validation Pass@1 "
              "and the mean KL(pi_old || pi_theta) (DisCO) or clipped-token fraction (GRPO family):", "",
              "| method | lr | final entropy | val Pass@1 | KL(pi_old, pi) | clip fraction |",
              "|---|---|---|---|---|---|"]
    for method, per in grid.items():
        for lr, g in per.items():
            lines.append(f"| {METHODS[method].label} | {lr} | {_f(g['entropy_end'])} | {_pm(g['val'])} | "
                         f"{_f(g['kl_old_mean'], '{:.2e}')} | {_f(g['clip_ratio_mean'], '{:.4f}')} |")
    return lines + [""]


def _statistics(results: dict) -> list[str]:
    stats, meta = results["statistics"], results["meta"]
    ops = sorted({k for s in stats.values() for k in s["gain_by_ops"]})
    lines = [f"## Imbalance and statistics: test Pass@1 after {meta['steps']} steps at each method's best rate", "",
             "Every seed's step-" f"{meta['steps']} point (grid seeds, the long runs at step {meta['steps']}, "
             "extra seeds). Paired: method minus DisCO (log-L) over shared seeds, 95% CI, and the smallest "
             "difference this design detects (80% power, 5% level).", "",
             "| method | lr | n | start | Pass@1 | [min, max] | " + " | ".join(f"gain {k} ops" for k in ops) +
             " | vs DisCO (log-L) | 95% CI | detectable |",
             "|---|---|---|---|---|---|" + "---|" * len(ops) + "---|---|---|"]
    for s in stats.values():
        p = s["pass@1"]
        vs = s.get("vs_disco")
        vs_cells = " | | " if vs is None else \
            f"{vs['mean']:+.3f} | [{_f(vs['ci95'][0], '{:+.3f}')}, {_f(vs['ci95'][1], '{:+.3f}')}] | " \
            f"{_f(vs['detectable'])}"
        lines.append(f"| {s['label']} | {s['learning_rate']:g} | {p['n']} | {s['start']:.3f} | {_pm(p)} | "
                     f"[{p['min']:.3f}, {p['max']:.3f}] | " +
                     " | ".join(_f(s["gain_by_ops"].get(k), "{:+.3f}") for k in ops) + f" | {vs_cells} |")
    seeds = sorted({int(k) for s in stats.values() for k in s["by_seed"]})
    lines += ["", "Per seed:", "", "| method | " + " | ".join(f"seed {k}" for k in seeds) + " |",
              "|---|" + "---|" * len(seeds)]
    for s in stats.values():
        lines.append(f"| {s['label']} | " + " | ".join(_f(s["by_seed"].get(str(k))) for k in seeds) + " |")
    lines += ["", "How the positives fall in the training groups (the same reward-side record for every method; "
              "first -> last 10% of the generation batches):", "",
              "| method | mixed groups | all wrong | negatives per positive (mixed) | mixed groups with 1-2 of 8 "
              "positives |", "|---|---|---|---|---|"]
    for method, g in results["imbalance"].items():
        if not g:
            continue
        lines.append(
            f"| {METHODS[method].label} | "
            f"{_f(g['frac_mixed']['start'], '{:.2f}')} -> {_f(g['frac_mixed']['end'], '{:.2f}')} | "
            f"{_f(g['frac_all_wrong']['start'], '{:.2f}')} -> {_f(g['frac_all_wrong']['end'], '{:.2f}')} | "
            f"{_f(g['neg_per_pos_mixed']['start'], '{:.2f}')} -> {_f(g['neg_per_pos_mixed']['end'], '{:.2f}')} | "
            f"{_f(g['frac_mixed_with_1_or_2_positives'], '{:.2f}')} |")
    return lines + [""]


def _long(results: dict) -> list[str]:
    long, meta = results["long"], results["meta"]
    if not long:
        return []
    steps = next(iter(long.values()))["steps"]
    lines = [f"## Long runs: {meta['long_steps']} steps at the best rate (seeds {meta['long_seeds']})", "",
             "| method | " + " | ".join(f"step {s}" for s in steps) + " | peak (step) | entropy start -> end |",
             "|---|" + "---|" * (len(steps) + 2)]
    for method, s in long.items():
        flag = f" ({s['entropy']})" if s["entropy"] else ""
        lines.append(f"| {METHODS[method].label} | " + " | ".join(f"{v:.3f}" for v in s["pass@1"]) +
                     f" | {s['peak']:.3f} ({s['peak_step']}) | {_f(s['entropy_start'])} -> "
                     f"{_f(s['entropy_end'])}{flag} |")
    return lines + [""]


def render(results: dict) -> str:
    lines = _header(results["meta"]) + _grid(results) + _statistics(results) + _long(results)
    lines += ["Figures: `stepsize.png` (Pass@1 against the rate), `imbalance.png` (the training groups over time), "
              "`long_runs.png` (Pass@1 and entropy over the long runs).", ""]
    return "\n".join(lines)
