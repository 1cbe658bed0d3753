"""Figures of `disco-trl study`: Pass@1 against the learning rate, the long runs, the training groups over time."""

from __future__ import annotations

import math

from ..methods import METHODS
from ..plots import moving_average, series, use_agg


def _colors(plt, methods):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: cycle[i % len(cycle)] for i, m in enumerate(methods)}


def plot_step_size(results: dict, path: str) -> str:
    """Test Pass@1 after training against the learning rate (log axis), mean ± std over the grid seeds, with the
    starting model's line; hollow markers: below the start; a red ring: entropy collapses, a red cross: it explodes."""
    plt = use_agg()
    grid = results["grid"]
    colors = _colors(plt, grid)
    fig, ax = plt.subplots(figsize=(8, 5))
    n = len(grid)
    for i, (method, per) in enumerate(grid.items()):
        lrs = [g["learning_rate"] for g in per.values()]
        shift = 10 ** ((i - (n - 1) / 2) * 0.025)  # small horizontal offset so the error bars do not overlap
        xs = [lr * shift for lr in lrs]
        means = [g["test"]["mean"] for g in per.values()]
        errs = [g["test"]["std"] or 0.0 for g in per.values()]
        ax.errorbar(xs, means, yerr=errs, color=colors[method], marker="o", capsize=3, linewidth=1.5,
                    label=f"{METHODS[method].label} (best {results['best_learning_rate'][method]:g})", markersize=6)
        for x, m, g in zip(xs, means, per.values()):
            if g["below_start"]:
                ax.plot([x], [m], "o", color="white", markeredgecolor=colors[method], markersize=6, zorder=3)
            if g["entropy"] == "collapses":
                ax.plot([x], [m], "o", color="none", markeredgecolor="red", markersize=13, zorder=4)
            elif g["entropy"] == "explodes":
                ax.plot([x], [m], "x", color="red", markersize=13, zorder=4)
    start = next(iter(next(iter(grid.values())).values()))["start_test"]
    ax.axhline(start, color="black", linestyle="--", linewidth=1, label=f"start ({start:.3f})")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (constant)")
    ax.set_ylabel(f"held-out test Pass@1 after {results['meta']['steps']} steps")
    ax.set_title("Step size: hollow = below start, red ring = entropy collapse, red x = entropy explosion")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_curve(curves: list[tuple[list[int], list[float]]]):
    curves = [c for c in curves if c[0]]
    if not curves:
        return [], []
    length = min(len(c[0]) for c in curves)
    return curves[0][0][:length], [sum(c[1][j] for c in curves) / len(curves) for j in range(length)]


def plot_long_runs(parts: dict, results: dict, path: str) -> str:
    """The long runs (the paper's Figure-style curves): held-out Pass@1 and generation entropy against step."""
    plt = use_agg()
    colors = _colors(plt, parts["long"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for method, runs in parts["long"].items():
        if not runs:
            continue
        label = f"{METHODS[method].label} (lr {parts['best'][method]:g})"
        summary = results["long"][method]
        axes[0].plot(summary["steps"], summary["pass@1"], "o-", color=colors[method], label=label, linewidth=2)
        steps, values = _mean_curve([series(r["log_history"], "entropy") for r in runs])
        if steps:
            axes[1].plot(steps, moving_average(values, max(1, len(values) // 20)), color=colors[method],
                         label=label, linewidth=1.8)
    axes[0].set_title(f"held-out test Pass@1 (seeds {results['meta']['long_seeds']})")
    axes[1].set_title("generation entropy (nats/token, moving average)")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Long runs: {results['meta']['long_steps']} steps at each method's best rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_imbalance(parts: dict, results: dict, path: str) -> str:
    """The training groups over the step-`steps` runs at the best rate (mean over seeds): negatives per positive in
    mixed groups, fraction of mixed groups, fraction of all-wrong groups."""
    plt = use_agg()
    best, steps = parts["best"], parts["steps"]
    colors = _colors(plt, best)
    keys = [("neg_per_pos_mixed", "negatives per positive (mixed groups)"), ("frac_mixed", "fraction of mixed groups"),
            ("frac_all_wrong", "fraction of all-wrong groups")]
    fig, axes = plt.subplots(1, len(keys), figsize=(15, 4))
    for method in best:
        runs = parts["grid"][method][best[method]] + parts["extra"][method] + parts["long"][method]
        for ax, (key, _) in zip(axes, keys):
            curves = []
            for r in runs:
                points = [(g["step"], g[key]) for g in r.get("group_history", []) if g["step"] < steps
                          and g[key] is not None and math.isfinite(g[key])]
                curves.append(([p[0] for p in points], [p[1] for p in points]))
            xs, ys = _mean_curve(curves)
            if xs:
                ax.plot(xs, moving_average(ys, 5), color=colors[method], linewidth=1.8,
                        label=f"{METHODS[method].label} (lr {best[method]:g})")
    for ax, (_, title) in zip(axes, keys):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Training groups at the best rate, first {steps} steps, mean over seeds (moving average of 5 "
                 "generation batches)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
