"""Figures of `disco-trl study`, one set per experiment (written into its folder):

* `gains.png` (every experiment): each arm's gain against its seeds' own starts, per seed and mean with 95% CI.
* `weights.png` (A, E): the DRO weights' ESS fraction and largest weight over the steps, per tau (mean over seeds).
* `kl.png` (A, B, E): the exact KL(pi_old || pi_theta) per update against the token estimate, and delta.
* `dynamics.png` (C): held-out Pass@1 at each evaluation, generation entropy and training reward over the steps.
"""

from __future__ import annotations

import os

from ..plots import moving_average, series, use_agg
from .plan import DRO_EXPERIMENTS


def _colors(plt, names):
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {n: cycle[i % len(cycle)] for i, n in enumerate(names)}


def _mean_series(runs: list[dict], key: str) -> tuple[list[int], list[float]]:
    """The per-step mean of one metric over the runs that logged it at that step (a metric such as the DRO weights'
    is logged only at steps that hold a group with at least 2 negatives)."""
    curves = [dict(zip(*series(r["log_history"], key))) for r in runs]
    steps = sorted(set().union(*curves))
    means = []
    for step in steps:
        values = [c[step] for c in curves if step in c]
        means.append(sum(values) / len(values))
    return steps, means


def plot_gains(summary: dict, path: str) -> None:
    plt = use_agg()
    arms = list(summary["arms"].values())
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(arms)), 4.5))
    for i, arm in enumerate(arms):
        gains = [100 * r["gain"] for r in arm["runs"]]
        ax.plot([i] * len(gains), gains, "o", color="gray", alpha=0.6, markersize=4)
        pair = arm["vs_start"]
        if pair and pair["n"] > 1:
            low, high = (100 * v for v in pair["ci95"])
            ax.errorbar([i], [100 * pair["mean"]], yerr=[[100 * pair["mean"] - low], [high - 100 * pair["mean"]]],
                        fmt="s", color="black", capsize=4)
    ax.axhline(0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(range(len(arms)), [a["label"] for a in arms], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("gain in test Pass@1 (points) vs the seed's start")
    ax.set_title(f"{summary['title']}: per seed (gray), mean and 95% CI (black)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_weights(runs_by_arm: dict[str, list[dict]], labels: dict[str, str], path: str) -> None:
    plt = use_agg()
    colors = _colors(plt, runs_by_arm)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for name, runs in runs_by_arm.items():
        for ax, key in zip(axes, ("disco/neg_weight_ess", "disco/neg_weight_max")):
            steps, values = _mean_series(runs, key)
            if steps:
                ax.plot(steps, moving_average(values, 8), color=colors[name], label=labels[name])
    axes[0].set_title("ESS of the negatives' DRO weights / number of negatives (1 = basic form)")
    axes[1].set_title("largest weight of a question's negatives")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_kl(runs_by_arm: dict[str, list[dict]], labels: dict[str, str], delta: float | None, path: str) -> None:
    """Exact KL (solid) and the paper's token estimate (dotted) per update, mean over seeds, log scale for the exact
    value; delta as a dashed line."""
    plt = use_agg()
    colors = _colors(plt, runs_by_arm)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    for name, runs in runs_by_arm.items():
        steps, exact = _mean_series(runs, "demo/kl_exact")
        if not steps:
            continue
        axes[0].plot(steps, moving_average(exact, 8), color=colors[name], label=labels[name])
        est_steps, estimate = _mean_series(runs, "demo/kl_log_ratio")
        axes[1].plot(est_steps, moving_average(estimate, 8), color=colors[name], linestyle=":")
        axes[1].plot(steps, moving_average(exact, 8), color=colors[name], label=labels[name])
    for ax in axes:
        if delta:
            ax.axhline(delta, color="black", linestyle="--", linewidth=1, label=f"delta {delta:.2g}")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("symlog", linthresh=1e-7)
    axes[0].set_title("exact KL(pi_old || pi_theta) per update (moving average of 8)")
    axes[1].set_title("exact (solid) and token estimate (dotted), linear scale")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dynamics(summary: dict, runs_by_arm: dict[str, list[dict]], path: str) -> None:
    plt = use_agg()
    colors = _colors(plt, runs_by_arm)
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for name, runs in runs_by_arm.items():
        label = summary["arms"][name]["label"]
        for r in summary["arms"][name]["runs"]:
            axes[0].plot(*zip(*r["curve"]), "o-", color=colors[name], alpha=0.5, linewidth=1)
        axes[0].plot([], [], "o-", color=colors[name], label=label)
        for ax, key in zip(axes[1:], ("entropy", "reward")):
            steps, values = _mean_series(runs, key)
            if steps:
                ax.plot(steps, moving_average(values, 8), color=colors[name], label=label)
    for ax, title in zip(axes, ("held-out test Pass@1 (each seed)", "generation entropy (nats/token, mean over seeds)",
                                "training reward (mean over seeds)")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_experiment(exp, summary: dict, runs_by_arm: dict[str, list], folder: str) -> list[str]:
    """The experiment's figures in `folder`; returns their paths."""
    runs = {name: [r for r in rs if r is not None] for name, rs in runs_by_arm.items()}
    runs = {name: rs for name, rs in runs.items() if rs}
    labels = {a.name: a.label for a in exp.arms}
    if not runs:
        return []
    paths = [os.path.join(folder, "gains.png")]
    plot_gains(summary, paths[0])
    if exp.name in DRO_EXPERIMENTS:
        paths.append(os.path.join(folder, "weights.png"))
        plot_weights({n: rs for n, rs in runs.items() if n != "basic"} or runs, labels, paths[-1])
    if exp.name in (*DRO_EXPERIMENTS, "trust-region"):
        paths.append(os.path.join(folder, "kl.png"))
        delta = (summary.get("calibration") or {}).get("delta")
        plot_kl(runs, labels, delta, paths[-1])
    if exp.name == "long":
        paths.append(os.path.join(folder, "dynamics.png"))
        plot_dynamics(summary, runs, paths[-1])
    return paths
