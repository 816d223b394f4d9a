"""Sensitivity: a value that matters and one that does not, by hand and by simulation; ordering of
values; degenerate spreads that must not crash; bad input."""

import math

import numpy as np
import pytest
import scipy.stats

from sftrl.experiment.sensitivity import sensitivity


def test_a_value_that_matters_by_hand():
    groups = {10: [11.0, 12.0, 13.0], 1: [1.0, 2.0, 3.0], 2: [21.0, 22.0, 23.0]}
    out = sensitivity(groups, np.random.default_rng(0))
    assert [r["value"] for r in out["rows"]] == [1, 2, 10]          # numeric, not "1" < "10" < "2"
    assert [r["mean"] for r in out["rows"]] == [2.0, 22.0, 12.0]
    assert [r["std"] for r in out["rows"]] == [1.0, 1.0, 1.0]
    # three seeds: all-equal resamples have probability 1/27 > 2.5%, so the CI is (min, max)
    assert [(r["ci_low"], r["ci_high"]) for r in out["rows"]] == [(1, 3), (21, 23), (11, 13)]
    assert out["between_std"] == 10.0 and out["within_std"] == 1.0 and out["ratio"] == 10.0
    # ANOVA: SS_between = 3 * (10^2 + 10^2 + 0) = 600 on 2 df, SS_within = 3 * 2 = 6 on 6 df: F = 300
    assert out["anova_p"] == pytest.approx(scipy.stats.f.sf(300.0, 2, 6), rel=1e-12)
    # Kruskal-Wallis: rank sums 6, 24, 15 of 1..9 -> H = 12/90 * (36 + 576 + 225)/3 - 30 = 7.2,
    # chi-square with 2 df: p = exp(-7.2 / 2)
    assert out["kruskal_p"] == pytest.approx(math.exp(-3.6), rel=1e-12)
    assert out["best"] == 2
    assert out["null_ratio"] == pytest.approx(math.sqrt(1 / 3), rel=1e-15)
    assert out["reading"] == ("spread between values (10) is 10.0x the seed spread (1); "
                              "seed noise alone gives ~0.6x; ANOVA p=9.7e-07")


def test_a_value_that_does_not_matter_by_hand():
    groups = {"b": [0.25, 0.5, 0.75], "c": [0.75, 0.25, 0.5], "a": [0.5, 0.75, 0.25]}
    out = sensitivity(groups, np.random.default_rng(0))
    assert [r["value"] for r in out["rows"]] == ["a", "b", "c"]
    assert out["between_std"] == 0.0 and out["within_std"] == 0.25 and out["ratio"] == 0.0
    assert out["anova_p"] == pytest.approx(1.0) and out["kruskal_p"] == pytest.approx(1.0)
    assert out["best"] == "a"                                        # a tie: first in order


def test_simulated_large_and_null_effects():
    rng = np.random.default_rng(0)
    lrs = {1e-4: 0.30, 3e-4: 0.35, 1e-3: 0.45}                       # true mean accuracy per lr
    strong = sensitivity({lr: rng.normal(mu, 0.01, 5) for lr, mu in lrs.items()}, rng)
    assert strong["ratio"] > 3 and strong["anova_p"] < 0.01 and strong["kruskal_p"] < 0.05
    assert strong["best"] == 1e-3 and [r["value"] for r in strong["rows"]] == [1e-4, 3e-4, 1e-3]
    # The same distribution for every value: the ratio sits near seed noise, sqrt(1/8) = 0.35
    null = sensitivity({c: rng.normal(0.4, 0.05, 8) for c in (0.0, 0.01, 0.04, 0.1)}, rng)
    assert null["null_ratio"] == pytest.approx(math.sqrt(1 / 8))
    assert null["ratio"] < 1.0 and null["anova_p"] > 0.05 and null["kruskal_p"] > 0.05
    data = {lr: np.array(r["values"]) for lr, r in zip(lrs, strong["rows"])}
    first, second = (sensitivity(data, np.random.default_rng(3)) for _ in range(2))
    assert first == second                                           # same seed, same CIs
    assert first["rows"] != sensitivity(data, np.random.default_rng(4))["rows"]


def test_degenerate_spreads_do_not_crash():
    one_seed = sensitivity({"x": [0.1], "y": [0.3]}, np.random.default_rng(0))
    assert math.isnan(one_seed["within_std"]) and math.isnan(one_seed["ratio"])
    assert math.isnan(one_seed["anova_p"]) and math.isnan(one_seed["rows"][0]["std"])
    assert one_seed["between_std"] == pytest.approx(0.2 / math.sqrt(2), rel=1e-12)
    assert one_seed["reading"].endswith("no seed spread to compare (one seed per value)")
    exact = sensitivity({"x": [0.1, 0.1], "y": [0.3, 0.3]}, np.random.default_rng(0))
    assert exact["ratio"] == math.inf and math.isnan(exact["anova_p"]) and exact["best"] == "y"
    alone = sensitivity({0.5: [0.2, 0.4]}, np.random.default_rng(0))
    assert math.isnan(alone["between_std"]) and math.isnan(alone["kruskal_p"])
    assert alone["within_std"] == pytest.approx(math.sqrt(0.02), rel=1e-12)
    assert alone["reading"] == "one value only: no spread between values to compare"
    same = sensitivity({1: [0.5, 0.5], 2: [0.5, 0.5]}, np.random.default_rng(0))
    assert math.isnan(same["ratio"]) and math.isnan(same["kruskal_p"])   # nothing varies at all


def test_mixed_values_sort_numbers_then_strings():
    out = sensitivity({"b": [1.0], 10: [1.0], "a": [1.0], 2.5: [1.0], np.int64(1): [1.0]},
                      np.random.default_rng(0))
    assert [r["value"] for r in out["rows"]] == [1, 2.5, 10, "a", "b"]


def test_bad_groups_give_one_line_errors():
    with pytest.raises(ValueError, match="non-empty dict"):
        sensitivity({}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="non-empty dict"):
        sensitivity([[0.1, 0.2]], np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"groups\[0.01\] has 1 non-finite value"):
        sensitivity({0.0: [0.1, 0.2], 0.01: [0.3, np.nan]}, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"groups\['grpo'\] is empty"):
        sensitivity({"grpo": []}, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"groups\['grpo'\] has shape \(1, 2\); expected 1-D \[runs\]$"):
        sensitivity({"grpo": [[0.1, 0.2]]}, np.random.default_rng(0))
