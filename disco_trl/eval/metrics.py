"""Metrics of `disco-trl eval`: the unbiased pass@k estimator, per-benchmark summaries and their Markdown table.

Pass@1 averaged over samples (the DisCO paper's metric) is the mean over problems of c/n, c correct out of n
samples; pass@k is the estimator of Chen et al. (2021), ``1 - C(n-c, k) / C(n, k)``; the average row is the
unweighted mean over benchmarks (the paper's "Avg.").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any


__all__ = ["BENCHMARK_TITLES", "format_markdown", "pass_at_k", "summarize"]

BENCHMARK_TITLES = {
    "aime24": "AIME 2024",
    "aime25": "AIME 2025",
    "math500": "MATH-500",
    "amc23": "AMC 2023",
    "minerva": "Minerva",
    "olympiadbench": "OlympiadBench",
}


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as a running product (no huge binomials). Requires 0 <= c <= n and 1 <= k <= n.
    """
    if not (isinstance(n, int) and isinstance(c, int) and isinstance(k, int)):
        raise TypeError(f"pass_at_k expects integers, got n={n!r}, c={c!r}, k={k!r}.")
    if n < 1 or not 0 <= c <= n:
        raise ValueError(f"pass_at_k: need n >= 1 and 0 <= c <= n, got n={n}, c={c}.")
    if not 1 <= k <= n:
        raise ValueError(f"pass_at_k: k must be between 1 and the number of samples n={n}, got k={k}.")
    if n - c < k:
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def _default_ks(n: int) -> list[int]:
    ks, k = [], 1
    while k <= n:
        ks.append(k)
        k *= 2
    if ks[-1] != n:
        ks.append(n)
    return ks


def summarize(
    correct: Mapping[str, Sequence[Sequence[float]]], k_values: Iterable[int] | None = None
) -> dict[str, Any]:
    """Metrics from per-sample rewards: ``{benchmark: [[r_11, r_12, ...], ...]}`` (one list per problem).

    Returns ``{"benchmarks": {name: {...}}, "average": {...}}`` where each entry has ``pass@1`` (mean over problems
    of the fraction of correct samples: Pass@1 averaged over samples), ``pass@k`` for each k, ``num_problems`` and
    ``samples_per_problem``; `average` is the unweighted mean over benchmarks (as the paper's tables).
    """
    out: dict[str, Any] = {"benchmarks": {}, "average": {}}
    wanted = None if k_values is None else sorted({int(k) for k in k_values})
    for name, problems in correct.items():
        problems = [list(p) for p in problems if len(p) > 0]
        if not problems:
            continue
        n_min, n_max = min(len(p) for p in problems), max(len(p) for p in problems)
        ks = [k for k in (wanted or _default_ks(n_min)) if 1 <= k <= n_min]
        entry: dict[str, Any] = {
            "num_problems": len(problems),
            "samples_per_problem": n_min if n_min == n_max else [n_min, n_max],
            "num_correct": [int(sum(1 for r in p if r > 0.5)) for p in problems],
        }
        entry["pass@1"] = sum(c / len(p) for c, p in zip(entry["num_correct"], problems)) / len(problems)
        for k in ks:
            entry[f"pass@{k}"] = sum(
                pass_at_k(len(p), c, k) for c, p in zip(entry["num_correct"], problems)
            ) / len(problems)
        out["benchmarks"][name] = entry
    if out["benchmarks"]:
        common = set.intersection(*({key for key in e if key.startswith("pass@")} for e in out["benchmarks"].values()))
        for key in sorted(common, key=lambda s: int(s.split("@")[1])):
            out["average"][key] = sum(e[key] for e in out["benchmarks"].values()) / len(out["benchmarks"])
        out["average"]["num_benchmarks"] = len(out["benchmarks"])
    return out


def format_markdown(summary: Mapping[str, Any], title: str | None = None) -> str:
    """A Markdown table: one row per benchmark and an average row; Pass@1 (avg over samples) and pass@k in %."""
    benchmarks = summary.get("benchmarks", {})
    if not benchmarks:
        return "(no results)\n"
    keys = sorted(
        set.intersection(*({k for k in e if k.startswith("pass@")} for e in benchmarks.values())),
        key=lambda s: int(s.split("@")[1]),
    )
    header = ["Benchmark", "Problems", "Samples"] + [
        ("Pass@1 (avg)" if k == "pass@1" else k) for k in keys
    ]
    lines = [f"### {title}\n" if title else "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, entry in benchmarks.items():
        samples = entry["samples_per_problem"]
        samples = samples if isinstance(samples, int) else f"{samples[0]}-{samples[1]}"
        row = [BENCHMARK_TITLES.get(name, name), str(entry["num_problems"]), str(samples)]
        row += [f"{100 * entry[k]:.1f}" for k in keys]
        lines.append("| " + " | ".join(row) + " |")
    average = summary.get("average", {})
    if len(benchmarks) > 1:
        lines.append("| **Average** | | | " + " | ".join(f"**{100 * average[k]:.1f}**" for k in keys) + " |")
    return "\n".join(line for line in lines if line != "") + "\n"
