"""Plots of training dynamics (like the paper's Figure 2): training reward, generation entropy, KL against step; and
the per-metric series and start/end means that the tables read from a trainer's log history."""

from __future__ import annotations

import math

import matplotlib


def series(log_history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric from a trainer's `state.log_history` (entries without it are skipped)."""
    steps, values = [], []
    for entry in log_history:
        value = entry.get(key)
        if value is None or "step" not in entry or "train_runtime" in entry:
            continue
        value = float(value)
        if math.isfinite(value):
            steps.append(int(entry["step"]))
            values.append(value)
    return steps, values


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def start_end(log_history: list[dict], key: str, fraction: float = 0.1) -> tuple[float | None, float | None]:
    """Mean of a metric over the first and the last `fraction` of its logged points (at least one each)."""
    _, values = series(log_history, key)
    if not values:
        return None, None
    n = max(1, int(len(values) * fraction))
    return _mean(values[:n]), _mean(values[-n:])


def moving_average(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what is there)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def kl_key(log_history: list[dict]) -> str | None:
    """DisCO logs KL(pi_old || pi_theta) as `disco/kl`; TRL's GRPO logs KL to the reference model as `kl` (beta>0)."""
    for key in ("disco/kl", "kl"):
        if any(entry.get(key) is not None for entry in log_history):
            return key
    return None


def use_agg():
    """matplotlib's pyplot on the Agg backend (files only: the commands run headless)."""
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (pyplot only after the backend is chosen)

    return plt


def plot_run(log_history: list[dict], path: str, title: str, eval_history: list[dict] | None = None,
             kl_delta: float | None = None) -> str:
    """One run: reward, entropy, KL (and held-out Pass@1 when `eval_history` has points) against optimizer step.
    `kl_delta` draws DisCO's trust-region radius on the KL panel."""
    plt = use_agg()
    panels = [("reward", "training reward"), ("entropy", "generation entropy (nats/token)")]
    key = kl_key(log_history)
    if key is not None:
        panels.append((key, "KL(pi_old || pi_theta)" if key == "disco/kl" else "KL(pi_theta || pi_ref)"))
    with_eval = bool(eval_history) and len(eval_history) >= 2
    ncols = len(panels) + int(with_eval)
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.4))
    for ax, (metric, label) in zip(axes, panels):
        steps, values = series(log_history, metric)
        if not steps:
            ax.set_title(f"{label}\n(not logged)")
            continue
        window = max(1, len(values) // 10)
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1)
        ax.plot(steps, moving_average(values, window), color="tab:blue", linewidth=2)
        ax.set_title(label)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if metric == "disco/kl":
            # A token-mean estimate on each update's micro-batch: exactly 0 on the first update after a generation
            # (pi_theta = pi_old) and noisy, sometimes negative, on the others.
            ax.axhline(0.0, color="gray", linewidth=0.8)
            if kl_delta is not None:
                ax.axhline(kl_delta, color="tab:red", linestyle="--", linewidth=1.2, label=f"delta = {kl_delta:g}")
                ax.legend(fontsize=8, loc="upper right")
            ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    if with_eval:
        ax = axes[-1]
        ax.plot([h["step"] for h in eval_history], [h["pass@1"] for h in eval_history], "o-", color="tab:green")
        ax.set_title("held-out Pass@1")
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_comparison(runs_by_method: dict[str, list[dict]], labels: dict[str, str], path: str, title: str) -> str:
    """All methods: training reward, entropy, and held-out Pass@1 against step, mean over seeds (band: min-max)."""
    plt = use_agg()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, runs) in enumerate(runs_by_method.items()):
        color = colors[i % len(colors)]
        for ax, metric in zip(axes[:2], ("reward", "entropy")):
            curves = [series(r["log_history"], metric) for r in runs]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            length = min(len(c[0]) for c in curves)
            steps = curves[0][0][:length]
            smoothed = [moving_average(c[1][:length], max(1, length // 10)) for c in curves]
            mean = [sum(vals) / len(vals) for vals in zip(*smoothed)]
            ax.plot(steps, mean, color=color, label=labels.get(method, method), linewidth=2)
            if len(smoothed) > 1:
                ax.fill_between(steps, [min(v) for v in zip(*smoothed)], [max(v) for v in zip(*smoothed)],
                                color=color, alpha=0.15)
        histories = [r["eval_history"] for r in runs if r.get("eval_history")]
        if histories:
            length = min(len(h) for h in histories)
            steps = [p["step"] for p in histories[0][:length]]
            values = [[h[j]["pass@1"] for h in histories] for j in range(length)]
            axes[2].plot(steps, [sum(v) / len(v) for v in values], "o-", color=color,
                         label=labels.get(method, method), linewidth=2)
            if len(histories) > 1:
                axes[2].fill_between(steps, [min(v) for v in values], [max(v) for v in values], color=color,
                                     alpha=0.15)
    for ax, name in zip(axes, ("training reward (moving average)", "generation entropy (nats/token)",
                               "held-out Pass@1")):
        ax.set_title(name)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
