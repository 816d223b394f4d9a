"""Power of paired comparisons: the exact MDE against an independent power integral, the central-t
approximation by hand, seeds needed, monotonicity, and how one comparison is read."""

import itertools
import math

import numpy as np
import pytest
import scipy.integrate
import scipy.optimize
import scipy.stats

from sftrl.experiment.power import (
    MAX_SEEDS,
    POWER_TARGET,
    mde,
    mde_central_t,
    paired_power,
    paired_t_power,
    power_target,
    seeds_needed,
)


def power_by_integral(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t-test without the noncentral t: the statistic is
    (Z + lam) / sqrt(V / df) with Z standard normal and V chi-square(df), so
    P(reject) = E_V[ Phi(lam - c sqrt(V/df)) + Phi(-lam - c sqrt(V/df)) ], integrated over V."""
    df = n - 1
    c = scipy.stats.t.ppf(1 - alpha / 2, df)
    lam = effect * math.sqrt(n) / sd

    def integrand(v):
        scale = c * math.sqrt(v / df)
        return (scipy.stats.norm.cdf(lam - scale) + scipy.stats.norm.cdf(-lam - scale)) * scipy.stats.chi2.pdf(v, df)
    return scipy.integrate.quad(integrand, 0, np.inf, epsabs=1e-13, epsrel=1e-12)[0]


def test_central_t_approximation_by_hand():
    # t tables: t_{.975,4} = 2.776, t_{.80,4} = 0.941 -> (2.776 + 0.941) * 2 / sqrt(5) = 3.7170 * 0.894427 = 3.3246
    assert round(float(scipy.stats.t.ppf(0.975, 4)), 3) == 2.776 and round(float(scipy.stats.t.ppf(0.8, 4)), 3) == 0.941
    assert round(mde_central_t(5, 2.0), 2) == 3.32
    # the table's quantiles are rounded to 3 decimals: |error| <= 2 * 0.0005 * 2 / sqrt(5) = 4.5e-4
    assert abs(mde_central_t(5, 2.0) - 3.7170 * 2 / math.sqrt(5)) < 4.5e-4


def test_exact_mde_solves_the_power_integral():
    exact = mde(5, 2.0)
    assert round(exact, 3) == 3.364                    # 1.2% above the central-t approximation (3.325)
    assert power_by_integral(exact, 2.0, 5) == pytest.approx(0.8)
    # and the root of the integral, found by a different solver, is the same effect
    root = scipy.optimize.brentq(lambda e: power_by_integral(e, 2.0, 5) - 0.8, 1.0, 10.0, xtol=1e-12)
    assert exact == pytest.approx(root)


@pytest.mark.parametrize("n, sd", [(2, 1.0), (3, 0.7), (10, 3.0), (30, 2.0)])
def test_noncentral_t_power_matches_the_integral(n, sd):
    for effect in (0.3, 1.0, 2.5):
        assert paired_t_power(effect, sd, n) == pytest.approx(power_by_integral(effect, sd, n))
    assert paired_t_power(mde(n, sd), sd, n) == pytest.approx(0.8)


def test_the_approximation_is_close_and_low_for_few_seeds():
    for n in range(5, 60):
        ratio = mde_central_t(n, 1.0) / mde(n, 1.0)
        assert abs(ratio - 1) < 0.012, n                # measured: 0.9884 at n=5, 0.9987 at n=10
    ratio2 = mde_central_t(2, 1.0) / mde(2, 1.0)
    assert 0.85 < ratio2 < 0.87                          # measured 0.862: n=2 is where the tails matter
    assert all(mde_central_t(n, 1.0) < mde(n, 1.0) for n in range(2, 11))


def test_more_seeds_smaller_mde_and_mde_scales_with_the_spread():
    values = [mde(n, 2.0) for n in range(2, 41)]
    assert all(a > b for a, b in itertools.pairwise(values))
    assert mde(7, 3.0) == pytest.approx(3 * mde(7, 1.0))
    assert mde(5, 2.0, power=0.9) > mde(5, 2.0) > mde(5, 2.0, alpha=0.1)


def test_seeds_needed_is_the_first_n_with_enough_power():
    # normal approximation: n = ((1.96 + 0.8416) * sd / d)^2 = 31.4 for sd = 2, d = 1; the t distribution adds ~2
    assert seeds_needed(1.0, 2.0) == 34
    assert power_by_integral(1.0, 2.0, 34) >= 0.8 > power_by_integral(1.0, 2.0, 33)
    assert seeds_needed(1.0, 1.0) == 10                  # normal approximation 7.85
    assert power_by_integral(1.0, 1.0, 10) >= 0.8 > power_by_integral(1.0, 1.0, 9)
    assert seeds_needed(-1.0, 1.0) == 10                 # two-sided: the sign does not matter
    assert seeds_needed(5.0, 0.1) == 2
    need = [seeds_needed(1.0, sd) for sd in (0.5, 1.0, 2.0, 3.0, 5.0)]
    assert need == sorted(need) and len(set(need)) == 5
    n = seeds_needed(1.0, 3.0)
    assert mde(n, 3.0) <= 1.0 < mde(n - 1, 3.0)        # the two functions agree
    assert seeds_needed(1e-6, 1e3) is None and MAX_SEEDS == 10**7


def test_bad_inputs_say_what_to_change():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        mde(1, 1.0)
    with pytest.raises(ValueError, match="positive number"):
        mde(5, 0.0)
    with pytest.raises(ValueError, match="non-zero effect"):
        seeds_needed(0.0, 1.0)
    with pytest.raises(ValueError, match="power"):
        mde(5, 1.0, power=1.5)


def test_paired_power_reads_one_comparison():
    pw = paired_power([4.0, 5.0, 4.0, 7.0])             # mean 5, deviations -1, 0, -1, 2: sd = sqrt(6/3)
    assert pw["n"] == 4 and pw["mean"] == 5.0 and pw["sd"] == pytest.approx(math.sqrt(2))
    assert pw["mde"] == pytest.approx(mde(4, math.sqrt(2))) and round(pw["mde"], 2) == 3.01
    assert pw["underpowered"] is True                   # 3.01 < |5| but above the 2-point target
    assert paired_power([4.0, 5.0, 4.0, 7.0], target=3.5)["underpowered"] is False
    small = paired_power([0.0, 1.0, -1.0, 2.0])         # mean 0.5, sd sqrt(5/3) = 1.291 -> MDE 2.75 > 0.5
    assert round(small["mde"], 2) == 2.75 and small["underpowered"] is True and small["seeds_needed"] == 16
    flat = paired_power([1.0, 1.0, 1.0])
    assert flat["underpowered"] is None and flat["sd"] == 0 and "no spread" in flat["why"]
    assert paired_power([1.0])["why"] == "fewer than 2 paired seeds"


def test_power_target_from_a_study():
    assert power_target(None) == POWER_TARGET == 2.0
    assert power_target({"power_target": 1}) == 1.0
    with pytest.raises(ValueError, match="power_target"):
        power_target({"power_target": -1})
