"""The study's statistics: paired differences over seeds with Student-t intervals and p-values, the smallest difference
a number of seeds detects (and the seeds a difference needs), Holm's correction over the declared comparisons, and the
one-standard-error rule for choosing among settings.

No SciPy: the t distribution's CDF is computed from the regularized incomplete beta function (a continued fraction,
evaluated by the modified Lentz method), and its quantiles by bisection on the CDF; both are checked against
tabulated values in tests/test_study.py.
"""

from __future__ import annotations

import math
import statistics


def _beta_continued_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (converges quickly for x < (a + 1) / (a + b + 2))."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    value = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return value


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_continued_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_continued_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value with P(T <= t) = p (bisection on `t_cdf`)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    low, high = -1e4, 1e4
    for _ in range(200):
        mid = (low + high) / 2.0
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2.0


def paired(a: dict, b: dict) -> dict | None:
    """a - b over the keys (seeds) both have: mean, sd, standard error, 95% t interval, two-sided p-value of the
    one-sample t test of mean 0, and the smallest difference detectable with 80% power at the 5% level,
    (t_0.975 + t_0.80) * sd / sqrt(n). None when no key is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    diffs = [a[s] - b[s] for s in seeds]
    n, mean = len(diffs), statistics.fmean(diffs)
    out = {"seeds": seeds, "diffs": diffs, "n": n, "mean": mean, "sd": math.nan, "se": math.nan,
           "ci95": [math.nan, math.nan], "t": math.nan, "p": math.nan, "detectable": math.nan}
    if n < 2:
        return out
    sd = statistics.stdev(diffs)
    se = sd / math.sqrt(n)
    half = t_quantile(0.975, n - 1) * se
    out.update(sd=sd, se=se, ci95=[mean - half, mean + half], detectable=detectable(sd, n))
    if se > 0:
        out["t"] = mean / se
        out["p"] = 2.0 * (1.0 - t_cdf(abs(mean / se), n - 1))
    elif mean != 0:
        out["t"], out["p"] = math.copysign(math.inf, mean), 0.0
    return out


def detectable(sd: float, n: int, power: float = 0.80, alpha: float = 0.05) -> float:
    """The smallest mean paired difference that n pairs with this SD detect with `power` at two-sided level `alpha`:
    (t_{1 - alpha/2} + t_power) * sd / sqrt(n), on n - 1 degrees of freedom."""
    return (t_quantile(1.0 - alpha / 2.0, n - 1) + t_quantile(power, n - 1)) * sd / math.sqrt(n)


def seeds_for(difference: float, sd: float, power: float = 0.80, alpha: float = 0.05) -> int:
    """The fewest pairs (seeds) whose detectable difference (`detectable`) is at most `difference`."""
    if not difference > 0 or not sd >= 0:
        raise ValueError(f"need a difference > 0 and an sd >= 0, got {difference} and {sd}")
    n = 2
    while detectable(sd, n, power, alpha) > difference:
        n += 1
    return n


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm's step-down adjusted p-values over the family `pvalues` (name -> p): the k-th smallest p times (m - k + 1),
    made non-decreasing, capped at 1. A NaN p-value (a comparison without data) stays NaN and is not counted in m."""
    named = sorted(((p, name) for name, p in pvalues.items() if not math.isnan(p)), key=lambda item: item[0])
    adjusted, running = dict.fromkeys(pvalues, math.nan), 0.0
    for k, (p, name) in enumerate(named):
        running = max(running, min(1.0, (len(named) - k) * p))
        adjusted[name] = running
    return adjusted


def one_se_choice(values: dict[float, list[float]]) -> dict:
    """The one-standard-error rule over settings (e.g. learning rates), larger values better: the best setting by mean,
    the standard error of its mean, and the *smallest* setting whose mean is within one standard error of the best
    (the most conservative of the settings the data cannot tell apart). Needs at least 2 values per setting."""
    means = {k: statistics.fmean(v) for k, v in values.items()}
    if any(len(v) < 2 for v in values.values()):
        raise ValueError("the one-standard-error rule needs at least 2 values (seeds) per setting")
    best = max(means, key=lambda k: (means[k], -k))
    se = statistics.stdev(values[best]) / math.sqrt(len(values[best]))
    chosen = min(k for k in means if means[k] >= means[best] - se)
    return {"best": best, "best_mean": means[best], "best_se": se, "chosen": chosen, "means": means}


def verdict(comparison: dict | None, adjusted_p: float, margin: float, alpha: float = 0.05) -> str:
    """The pre-registered reading of one comparison (docs/study.md): "shown" (adjusted p < alpha, difference > 0),
    "reversed" (adjusted p < alpha, difference < 0), "not shown" (not significant and the 95% interval inside
    [-margin, +margin]: no difference as large as the margin), else "inconclusive"."""
    if comparison is None or comparison["n"] < 2 or math.isnan(comparison["ci95"][0]):
        return "inconclusive"
    if not math.isnan(adjusted_p) and adjusted_p < alpha:
        return "shown" if comparison["mean"] > 0 else "reversed"
    low, high = comparison["ci95"]
    return "not shown" if -margin <= low and high <= margin else "inconclusive"
