"""Statistics over per-seed results: aggregates, bootstrap CIs, paired comparisons, curve bands.

Conventions follow rliable (Agarwal et al., 2021, "Deep RL at the Edge of the Statistical
Precipice"): scores are a [runs, tasks] array, and a 1-D array is [runs] of a single task; the
aggregates are the IQM (25% trimmed mean of all values), and the mean and median over tasks of the
per-task mean over runs; the bootstrap is stratified (runs are resampled within each task).

Unlike rliable, every random function takes an explicit `np.random.Generator` (rliable's
`random_state` does not control its resampling), so the same inputs and seed give the same numbers.
The bootstraps are written here rather than taken from `scipy.stats.bootstrap`, which resamples
rows jointly and cannot stratify by task; percentile and BCa intervals both come from one draw of
resampling indices. Does not read run directories, plot or format (records.py, plots.py, report.py).
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import scipy.stats

from sftrl.registry import Registry

CI_METHODS = Registry("bootstrap CI method")   # (x, statistic, point, boots[R], alpha) -> (low, high)


# -- inputs ----------------------------------------------------------------------------------------
def finite_array(values, name: str, ndims: tuple[int, ...] = (1, 2)) -> np.ndarray:
    """`values` as a float array of an allowed rank, non-empty and free of NaN/inf."""
    try:
        x = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be numbers (got {type(values).__name__})") from None
    if x.ndim not in ndims:
        layout = {1: "1-D [runs]", 2: "2-D [runs, tasks]"}
        raise ValueError(f"{name} has shape {x.shape}; expected "
                         + " or ".join(layout.get(d, f"{d}-D") for d in ndims))
    if x.size == 0:
        raise ValueError(f"{name} is empty; statistics need at least one run")
    bad = np.argwhere(~np.isfinite(x))
    if len(bad):
        where = tuple(int(i) for i in bad[0])
        raise ValueError(f"{name} has {len(bad)} non-finite value(s) (first {x[where]} at index "
                         f"{where[0] if len(where) == 1 else where}); drop or fill missing runs first")
    return x


def _runs_tasks(scores, name: str = "scores") -> np.ndarray:
    x = finite_array(scores, name)
    return x[:, None] if x.ndim == 1 else x                                   # [runs, tasks]


def _check_resampling(rng, reps: int, alpha: float = 0.05) -> None:
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a np.random.Generator (got {type(rng).__name__}); "
                        "pass np.random.default_rng(seed)")
    if isinstance(reps, bool) or not isinstance(reps, (int, np.integer)) or reps < 1:
        raise ValueError(f"reps={reps!r}: use a positive integer number of bootstrap resamples")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha={alpha!r}: use a level in (0, 1), e.g. 0.05 for a 95% interval")


# -- aggregates ------------------------------------------------------------------------------------
def iqm(scores) -> float:
    """Interquartile mean of all values, flattened: scipy's 25% trimmed mean, as rliable.

    scipy cuts int(0.25 * n) values from each end, so for n not divisible by 4 this is not the
    fractional-weight IQM some texts define.
    """
    x = finite_array(scores, "scores", ndims=tuple(range(1, 8)))
    return float(scipy.stats.trim_mean(x.ravel(), 0.25))


def aggregate_mean(scores) -> float:
    """Mean over tasks of the per-task mean over runs (rliable's `aggregate_mean`)."""
    return float(np.mean(_runs_tasks(scores).mean(axis=0)))


def aggregate_median(scores) -> float:
    """Median over tasks of the per-task mean over runs (rliable's `aggregate_median`)."""
    return float(np.median(_runs_tasks(scores).mean(axis=0)))


# -- bootstrap -------------------------------------------------------------------------------------
def resample_indices(shape: tuple[int, ...], rng: np.random.Generator, reps: int) -> np.ndarray:
    """Row indices of `reps` bootstrap copies of an array of `shape`: [reps, *shape].

    For [runs, tasks] each task column gets its own draw of runs (stratified by task)."""
    return rng.integers(0, shape[0], size=(reps, *shape))                     # [R, runs(, tasks)]


def _gather(x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """x at row indices `rows` ([..., runs] or [..., runs, tasks]), each task from its own rows."""
    return x[rows] if x.ndim == 1 else x[rows, np.arange(x.shape[1])]


# Statistics with a form over a leading replicate axis: the same numbers (up to summation order,
# ~1e-16) as calling them once per replicate, 10-100x faster. Others are called once per replicate.
_BATCHED: dict[Callable, Callable[[np.ndarray], np.ndarray]] = {
    np.mean: lambda b: b.reshape(len(b), -1).mean(axis=1),
    np.median: lambda b: np.median(b.reshape(len(b), -1), axis=1),
    iqm: lambda b: scipy.stats.trim_mean(b.reshape(len(b), -1), 0.25, axis=1),
    aggregate_mean: lambda b: b.reshape(len(b), len(b[0]), -1).mean(axis=1).mean(axis=1),
    aggregate_median: lambda b: np.median(b.reshape(len(b), len(b[0]), -1).mean(axis=1), axis=1),
}


def _replicates(x: np.ndarray, statistic: Callable, rng: np.random.Generator, reps: int) -> np.ndarray:
    rows = resample_indices(x.shape, rng, reps)                               # [R, runs(, tasks)]
    batched = _BATCHED.get(statistic)
    if batched is not None:
        return np.asarray(batched(_gather(x, rows)), dtype=float)             # [R]
    return np.array([float(statistic(_gather(x, r))) for r in rows])          # [R]


def bootstrap_samples(scores, statistic: Callable, rng: np.random.Generator, reps: int = 2000
                      ) -> np.ndarray:
    """`statistic` of each stratified bootstrap copy of `scores` ([runs] or [runs, tasks]): [reps].

    All indices are drawn up front, so the draw does not depend on `statistic`."""
    x = finite_array(scores, "scores")
    _check_resampling(rng, reps)
    return _replicates(x, statistic, rng, reps)


@CI_METHODS.register("percentile")
def percentile_interval(x, statistic, point, boots, alpha):
    """The alpha/2 and 1 - alpha/2 quantiles of the bootstrap distribution (linear interpolation)."""
    return tuple(np.quantile(boots, [alpha / 2, 1 - alpha / 2]))


@CI_METHODS.register("bca")
def bca_interval(x, statistic, point, boots, alpha):
    """Bias-corrected and accelerated percentiles (Efron, 1987).

    Bias from the share of replicates below the point estimate (ties count half, as scipy), kept
    inside [1/2R, 1 - 1/2R] so a point outside the bootstrap range gives the extreme replicate
    instead of NaN. Acceleration from the leave-one-run-out jackknife: a run is a row, so for
    [runs, tasks] run i is left out of every task.
    """
    reps = len(boots)
    share = ((boots < point).sum() + (boots <= point).sum()) / (2 * reps)
    z0 = scipy.stats.norm.ppf(np.clip(share, 0.5 / reps, 1 - 0.5 / reps))
    accel = 0.0
    if x.shape[0] > 1:
        jack = np.array([float(statistic(np.delete(x, i, axis=0))) for i in range(x.shape[0])])
        dev = jack.mean() - jack                                                # [runs]
        denom = 6.0 * float((dev ** 2).sum()) ** 1.5
        accel = float((dev ** 3).sum()) / denom if denom > 0 else 0.0
    z = scipy.stats.norm.ppf([alpha / 2, 1 - alpha / 2])
    levels = scipy.stats.norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))
    return tuple(np.quantile(boots, levels))


def bootstrap_ci(scores, statistic: Callable, rng: np.random.Generator, reps: int = 2000,
                 alpha: float = 0.05, method: str = "percentile") -> tuple[float, float, float]:
    """(point, low, high): `statistic(scores)` and its stratified-bootstrap 1 - alpha interval.

    `scores` is [runs] (ordinary bootstrap) or [runs, tasks] (runs resampled independently within
    each task, as rliable's StratifiedBootstrap); `statistic` takes an array of that shape.
    `method` is "percentile" or "bca" (see `CI_METHODS`).
    """
    x = finite_array(scores, "scores")
    _check_resampling(rng, reps, alpha)
    interval = CI_METHODS[method]
    point = float(statistic(x))
    boots = _replicates(x, statistic, rng, reps)                               # [R]
    low, high = interval(x, statistic, point, boots, alpha)
    return point, float(low), float(high)


def summarize(values, rng: np.random.Generator, reps: int = 2000, alpha: float = 0.05) -> dict:
    """Per-seed values of one metric -> n, mean, std (ddof=1), median, iqm, min, max, CI of the mean.

    One seed gives std NaN and the CI (value, value): there is nothing to resample.
    """
    v = finite_array(values, "values", ndims=(1,))
    mean, low, high = bootstrap_ci(v, np.mean, rng, reps=reps, alpha=alpha)
    return {"n": int(v.size), "mean": mean, "std": float(np.std(v, ddof=1)) if v.size > 1 else math.nan,
            "median": float(np.median(v)), "iqm": iqm(v), "min": float(v.min()), "max": float(v.max()),
            "ci_low": low, "ci_high": high, "values": [float(a) for a in v]}


# -- comparisons -----------------------------------------------------------------------------------
def probability_of_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y)/2 over all pairs of runs, averaged over tasks (rliable).

    For 1-D arrays this is the Mann-Whitney U of x over (n * m); [runs, tasks] arrays may differ in
    runs but must share tasks.
    """
    a, b = _runs_tasks(x, "x"), _runs_tasks(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x has {a.shape[1]} tasks and y has {b.shape[1]}; compare the same tasks")
    pairs_a, pairs_b = a[:, None, :], b[None, :, :]                           # [n, 1, T], [1, m, T]
    per_task = ((pairs_a > pairs_b) + 0.5 * (pairs_a == pairs_b)).mean(axis=(0, 1))   # [T]
    return float(per_task.mean())


def pvalue_or_nan(test: Callable[[], object], defined: bool) -> float:
    """A test's p-value, or NaN where the test is undefined or scipy cannot compute it."""
    if not defined:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            p = float(test().pvalue)
        except (ValueError, ZeroDivisionError, FloatingPointError):
            return math.nan
    return p if math.isfinite(p) else math.nan


def paired_difference(x, y, rng: np.random.Generator, reps: int = 2000, alpha: float = 0.05) -> dict:
    """Compare per-seed values x[i] and y[i] (same seed): the mean of x - y with its bootstrap CI
    over seeds, P(x > y), and p-values of the usual tests (scipy, two-sided).

    A test whose statistic is undefined gives NaN, never an exception: the t-tests need n >= 2 and
    a non-zero standard error (Welch: not both groups constant; paired: not a constant
    difference), and the Wilcoxon signed-rank test needs n >= 2 and some non-zero difference.
    """
    a, b = finite_array(x, "x", ndims=(1,)), finite_array(y, "y", ndims=(1,))
    if a.shape != b.shape:
        raise ValueError(f"x has {a.size} seeds and y has {b.size}; a paired difference needs x[i] "
                         "and y[i] from the same seed (use probability_of_improvement for unpaired)")
    d, n = a - b, a.size                                                      # [n]
    mean, low, high = bootstrap_ci(d, np.mean, rng, reps=reps, alpha=alpha)
    spread = n >= 2 and (np.ptp(a) > 0 or np.ptp(b) > 0)
    return {"n": int(n), "mean": mean, "ci_low": low, "ci_high": high,
            "prob_improvement": probability_of_improvement(a, b),
            "welch_p": pvalue_or_nan(lambda: scipy.stats.ttest_ind(a, b, equal_var=False), spread),
            "mannwhitney_p": pvalue_or_nan(lambda: scipy.stats.mannwhitneyu(a, b, alternative="two-sided"),
                                     True),
            "paired_t_p": pvalue_or_nan(lambda: scipy.stats.ttest_rel(a, b), n >= 2 and np.ptp(d) > 0),
            "wilcoxon_p": pvalue_or_nan(lambda: scipy.stats.wilcoxon(d), n >= 2 and bool(np.any(d != 0)))}


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values: the k-th smallest of m is scaled by (m - k + 1), then made
    monotone (running maximum) and capped at 1. NaN entries stay NaN and do not count in m."""
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError(f"pvalues has shape {p.shape}; pass a flat list of p-values")
    known = np.flatnonzero(~np.isnan(p))
    if np.any((p[known] < 0) | (p[known] > 1)):
        raise ValueError(f"pvalues must lie in [0, 1] (got {p[known].min()}..{p[known].max()})")
    order = known[np.argsort(p[known], kind="stable")]                        # ascending p
    m = len(order)
    adjusted = np.full(p.shape, np.nan)
    adjusted[order] = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    return adjusted


# -- learning curves -------------------------------------------------------------------------------
def curve_band(curves, rng: np.random.Generator, reps: int = 1000, alpha: float = 0.05
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-step mean over runs and its percentile-bootstrap band; `curves` is [runs, steps], NaN
    where a run has no value at a step.

    Runs are the resampled unit: one [reps, runs] index matrix serves every step (as count
    weights, so the cost is one [reps, runs] x [runs, steps] product). At each step a replicate
    averages the resampled runs that have a value there; replicates with none are ignored. A step
    with one run gets low = high = mean, a step with none NaN throughout.
    """
    c = np.asarray(curves, dtype=float)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"curves has shape {c.shape}; expected a non-empty [runs, steps] array")
    if np.isinf(c).any():
        raise ValueError("curves contains inf; mark missing values with NaN")
    _check_resampling(rng, reps, alpha)
    runs = c.shape[0]
    present = ~np.isnan(c)                                                     # [runs, steps]
    values = np.where(present, c, 0.0)                                         # [runs, steps]
    n_step = present.sum(axis=0)                                               # [steps]
    idx = resample_indices((runs,), rng, reps)                                 # [R, runs]
    counts = np.bincount((idx + runs * np.arange(reps)[:, None]).ravel(),
                         minlength=reps * runs).reshape(reps, runs).astype(float)   # [R, runs]
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)                        # all-NaN steps
        mean = values.sum(axis=0) / n_step                                     # [steps]
        boots = (counts @ values) / (counts @ present)                         # [R, steps]
        quantile = np.quantile if not np.isnan(boots).any() else np.nanquantile
        low, high = quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)        # [steps] each
    single = n_step == 1
    low[single], high[single] = mean[single], mean[single]
    return mean, low, high


# -- rliable's figures: interval estimates, probability of improvement, performance profiles -------
AGGREGATES: dict[str, Callable] = {"median": aggregate_median, "IQM": iqm, "mean": aggregate_mean}
"""The aggregates of rliable's interval-estimate figure, in its order."""


def interval_estimates(scores: dict, rng: np.random.Generator, reps: int = 2000, alpha: float = 0.05
                       ) -> dict[str, dict[str, tuple[float, float, float]]]:
    """{method: {aggregate: (point, low, high)}} for every aggregate of `AGGREGATES`, each with its
    stratified percentile-bootstrap interval (rliable's `get_interval_estimates`); `scores` is
    {method: [runs] or [runs, tasks]}. With one task the median is the median over runs (the
    median over tasks of one task's mean would only repeat the mean)."""
    out = {}
    for method, values in scores.items():
        x = finite_array(values, f"scores[{method!r}]")
        single = x.ndim == 1 or x.shape[1] == 1
        stats_ = {name: np.median if name == "median" and single else fn for name, fn in AGGREGATES.items()}
        out[method] = {name: bootstrap_ci(x.ravel() if single else x, fn, rng, reps=reps, alpha=alpha)
                       for name, fn in stats_.items()}
    return out


def probability_of_improvement_ci(x, y, rng: np.random.Generator, reps: int = 2000, alpha: float = 0.05
                                  ) -> tuple[float, float, float]:
    """(point, low, high) of P(X > Y) (ties half, averaged over tasks) with a percentile interval
    from resampling the runs of x and of y independently within each task (rliable's unpaired
    design; `paired_difference` is the paired one). Replicates are computed in chunks of 64 so
    100 x 100 runs over 26 tasks stay within memory."""
    a, b = _runs_tasks(x, "x"), _runs_tasks(y, "y")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"x has {a.shape[1]} tasks and y has {b.shape[1]}; compare the same tasks")
    _check_resampling(rng, reps, alpha)
    ia, ib = resample_indices(a.shape, rng, reps), resample_indices(b.shape, rng, reps)   # [R, n, T], [R, m, T]
    boots = np.empty(reps)
    for s in range(0, reps, 64):
        ra, rb = _gather(a, ia[s:s + 64]), _gather(b, ib[s:s + 64])          # [r, n, T], [r, m, T]
        pa, pb = ra[:, :, None, :], rb[:, None, :, :]                       # [r, n, 1, T], [r, 1, m, T]
        boots[s:s + 64] = ((pa > pb) + 0.5 * (pa == pb)).mean(axis=(1, 2)).mean(axis=1)
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return probability_of_improvement(a, b), float(low), float(high)


def performance_profile(scores, taus, rng: np.random.Generator, reps: int = 2000, alpha: float = 0.05
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-score distribution (rliable's performance profile): at each threshold tau the fraction
    of runs scoring strictly above it, averaged over tasks, with a stratified percentile band.
    `scores` is [runs] or [runs, tasks]; returns (profile, low, high), each [len(taus)]."""
    x = _runs_tasks(scores)                                                    # [runs, tasks]
    t = finite_array(taus, "taus", ndims=(1,))                                 # [K]
    _check_resampling(rng, reps, alpha)
    above = lambda v: (v[..., None] > t).mean(axis=-2).mean(axis=-2)          # noqa: E731  [..., K]
    idx = resample_indices(x.shape, rng, reps)                                 # [R, runs, tasks]
    boots = np.concatenate([above(_gather(x, idx[s:s + 64])) for s in range(0, reps, 64)])   # [R, K]
    low, high = np.quantile(boots, [alpha / 2, 1 - alpha / 2], axis=0)
    return above(x), low, high
