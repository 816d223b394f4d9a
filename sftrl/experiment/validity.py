"""Testbed validity: can this testbed answer the study's question at all?

Each check is "met", "not met" or "not measured", with its number:

  warm-start accuracy   greedy accuracy of the warm start every method continues from lies in
                        `WARM_ACCURACY` (RL needs some successes to reinforce, and room to improve)
  warm-start pass@k     pass@k above that greedy accuracy: sampling finds answers greedy decoding
                        misses, which is what RL can reinforce
  RL raises its reward  per GRPO seed an OLS slope of `reward/gain_vs_ref` (`GAIN`) over its RL
                        steps where every seed logged it, else of `reward/mean`; the 95%
                        bootstrap CI of the mean slope over seeds lies above 0; when a positive
                        mean is smaller than its MDE, the seeds a one-sample t-test on the
                        per-seed slopes would need to detect it (80% power)
  RL raises accuracy    GRPO's final greedy accuracy minus the warm start's, per seed (the seed's own
                        warm start, or the one shared by every seed); the 95% CI lies above 0
  mixed groups          1 - `groups/zero_std_frac`, averaged over GRPO's RL steps, at least
                        `MIXED_GROUPS`
  evaluation noise      binomial SE sqrt(p (1 - p) / n) of one run's accuracy, with p the baseline's
                        mean and n the test-set size (`eval/<task>/n`), at most half the power target
                        (not measured when p is 0 or 1, where the formula gives 0)

GRPO is the method named "grpo", else the first method whose config has rl.algo.preset grpo and
RL steps. The warm start is read from EXP/warm/runs/*/ as `sftrl study` writes it; a plain sweep has
none ("not measured").

Owns `assess` (the numbers, as a `Validity`) and `section` (the report's table). Resampling uses the
generator passed in; nothing else is random.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sftrl.experiment import stats
from sftrl.experiment.power import MAX_SEEDS, paired_power
from sftrl.experiment.records import Experiment, Run, config_at, final_value, load_experiment
from sftrl.experiment.report_results import REPS

WARM_ACCURACY = (0.05, 0.80)
"""Greedy accuracy range of a usable warm start. Below 5%, nearly every group of samples fails
together and carries no gradient; above 80% there is little left for any method to improve."""
MIXED_GROUPS = 0.3
"""Least share of GRPO groups with mixed outcomes. A group whose rewards are all equal has zero
group-relative advantage and so no policy gradient; below 30% most of each RL step is wasted."""
REWARD = "reward/mean"
GAIN = "reward/gain_vs_ref"
"""The step's reward minus an importance-sampling estimate, from the same samples, of the reference
policy's reward on the same prompts. Its expected slope is reward/mean's, without the step-to-step
difference in the prompts' difficulty, which dominates reward/mean's noise: when GRPO logged it,
the check reads its slope (and shows reward/mean's beside it)."""
ZERO_STD = "groups/zero_std_frac"
POINTS = 100.0
"""Accuracy points per unit of an accuracy in [0, 1]."""


@dataclass(frozen=True)
class Check:
    """One validity check as the report shows it."""
    name: str
    value: str                  # the number, as text
    met: bool | None            # None: not measured
    rule: str                   # when it counts as met


@dataclass(frozen=True)
class Validity:
    """Every check, and the numbers the summary's opening quotes."""
    checks: tuple
    grpo: str | None            # the method the RL checks read
    slope: dict | None          # reward slope per step: mean, ci_low, ci_high, n, key (the metric read)

    @property
    def rl_learns(self) -> bool | None:
        """Whether RL raised its own training reward (None: not measured)."""
        return None if self.slope is None or self.slope["n"] < 2 else bool(self.slope["ci_low"] > 0)

    def verdict(self) -> str:
        """'4 of 6 checks met. Not met: NAME, VALUE; .... Not measured: NAME, ....'"""
        out = [f"{sum(c.met is True for c in self.checks)} of {len(self.checks)} checks met."]
        failed = [f"{c.name}, {c.value}" for c in self.checks if c.met is False]
        if failed:
            out.append("Not met: " + "; ".join(failed) + ".")
        unknown = [c.name for c in self.checks if c.met is None]
        if unknown:
            out.append("Not measured: " + ", ".join(unknown) + ".")
        return " ".join(out)

    def rl_warning(self) -> str | None:
        """One sentence when RL did not raise its own reward; None otherwise."""
        if self.rl_learns is not False:
            return None
        return (f"RL did not raise its own training reward on this testbed: the slope of {self.grpo}'s "
                f"{self.slope['key']} is {_slope_text(self.slope)}, an interval that is not above 0.")


# -- inputs ----------------------------------------------------------------------------------------
def grpo_method(exp: Experiment) -> str | None:
    """The method named "grpo", else the first with rl.algo.preset grpo and RL steps."""
    def has_rl(m: str) -> bool:
        return any("rl" in r.phases for r in exp.method_runs(m))
    if "grpo" in exp.methods and has_rl("grpo"):
        return "grpo"
    return next((m for m in exp.methods if has_rl(m)
                 and config_at(exp.method_runs(m)[0].config, "rl.algo.preset") == "grpo"), None)


def warm_runs(exp: Experiment) -> list[Run]:
    """The finished warm-start runs of a study (EXP/warm); [] when there are none."""
    if not (exp.path / "warm").is_dir():
        return []
    try:
        return load_experiment(exp.path / "warm").done
    except ValueError:
        return []


def ols_slope(x, y) -> float:
    """Least-squares slope of y on x: sum((x - mean x)(y - mean y)) / sum((x - mean x)^2)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    dx = x - x.mean()
    return float((dx * (y - y.mean())).sum() / (dx ** 2).sum())


def _rl_column(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of `key` over the run's RL steps where it was logged."""
    if key not in run.metrics:
        return np.zeros(0), np.zeros(0)
    rl = np.array([p == "rl" for p in run.phases], dtype=bool) & np.isfinite(run.metrics[key])
    return run.steps[rl], run.metrics[key][rl]


def reward_slopes(runs: list[Run], key: str = REWARD) -> dict[int, float]:
    """Per seed: the OLS slope of `key` over the run's RL steps (runs with < 2 such steps left out)."""
    out = {}
    for r in runs:
        steps, reward = _rl_column(r, key)
        if len(np.unique(steps)) >= 2:
            out[r.seed] = ols_slope(steps, reward)
    return out


def mixed_share(runs: list[Run]) -> float | None:
    """Mean over runs of the mean over RL steps of 1 - groups/zero_std_frac; None if never logged."""
    per_run = [float(np.mean(1.0 - v)) for v in (_rl_column(r, ZERO_STD)[1] for r in runs) if len(v)]
    return float(np.mean(per_run)) if per_run else None


def _interval(values, rng) -> dict:
    v = np.asarray(values, dtype=float)
    mean, low, high = stats.bootstrap_ci(v, np.mean, rng, reps=REPS)
    return {"mean": mean, "ci_low": low, "ci_high": high, "n": int(v.size)}


def _slope_text(s: dict) -> str:
    return f"{s['mean']:+.3g} per step (95% CI [{s['ci_low']:+.3g}, {s['ci_high']:+.3g}], {s['n']} seeds)"


def _slope_seeds(slopes: dict[int, float]) -> str:
    """For a positive mean slope whose spread over seeds hides it: '; N seeds would detect it', from a
    one-sample t-test on the per-seed slopes (80% power, two-sided 5%) at the observed mean and sd."""
    v = np.asarray(list(slopes.values()), dtype=float)
    if not (v.size and v.mean() > 0):
        return ""
    pw = paired_power(v, target=math.inf, effect=float(v.mean()))      # underpowered: MDE above the mean
    if not pw["underpowered"]:
        return ""
    n = pw["seeds_needed"]
    return (f"; {n} seeds would detect a slope this size (80% power, observed spread)" if n is not None
            else f"; more than {MAX_SEEDS} seeds would be needed to detect a slope this size")


def _above_zero(ci: dict) -> bool | None:
    return None if ci["n"] < 2 else bool(ci["ci_low"] > 0)


# -- the checks ------------------------------------------------------------------------------------
def _warm_checks(warm: list[Run], metric: str) -> list[Check]:
    lo, hi = WARM_ACCURACY
    acc_rule = f"greedy accuracy in [{lo:.0%}, {hi:.0%}]"
    pass_rule = "pass@k above the greedy accuracy"
    accs = [v for v in (final_value(r, metric) for r in warm) if v is not None]
    if not accs:
        why = "not measured (no warm start in this experiment)" if not warm else f"not measured (no {metric})"
        return [Check("warm-start accuracy", why, None, acc_rule), Check("warm-start pass@k", why, None, pass_rule)]
    acc = float(np.mean(accs))
    where = f"{len(accs)} warm starts, mean" if len(accs) > 1 else "1 warm start"
    checks = [Check("warm-start accuracy", f"{POINTS * acc:.1f}% ({where})", lo <= acc <= hi, acc_rule)]
    task = metric.rsplit("/", 1)[0]
    keys = sorted({k for r in warm for k in r.final if k.startswith(task + "/pass@") and k[len(task) + 6:].isdigit()},
                  key=lambda k: int(k.rsplit("@", 1)[1]))
    if not keys:
        return checks + [Check("warm-start pass@k", "not measured (the warm start has no pass@k)", None, pass_rule)]
    key = keys[-1]
    pk = float(np.mean([v for v in (final_value(r, key) for r in warm) if v is not None]))
    checks.append(Check("warm-start pass@k", f"{key.rsplit('/', 1)[1]} = {POINTS * pk:.1f}% against greedy "
                        f"{POINTS * acc:.1f}%", pk > acc, pass_rule))
    return checks


def _rl_checks(exp: Experiment, grpo: str | None, warm: list[Run], metric: str, rng) -> tuple[list[Check], dict | None]:
    reward_rule, acc_rule = "95% CI of the mean slope above 0", "95% CI of the paired gain above 0"
    mixed_rule = f"at least {MIXED_GROUPS:.0%} of groups"
    if grpo is None:
        why = "not measured (no GRPO method with RL steps)"
        return [Check("RL raises its reward", why, None, reward_rule), Check("RL raises accuracy", why, None, acc_rule),
                Check("mixed groups", why, None, mixed_rule)], None
    runs = exp.method_runs(grpo)
    checks, slope = [], None
    slopes, gains = reward_slopes(runs), reward_slopes(runs, GAIN)
    if slopes:
        raw = {**_interval(list(slopes.values()), rng), "key": REWARD}
        text = f"{REWARD} {_slope_text(raw)}{_slope_seeds(slopes)}"
        slope = raw
        if len(gains) == len(slopes):
            slope = {**_interval(list(gains.values()), rng), "key": GAIN}
            text = f"{GAIN} {_slope_text(slope)}{_slope_seeds(gains)}; {text}"
        checks.append(Check("RL raises its reward", f"{grpo}: {text}", _above_zero(slope),
                            f"{reward_rule} ({GAIN} when logged, else {REWARD})"))
    else:
        checks.append(Check("RL raises its reward", f"not measured ({grpo} logged no {REWARD} over 2+ RL steps)",
                            None, reward_rule))
    start = _warm_by_seed(exp, warm, metric)
    gains = [POINTS * (final_value(r, metric) - start(r.seed)) for r in runs
             if final_value(r, metric) is not None and start(r.seed) is not None]
    if gains:
        g = _interval(gains, rng)
        checks.append(Check("RL raises accuracy", f"{grpo} minus the warm start: {g['mean']:+.1f} points (95% CI "
                            f"[{g['ci_low']:+.1f}, {g['ci_high']:+.1f}], {g['n']} seeds)", _above_zero(g), acc_rule))
    else:
        checks.append(Check("RL raises accuracy", "not measured (no warm start to compare with)", None, acc_rule))
    mixed = mixed_share(runs)
    checks.append(Check("mixed groups", f"{POINTS * mixed:.1f}% of {grpo}'s groups (mean over RL steps and runs)"
                        if mixed is not None else f"not measured (no {ZERO_STD})",
                        None if mixed is None else mixed >= MIXED_GROUPS, mixed_rule))
    return checks, slope


def _warm_by_seed(exp: Experiment, warm: list[Run], metric: str):
    """seed -> the accuracy of the warm start that seed continued from (its own with `warm.per_seed`,
    else the one shared by every seed), or None."""
    acc = {r.seed: final_value(r, metric) for r in warm if final_value(r, metric) is not None}
    per_seed = ((exp.study or {}).get("warm") or {}).get("per_seed", len(acc) > 1)
    if not per_seed:
        shared = next(iter(acc.values()), None) if len(acc) == 1 else None
        return lambda seed: shared
    return acc.get


def _noise_check(exp: Experiment, metric: str, baseline: str | None, target: float) -> Check:
    rule = f"SE at most {target / 2:.2f} points (half the {target:g}-point power target)"
    runs = exp.method_runs(baseline) if baseline in exp.methods else []
    accs = [v for v in (final_value(r, metric) for r in runs) if v is not None]
    sizes = [v for v in (final_value(r, metric.rsplit("/", 1)[0] + "/n") for r in runs) if v]
    if not accs or not sizes:
        return Check("evaluation noise", f"not measured (no finished {baseline} runs with {metric} and its n)",
                     None, rule)
    p, n = float(np.mean(accs)), float(np.mean(sizes))
    if p in (0.0, 1.0):                    # every run at the floor or ceiling: sqrt(p(1-p)/n) = 0 says nothing
        return Check("evaluation noise", f"not measured ({baseline} scores {POINTS * p:.0f}% on every seed, where "
                     f"the binomial SE is 0)", None, rule)
    se = POINTS * math.sqrt(p * (1 - p) / n)
    return Check("evaluation noise", f"SE {se:.2f} points (p = {POINTS * p:.1f}% of {baseline}, n = {n:g} problems)",
                 se <= target / 2, rule)


def assess(exp: Experiment, metric: str, baseline: str | None, target: float, rng) -> Validity:
    """Every check of this testbed (see the module docstring); `target` is the power target in points."""
    warm = warm_runs(exp)
    grpo = grpo_method(exp)
    rl, slope = _rl_checks(exp, grpo, warm, metric, rng)
    checks = (*_warm_checks(warm, metric), *rl, _noise_check(exp, metric, baseline, target))
    return Validity(checks=checks, grpo=grpo, slope=slope)


VERDICT = {True: "met", False: "not met", None: "not measured"}


def section(doc, v: Validity) -> None:
    """The report's validity section: one row per check, then the count."""
    doc.section("validity", "Testbed validity")
    doc.text("Whether this testbed can answer the question: the warm start every method continues from, "
             "whether RL learns here, how many RL groups carry a gradient, and how noisy one evaluation is. "
             "Intervals are 95% percentile bootstrap CIs over seeds; accuracies in percent, differences in points.")
    doc.table(["check", "value", "verdict", "met when"], [[c.name, c.value, VERDICT[c.met], c.rule] for c in v.checks])
    doc.text(f"Verdict: {v.verdict()}")
    doc.end()
