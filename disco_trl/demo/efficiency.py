"""Methods against a baseline at equal budgets: `disco-trl compare --baseline METHOD`.

For each method and each seed, held-out Pass@1 is read off its evaluation history (`--eval-every`) at the same budget
as the baseline's run of that seed, on three axes: optimizer steps, training time (held-out evaluations left out) and
completions generated. The budget of a pair is the smaller of the two runs' totals on that axis, and Pass@1 there is
interpolated linearly between the two evaluations around it (a method that fills its batches generates more
completions per step, so at the baseline's completions it has made fewer steps). The paired differences over seeds
get a Student-t interval and p-value (`study.stats.paired`). `cost` sums up what each method spent: per step, the
completions and the training time, and for a method that fills its batches the generation rounds per batch, the
completions per informative question kept and the share of batches that ran out of rounds (`disco/fill/*`).
"""

from __future__ import annotations

import math
import statistics

from .plots import series, use_agg
from .study.stats import paired


AXES = {"step": "optimizer steps", "train_seconds": "training time (s)", "completions": "completions generated"}


def value_at(history: list[dict], axis: str, budget: float) -> float | None:
    """Pass@1 at `budget` on `axis`, linear between the evaluations around it (None: beyond the last one)."""
    points = [(float(p[axis]), p["pass@1"]) for p in history if axis in p]
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if x0 <= budget <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (budget - x0) / (x1 - x0)
    return points[0][1] if points and budget == points[0][0] else None


def _final(history: list[dict], axis: str) -> float | None:
    values = [float(p[axis]) for p in history if axis in p]
    return values[-1] if values else None


def paired_at_budgets(runs_by_method: dict[str, list[dict]], baseline: str) -> dict:
    """{method: {axis: {"budget": mean budget over seeds, **study.stats.paired(method, baseline)}}}."""
    base = {r["settings"]["seed"]: r["eval_history"] for r in runs_by_method[baseline]}
    out = {}
    for method, runs in runs_by_method.items():
        if method == baseline:
            continue
        out[method] = {}
        for axis in AXES:
            ours, theirs, budgets = {}, {}, []
            for run in runs:
                seed, history = run["settings"]["seed"], run["eval_history"]
                if seed not in base or _final(history, axis) is None or _final(base[seed], axis) is None:
                    continue
                budget = min(_final(history, axis), _final(base[seed], axis))
                a, b = value_at(history, axis, budget), value_at(base[seed], axis, budget)
                if a is not None and b is not None:
                    ours[seed], theirs[seed] = a, b
                    budgets.append(budget)
            comparison = paired(ours, theirs)
            out[method][axis] = None if comparison is None else {"budget": statistics.fmean(budgets), **comparison}
    return out


def _mean_of(runs: list[dict], key: str) -> float | None:
    values = [v for r in runs for v in series(r["log_history"], key)[1]]
    return statistics.fmean(values) if values else None


def cost(runs_by_method: dict[str, list[dict]]) -> dict:
    """Per method, means over its seeds: completions and training seconds per optimizer step, and the filling
    metrics (None for a method that does not fill)."""
    out = {}
    for method, runs in runs_by_method.items():
        finals = [r["eval_history"][-1] for r in runs if r["eval_history"] and "completions" in r["eval_history"][-1]]
        steps = [p["step"] for p in finals]
        out[method] = {
            "completions_per_step": statistics.fmean(p["completions"] / s for p, s in zip(finals, steps))
            if finals else None,
            "seconds_per_step": statistics.fmean(p["train_seconds"] / s for p, s in zip(finals, steps))
            if finals else None,
            "rounds_per_batch": _mean_of(runs, "disco/fill/rounds"),
            "completions_per_kept_question": _mean_of(runs, "disco/fill/completions_per_kept_question"),
            "out_of_rounds": _mean_of(runs, "disco/fill/out_of_rounds"),
        }
    return out


def _f(value, fmt: str) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else fmt.format(value)


def markdown(result: dict, costs: dict, labels: dict[str, str], baseline: str) -> list[str]:
    """The section of results.md: the paired differences, then the cost table."""
    lines = ["", f"## Against {labels[baseline]}, paired by seed, at equal budgets", "",
             "Held-out Pass@1 of the method minus the baseline's, at the smaller of the two runs' totals on each "
             "axis (interpolated between evaluations); mean over seeds, 95% t interval, two-sided p.", "",
             "| method | budget | mean budget | difference | 95% CI | p | seeds |",
             "|---|---|---:|---:|---|---:|---:|"]
    for method, axes in result.items():
        for axis, c in axes.items():
            if c is None:
                continue
            lines.append(f"| {labels[method]} | {AXES[axis]} | {c['budget']:.0f} | {c['mean'] * 100:+.2f} pts | "
                         f"[{c['ci95'][0] * 100:+.2f}, {c['ci95'][1] * 100:+.2f}] | {_f(c['p'], '{:.3f}')} | "
                         f"{c['n']} |")
    lines += ["", "| method | completions per step | training s per step | rounds per batch | completions per "
              "informative question kept | batches out of rounds |", "|---|---:|---:|---:|---:|---:|"]
    for method, c in costs.items():
        lines.append(f"| {labels[method]} | {_f(c['completions_per_step'], '{:.1f}')} | "
                     f"{_f(c['seconds_per_step'], '{:.2f}')} | {_f(c['rounds_per_batch'], '{:.2f}')} | "
                     f"{_f(c['completions_per_kept_question'], '{:.1f}')} | {_f(c['out_of_rounds'], '{:.3f}')} |")
    return lines


def plot_efficiency(runs_by_method: dict[str, list[dict]], labels: dict[str, str], path: str, title: str) -> str:
    """Held-out Pass@1 against optimizer steps, training time and completions generated: at each evaluation, the
    mean over seeds of both coordinates (band: min-max of Pass@1)."""
    plt = use_agg()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for method, runs in runs_by_method.items():
        histories = [r["eval_history"] for r in runs if r.get("eval_history")]
        if not histories or not all("completions" in p for h in histories for p in h):
            continue
        length = min(len(h) for h in histories)
        passes = [[h[j]["pass@1"] for h in histories] for j in range(length)]
        for ax, axis in zip(axes, AXES):
            xs = [statistics.fmean(float(h[j][axis]) for h in histories) for j in range(length)]
            line, = ax.plot(xs, [statistics.fmean(v) for v in passes], "o-", label=labels.get(method, method))
            if len(histories) > 1:
                ax.fill_between(xs, [min(v) for v in passes], [max(v) for v in passes], color=line.get_color(),
                                alpha=0.15)
    for ax, name in zip(axes, AXES.values()):
        ax.set_xlabel(name)
        ax.set_ylabel("held-out Pass@1")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
