"""What a study's numbers say, in words: the power columns and the underpowered line of the
comparisons section, and the summary's opening paragraph with its headline figure.

Every sentence is built from numbers the report computed (summaries, paired comparisons with
Holm-adjusted p-values and power, validity checks, compute totals); nothing here is a conclusion
written in advance. Accuracies are shown in percent and differences in accuracy points
(1 point = 0.01 of an accuracy in [0, 1]). Holm significance is at 5%, power at 80% (`power`).

Owns: `POWER_HEADER`, `power_cells`, `power_line`, `opening`, `headline_figure` and
`write_opening`. Computes no statistics itself.
"""

from __future__ import annotations

import math

from sftrl.experiment import plots
from sftrl.experiment.doc import Doc, caption, metric_name, metric_title

POINTS = 100.0
"""Accuracy points per unit of an accuracy in [0, 1]."""
POWER_HEADER = ["sd of diff (points)", "MDE at 80% power (points)", "seeds for a 1-point effect"]
"""The comparisons table's power columns."""
SIGNIFICANCE = 0.05


def power_cells(pw: dict) -> list[str]:
    """The `POWER_HEADER` cells of one comparison (`power.paired_power` of its differences in points)."""
    if pw["underpowered"] is None:
        return ["–" if not math.isfinite(pw["sd"]) else f"{pw['sd']:.2f}", "–", "–"]
    seeds = str(pw["seeds_needed"]) if pw["seeds_needed"] is not None else "more than 10^7"
    return [f"{pw['sd']:.2f}", f"{pw['mde']:.2f}", seeds]


def _n(k: int, noun: str) -> str:
    """'1 method', '3 methods'."""
    return f"{k} {noun}" if k == 1 else f"{k} {noun}s"


def _listing(items: list[str]) -> str:
    return ", ".join(items)


def _undefined(compared: list[dict]) -> str:
    """'REASON: m1, m2; REASON2: m3' for the comparisons whose power is undefined ('' if none)."""
    by_reason: dict[str, list[str]] = {}
    for c in compared:
        if c["power"]["underpowered"] is None:
            by_reason.setdefault(c["power"]["why"], []).append(c["method"])
    return "; ".join(f"{why}: {_listing(ms)}" for why, ms in by_reason.items())


def _why_under(c: dict, target: float) -> list[str]:
    mde, diff = c["power"]["mde"], abs(POINTS * c["mean"])
    return ([f"|difference| {diff:.2f}"] if mde > diff else []) + ([f"target {target:g}"] if mde > target else [])


def power_line(compared: list[dict], metric: str, target: float) -> str:
    """The sentence under the comparisons table naming the underpowered comparisons."""
    under = [c for c in compared if c["power"]["underpowered"]]
    text = (f"Power: the MDE is the true difference that a two-sided paired t-test at 5% detects with 80% power "
            f"from these seeds at the observed spread of the differences (exact noncentral t); differences, spreads "
            f"and MDEs are in accuracy points (1 point = 0.01 of {metric}). Underpowered (MDE above the observed "
            f"|difference| or above the {target:g}-point target): ")
    text += _listing([f"{c['method']} (MDE {c['power']['mde']:.2f} > " + " and ".join(_why_under(c, target)) + ")"
                      for c in under]) or "none"
    if _undefined(compared):
        text += "; power undefined (" + _undefined(compared) + ")"
    return text + "."


# -- the opening paragraph ---------------------------------------------------------------------------
def _best(metric: str, baseline: str | None, summaries: dict, compared: list[dict]) -> str:
    if baseline not in summaries:
        return f"No finished runs of the baseline {baseline}, so no method was compared with it."
    if not compared:
        return f"No method shares 2 or more finished seeds with {baseline}, so no paired difference was computed."
    best = max(compared, key=lambda c: c["mean"])
    m, d, lo, hi = best["method"], POINTS * best["mean"], POINTS * best["ci_low"], POINTS * best["ci_high"]
    diff = (f"a paired difference of {d:+.1f} points (95% CI [{lo:+.1f}, {hi:+.1f}], {best['n']} seeds; the "
            f"interval {'excludes' if lo > 0 or hi < 0 else 'includes'} 0)")
    ours, theirs = POINTS * summaries[m][2]["mean"], POINTS * summaries[baseline][2]["mean"]
    means = f"mean {metric} {ours:.1f}% against {theirs:.1f}% for {baseline}"
    if best["mean"] > 0:
        return (f"Of {_n(len(compared), 'method')} compared with {baseline} on shared seeds, {m} has the largest mean "
                f"paired difference: {means}, {diff}.")
    return (f"None of {_n(len(compared), 'method')} compared with {baseline} on shared seeds has a higher mean; the "
            f"closest, {m}, has {means}, {diff}.")


def _holm(compared: list[dict]) -> str:
    if not compared:
        return ""
    tested = [c for c in compared if math.isfinite(c["holm_p"])]
    untested = [c["method"] for c in compared if not math.isfinite(c["holm_p"])]
    tail = f" Welch's test is undefined (no spread) for {_listing(untested)}." if untested else ""
    if not tested:
        return tail.strip()
    sig = [c for c in tested if c["holm_p"] < SIGNIFICANCE]
    head = f"After Holm's correction over {_n(len(tested), 'comparison')}"
    if not sig:
        return f"{head}, no difference is significant at 5%.{tail}"
    return (f"{head}, {len(sig)} {'difference is' if len(sig) == 1 else 'differences are'} significant at 5%: "
            + _listing([f"{c['method']} ({POINTS * c['mean']:+.1f} points, Holm p = {c['holm_p']:.3g})" for c in sig])
            + "." + tail)


def _power(compared: list[dict], target: float) -> str:
    if not compared:
        return ""
    under = [c for c in compared if c["power"]["underpowered"]]
    known = [c for c in compared if c["power"]["underpowered"] is not None]
    undefined = _undefined(compared)
    if not known:
        return f"Power is undefined for every comparison ({undefined})."
    if under:
        text = (f"{len(under)} of {_n(len(compared), 'comparison')} {'is' if len(under) == 1 else 'are'} underpowered at 80% power (MDE above the observed "
                f"|difference| or above {target:g} points): "
                + _listing([f"{c['method']} (MDE {c['power']['mde']:.1f} points)" for c in under]))
    else:
        text = (f"None of {_n(len(known), 'comparison')} with a computable power is underpowered (every MDE is at most "
                f"the observed |difference| and {target:g} points)")
    return text + (f"; power is undefined for some ({undefined})." if undefined else ".")


def opening(*, question: str | None, metric: str, baseline: str | None, summaries: dict, compared: list[dict],
            validity, budget: str, target: float) -> str:
    """The summary's opening paragraph: the warning that RL did not raise its reward (if so), the
    question, the best method against the baseline, the Holm-significant differences, the
    underpowered comparisons, the validity verdict and how the compute budgets differ."""
    parts = [validity.rl_warning(), f"Question: {question}" if question else None,
             _best(metric, baseline, summaries, compared), _holm(compared), _power(compared, target),
             f"Testbed validity: {validity.verdict()}", budget]
    return " ".join(p for p in parts if p)


def headline_figure(doc: Doc, summaries: dict, metric: str) -> None:
    """Mean final `metric` per method with its 95% CI over seeds (dots: single seeds)."""
    if not summaries:
        return
    methods = list(summaries)
    sm = [summaries[m][2] for m in methods]
    doc.figure("headline", plots.method_intervals(f"final {metric_name(metric)} per method", methods,
                                                  [s["mean"] for s in sm], [s["ci_low"] for s in sm],
                                                  [s["ci_high"] for s in sm], metric_title(metric),
                                                  points=[summaries[m][1] for m in methods]),
               caption(f"Mean final {metric} per method ({metric_name(metric)}); bars are 95% bootstrap CIs, "
                       f"dots single seeds",
                       runs=sum(len(summaries[m][1]) for m in methods),
                       seeds=sorted({x for m in methods for x in summaries[m][0]}),
                       interval="95% percentile bootstrap CIs over seeds"))


def write_opening(doc: Doc, **kw) -> None:
    """Fill the summary's "opening" slot with `opening(**kw)` and the headline figure."""
    part = Doc(doc.fig_dir)
    part.text(opening(**kw))
    headline_figure(part, kw["summaries"], kw["metric"])
    doc.fill("opening", part)
