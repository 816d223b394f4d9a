"""Statistical power of a paired comparison over seeds: the smallest effect a study can detect, and
the seeds an effect of a given size would need.

A comparison of method A with a baseline on the same seeds is a paired t-test on the n per-seed
differences d_i = A_i - B_i, whose spread s is the standard deviation of d (ddof=1). With a true
mean difference delta, the test statistic mean(d) / (s / sqrt(n)) follows a noncentral t with
n - 1 degrees of freedom and noncentrality delta * sqrt(n) / s, so the two-sided test at level
alpha has power

    P(|T| > t_{1-alpha/2, n-1}) = sf(t_crit; n-1, lam) + sf(t_crit; n-1, -lam),  lam = delta sqrt(n) / s.

`mde` solves power = 0.8 for delta exactly (root of the noncentral-t power, scipy.stats.nct);
`mde_central_t` is the textbook approximation (t_{1-alpha/2, n-1} + t_{power, n-1}) * s / sqrt(n),
which ignores the far rejection tail and the skew of the noncentral t: it is 1.2% low at n = 5,
14% low at n = 2, and within 0.2% from n = 10 on. `seeds_needed` is the smallest n whose exact
power reaches the target. The observed s stands in for the true spread (the usual plug-in
reading, optimistic when s is small by chance).

References: Colas, Sigaud & Oudeyer (2018), "How Many Random Seeds? Statistical Power Analysis in
Deep Reinforcement Learning Experiments" (the same t-test power analysis for RL seeds); Henderson
et al. (2018), "Deep Reinforcement Learning that Matters" (why a handful of seeds misleads).

`paired_power` reads one comparison's per-seed differences with these; `power_target` is a study's
threshold on the MDE. Pure numpy/scipy: reads no files and draws no tables (the report's
comparisons section shows the numbers, `answer` words them).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.optimize
import scipy.stats

POWER = 0.8
"""The conventional target: a real effect of the MDE is detected four times in five."""
ALPHA = 0.05
"""Two-sided significance level of the paired t-test."""
MAX_SEEDS = 10**7
"""`seeds_needed` gives up (returns None) beyond this many seeds."""
POWER_TARGET = 2.0
"""Default largest MDE (in accuracy points) a comparison may have and still count as powered; a
study sets its own with the key `power_target`."""


def _check(n: int, sd: float, power: float, alpha: float) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}: a paired t-test needs at least 2 seeds (an integer)")
    if not (math.isfinite(sd) and sd > 0):
        raise ValueError(f"sd={sd!r}: the spread of the paired differences must be a positive number "
                         "(with sd 0 the t statistic is undefined)")
    if not (0 < alpha < 1 and alpha / 2 < power < 1):
        raise ValueError(f"power={power!r}, alpha={alpha!r}: use 0 < alpha < 1 and alpha/2 < power < 1")


def paired_t_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test at level `alpha` to detect a true mean difference
    `effect` with n seeds whose differences have standard deviation `sd` (exact, noncentral t)."""
    _check(n, sd, 0.5, alpha)
    df = n - 1
    t_crit = scipy.stats.t.ppf(1 - alpha / 2, df)
    lam = abs(effect) * math.sqrt(n) / sd
    # sf at -lam is the lower rejection tail P(T < -t_crit; lam) by symmetry (scipy's cdf there
    # can return NaN where the value underflows; its sf does not).
    return float(scipy.stats.nct.sf(t_crit, df, lam) + scipy.stats.nct.sf(t_crit, df, -lam))


def mde(n: int, sd: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """Minimum detectable effect: the true mean difference the two-sided paired t-test detects with
    probability `power` from n seeds of paired spread `sd` (same units as `sd`), solved exactly."""
    _check(n, sd, power, alpha)
    df = n - 1
    t_crit = scipy.stats.t.ppf(1 - alpha / 2, df)

    def gap(lam: float) -> float:
        return float(scipy.stats.nct.sf(t_crit, df, lam) + scipy.stats.nct.sf(t_crit, df, -lam)) - power
    high = 2.0 * (t_crit + scipy.stats.t.ppf(power, df))        # the approximation is below the root
    while gap(high) < 0:
        high *= 2.0
    lam = scipy.optimize.brentq(gap, 0.0, high, xtol=1e-12)
    return lam * sd / math.sqrt(n)


def mde_central_t(n: int, sd: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The central-t approximation (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n) of `mde`."""
    _check(n, sd, power, alpha)
    df = n - 1
    return float(scipy.stats.t.ppf(1 - alpha / 2, df) + scipy.stats.t.ppf(power, df)) * sd / math.sqrt(n)


def seeds_needed(effect: float, sd: float, power: float = POWER, alpha: float = ALPHA) -> int | None:
    """The smallest n >= 2 whose paired t-test reaches `power` for a true difference `effect` at
    paired spread `sd` (exact noncentral-t power, which grows with n); None beyond MAX_SEEDS."""
    _check(2, sd, power, alpha)
    if not (math.isfinite(effect) and effect != 0):
        raise ValueError(f"effect={effect!r}: give a non-zero effect size (same units as sd)")

    def enough(n: int) -> bool:
        return paired_t_power(effect, sd, n, alpha) >= power
    low, high = 1, 2                                  # enough(low) is False by convention (n=1 has no test)
    while not enough(high):
        low, high = high, high * 2
        if low > MAX_SEEDS:
            return None
    while high - low > 1:                             # invariant: not enough(low), enough(high)
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high if high <= MAX_SEEDS else None


# -- reading one comparison ----------------------------------------------------------------------
def paired_power(diffs, *, target: float = POWER_TARGET, effect: float = 1.0, power: float = POWER,
                 alpha: float = ALPHA) -> dict:
    """What the per-seed differences `diffs` of one comparison can detect: n, the spread sd (ddof=1),
    the exact `mde`, `seeds_needed` for `effect`, and `underpowered`: True when the MDE is larger
    than the observed |mean difference| (a true effect of the observed size would be missed more
    than one time in five) or than `target`; None, with `why`, when power is undefined (fewer
    than 2 seeds, or differences without spread)."""
    d = np.asarray(diffs, dtype=float)
    out = {"n": int(d.size), "mean": float(d.mean()) if d.size else math.nan, "sd": math.nan, "mde": math.nan,
           "seeds_needed": None, "underpowered": None, "why": ""}
    if d.size < 2:
        return {**out, "why": "fewer than 2 paired seeds"}
    out["sd"] = float(np.std(d, ddof=1))
    if not out["sd"] > 0:
        return {**out, "why": "the paired differences have no spread"}
    out["mde"] = mde(int(d.size), out["sd"], power, alpha)
    out["seeds_needed"] = seeds_needed(effect, out["sd"], power, alpha)
    out["underpowered"] = bool(out["mde"] > abs(out["mean"]) or out["mde"] > target)
    return out


def power_target(study: dict | None) -> float:
    """A study's `power_target` (accuracy points), or `POWER_TARGET` when it sets none."""
    value = (study or {}).get("power_target", POWER_TARGET)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"study key power_target={value!r}: give the largest acceptable minimum detectable "
                         f"effect in accuracy points, a positive number (default {POWER_TARGET})")
    return float(value)
