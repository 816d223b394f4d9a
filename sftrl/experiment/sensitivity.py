"""Sensitivity of a metric to one hyperparameter: per-value CIs, and between-value spread vs seed spread.

Owns `sensitivity`, the numbers behind a sensitivity table and plot. The question it answers is
whether changing the value moves the metric by more than changing the seed does: `ratio` compares
the spread of the per-value means with the pooled per-seed spread, and `null_ratio` is what seed
noise alone would give (means of n seeds spread by about seed_std / sqrt(n)). Does not plot or
format tables (plots.py, report.py) and does not correct p-values across hyperparameters
(`stats.holm` does, where a report tests several).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.stats

from sftrl.experiment.stats import finite_array, pvalue_or_nan, summarize


def _order(value) -> tuple:
    """Sort key: numbers numerically, then strings lexically, then anything else by repr."""
    if isinstance(value, numbers.Real):
        return (0, float(value), "")
    if isinstance(value, str):
        return (1, 0.0, value)
    return (2, 0.0, repr(value))


def _pooled_std(samples: list[np.ndarray]) -> float:
    """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)); NaN when no value has two seeds."""
    dof = sum(len(s) - 1 for s in samples)
    if dof == 0:
        return math.nan
    return float(math.sqrt(sum(((s - s.mean()) ** 2).sum() for s in samples) / dof))


def _ratio(between: float, within: float) -> float:
    if math.isnan(between) or math.isnan(within):
        return math.nan
    if within == 0:
        return math.inf if between > 0 else math.nan
    return between / within


def _reading(between: float, within: float, ratio: float, null_ratio: float, anova_p: float) -> str:
    """One line for a report: the two spreads, their ratio against seed noise, and the ANOVA."""
    if math.isnan(between):
        return "one value only: no spread between values to compare"
    if math.isnan(within):
        return f"spread between values ({between:.3g}); no seed spread to compare (one seed per value)"
    if math.isinf(ratio):
        return f"spread between values ({between:.3g}) with no seed spread (every value's seeds agree)"
    p = "n/a" if math.isnan(anova_p) else f"{anova_p:.2g}"
    return (f"spread between values ({between:.3g}) is {ratio:.1f}x the seed spread ({within:.3g}); "
            f"seed noise alone gives ~{null_ratio:.1f}x; ANOVA p={p}")


def sensitivity(groups: dict, rng: np.random.Generator, reps: int = 2000, alpha: float = 0.05) -> dict:
    """Per-seed metric values grouped by hyperparameter value -> rows and spread statistics.

    Returns `rows` (per value, sorted: value, n, mean, std, ci_low, ci_high, values),
    `between_std` (std, ddof=1, of the per-value means), `within_std` (pooled per-seed std),
    `ratio` (between / within; inf when seeds agree exactly but values differ, NaN when either is
    undefined), `null_ratio` (sqrt(mean 1/n): the ratio expected when the value does not matter),
    `anova_p` (one-way ANOVA) and `kruskal_p` (Kruskal-Wallis), NaN where undefined, `best` (the
    value with the highest mean; the first in sort order on a tie) and a one-line `reading`.
    """
    if not isinstance(groups, dict) or not groups:
        raise ValueError("groups must be a non-empty dict {hyperparameter value: per-seed values}")
    values = sorted(groups, key=_order)
    samples = [finite_array(groups[v], f"groups[{v!r}]", ndims=(1,)) for v in values]
    rows = []
    for value, sample in zip(values, samples):
        s = summarize(sample, rng, reps=reps, alpha=alpha)
        rows.append({"value": value, **{k: s[k] for k in ("n", "mean", "std", "ci_low", "ci_high",
                                                          "values")}})
    means = np.array([r["mean"] for r in rows])                                # [values]
    between = float(np.std(means, ddof=1)) if len(rows) > 1 else math.nan
    within = _pooled_std(samples)
    ratio = _ratio(between, within)
    null_ratio = float(math.sqrt(np.mean([1.0 / len(s) for s in samples])))
    # F = between / within mean squares is undefined (not infinite evidence) when seeds agree exactly
    testable = len(samples) > 1 and not math.isnan(within) and within > 0
    anova_p = pvalue_or_nan(lambda: scipy.stats.f_oneway(*samples), testable)
    kruskal_p = pvalue_or_nan(lambda: scipy.stats.kruskal(*samples), len(samples) > 1)
    return {"rows": rows, "between_std": between, "within_std": within, "ratio": ratio,
            "null_ratio": null_ratio, "anova_p": anova_p, "kruskal_p": kruskal_p,
            "best": values[int(np.argmax(means))],
            "reading": _reading(between, within, ratio, null_ratio, anova_p)}
