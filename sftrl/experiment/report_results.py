"""The report's statistical sections: per-method summary, paired comparisons with a baseline, and
sensitivity to every swept hyperparameter.

Owns: `summary` (with each method's compute from `compute`, a slot for the opening paragraph
`answer` writes, and rliable's interval-estimate figure), `comparisons` (with each comparison's
power from `power`, and the probability-of-improvement figure), `sensitivity_section`,
`headline_metric` and `REPS`. Every statistic is drawn from the one generator `write_report`
passes in; every figure's caption states its runs, seeds and interval.
"""

from __future__ import annotations

import numpy as np

from sftrl.experiment import answer, compute, plots, power, stats
from sftrl.experiment.doc import Doc, caption, fmt, fmt_p, key_name, label, metric_name
from sftrl.experiment.records import Experiment, config_at, final_values
from sftrl.experiment.sensitivity import sensitivity

REPS = 2000
"""Bootstrap resamples behind every interval of the report."""
CI = f"95% percentile bootstrap CIs over seeds ({REPS} resamples)"
"""How the report's intervals are made, as its captions say it."""


def headline_metric(exp: Experiment, metric: str | None) -> str:
    if metric:
        return metric
    if exp.metric:
        return exp.metric
    keys = sorted({k for r in exp.done for k in r.final if k.endswith("/acc_strict")})
    return keys[0] if keys else "eval/arith/acc_strict"


# -- sections -----------------------------------------------------------------------------------------
def summary(doc: Doc, exp: Experiment, metric: str, rng, question: str | None, baseline: str | None = None) -> dict:
    doc.section("summary", "Summary")
    doc.slot("opening")
    if question:
        doc.text(f"Question: {question}")
    counts = {s: sum(r.status == s for r in exp.runs) for s in ("done", "failed", "incomplete")}
    doc.text(f"Experiment {exp.name}: {len(exp.runs)} runs ({counts['done']} done, {counts['failed']} failed, "
             f"{counts['incomplete']} unfinished); methods: {', '.join(exp.methods)}; seeds: "
             f"{', '.join(map(str, exp.seeds))}. Headline metric: {metric} (final evaluation). Intervals are "
             f"95% percentile bootstrap CIs over seeds ({REPS} resamples); IQM is the 25% trimmed mean.")
    rows, summaries = [], {}
    for m in exp.methods:
        seeds, vals = final_values(exp.method_runs(m), metric)
        if not len(vals):
            rows.append([m, 0, "–", "–", "–", "–", "", *compute.cells(exp.method_runs(m))])
            continue
        sm = stats.summarize(vals, rng, reps=REPS)
        summaries[m] = (seeds, vals, sm)
        rows.append([m, sm["n"], fmt(sm["mean"]), f"[{fmt(sm['ci_low'])}, {fmt(sm['ci_high'])}]", fmt(sm["iqm"]),
                     fmt(sm["std"]), ", ".join(f"s{s}: {fmt(v)}" for s, v in zip(seeds, vals)),
                     *compute.cells(exp.method_runs(m))])
    doc.table(["method", "n", f"mean {metric}", "95% CI", "IQM", "std", "per-seed values", *compute.HEADER], rows)
    doc.text(compute.budget_sentence(exp, baseline) + " Compute columns are means over seeds of per-run totals "
             "(training steps only; \"–\" where the runs did not log them).")
    if summaries:
        est = stats.interval_estimates({m: v for m, (_, v, _) in summaries.items()}, rng.spawn(1)[0], reps=REPS)
        names = list(next(iter(est.values())))
        seeds = sorted({s for sd, _, _ in summaries.values() for s in sd})
        doc.figure("interval_estimates", plots.interval_estimates(
            list(est), {a: [est[m][a] for m in est] for a in names}, metric_name(metric)),
            caption(f"Final {metric_name(metric)} per method: median, IQM (25% trimmed mean) and mean over "
                    f"seeds; the bar is the interval, the tick the estimate",
                    runs=sum(len(v) for _, v, _ in summaries.values()), seeds=seeds, interval=CI))
    other = sorted({k for r in exp.done for k in r.final if k.startswith("eval/") and k != metric
                    and (k.endswith("/acc_strict") or "@" in k.rsplit("/", 1)[-1])})
    if other:
        rows = []
        for m in exp.methods:
            row = [m]
            for k in other:
                _, vals = final_values(exp.method_runs(m), k)
                if len(vals):
                    sm = stats.summarize(vals, rng, reps=REPS)
                    row.append(f"{fmt(sm['mean'])} [{fmt(sm['ci_low'])}, {fmt(sm['ci_high'])}]")
                else:
                    row.append("–")
            rows.append(row)
        doc.text("Every other evaluation metric (mean [95% CI] over seeds):")
        doc.table(["method", *other], rows)
    doc.end()
    return summaries


def comparisons(doc: Doc, exp: Experiment, metric: str, baseline: str, summaries: dict, rng,
                power_target: float = power.POWER_TARGET) -> list[dict]:
    """The paired comparisons with `baseline`; returns one dict per tested method (its paired
    difference, the Holm-adjusted paired t p as `holm_p`, and `power`: `power.paired_power` in points).
    The seeds pair the runs (same warm start, data order and initialisation), so the test is the
    paired t-test, the one the MDE column is computed for; Welch and Mann-Whitney are shown too."""
    doc.section("comparisons", f"Paired comparisons against {baseline}")
    if baseline not in summaries:
        doc.text(f"No finished runs of the baseline {baseline!r}; nothing to compare.")
        doc.end()
        return []
    b_seeds, b_vals, _ = summaries[baseline]
    b = dict(zip(b_seeds, b_vals))
    results = []
    for m, (seeds, vals, _) in summaries.items():
        if m == baseline:
            continue
        common = [s for s in seeds if s in b]
        if len(common) < 2:
            results.append((m, len(common), None))
            continue
        x = np.array([dict(zip(seeds, vals))[s] for s in common])
        y = np.array([b[s] for s in common])
        results.append((m, len(common), {**stats.paired_difference(x, y, rng, reps=REPS), "diffs": x - y}))
    tested = [r for r in results if r[2] is not None]
    adj = stats.holm([r[2]["paired_t_p"] for r in tested]) if tested else []
    rows, compared = [], []
    for (m, n, d), p_adj in zip(tested, adj):
        pw = power.paired_power(answer.POINTS * d["diffs"], target=power_target)
        compared.append({"method": m, **d, "holm_p": float(p_adj), "power": pw})
        rows.append([m, n, fmt(d["mean"]), f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]", fmt(d["prob_improvement"], 2),
                     fmt_p(d["welch_p"]), fmt_p(d["mannwhitney_p"]), fmt_p(d["paired_t_p"]), fmt_p(p_adj),
                     *answer.power_cells(pw)])
    rows += [[m, n, "–", "(fewer than 2 shared seeds)", "", "", "", "", "", "", "", ""] for m, n, d in results
             if d is None]
    doc.text(f"Differences are method minus {baseline} on the same seed (same warm start, data order and "
             f"initialisation), with a bootstrap CI over seeds; P(improvement) is the probability that a run "
             f"of the method beats a run of {baseline} (ties count half).")
    doc.table(["method", "paired seeds", "mean diff", "95% CI", "P(improvement)", "Welch p", "Mann-Whitney p",
               "paired t p", "Holm-adjusted paired t p", *answer.POWER_HEADER], rows)
    doc.text(answer.power_line(compared, metric, power_target))
    _improvement_figure(doc, baseline, summaries, metric, rng)
    survive = [m for (m, _, _), p in zip(tested, adj) if np.isfinite(p) and p < 0.05]
    doc.text(f"Multiple comparisons: {len(tested)} methods were compared with {baseline}; Holm-Bonferroni keeps "
             f"the family-wise error at 5%. Differences that survive: {', '.join(survive) if survive else 'none'}. "
             f"With few seeds, absence of significance is not evidence of no effect: read the CIs.")
    doc.end()
    return compared


def _improvement_figure(doc: Doc, baseline: str, summaries: dict, metric: str, rng) -> None:
    """P(method > baseline) per method with rliable's unpaired bootstrap interval."""
    others = [m for m in summaries if m != baseline]
    if not others:
        return
    b_seeds, b_vals, _ = summaries[baseline]
    g = rng.spawn(1)[0]                       # a stream of its own: the other sections' draws stay as they were
    rows = [stats.probability_of_improvement_ci(summaries[m][1], b_vals, g, reps=REPS) for m in others]
    seeds = sorted({s for sd, _, _ in summaries.values() for s in sd})
    doc.figure("improvement", plots.improvement_intervals([f"{m} > {baseline}" for m in others], rows,
                                                          f"probability of improvement over {baseline}"),
               caption(f"P(a run of the method beats a run of {baseline}) on final {metric_name(metric)}, "
                       f"ties half; 0.5 (dashed) is no difference",
                       runs=sum(len(v) for _, v, _ in summaries.values()), seeds=seeds,
                       interval=f"95% percentile bootstrap CIs, each method's seeds resampled independently "
                                f"({REPS} resamples)"))


def sensitivity_section(doc: Doc, exp: Experiment, metric: str, rng) -> None:
    doc.section("sensitivity", "Sensitivity to hyperparameters")
    blocks = [(b["method"], k, list(vs), b.get("seeds") or exp.seeds) for b in exp.sensitivity
              for k, vs in b["params"].items()]
    sweep_methods = list(dict.fromkeys(r.base_method for r in exp.runs))
    blocks += [(m, k, list(vs), exp.seeds) for m in sweep_methods for k, vs in (exp.grid or {}).items()]
    if not blocks:
        doc.text("No hyperparameter was swept in this experiment.")
    for i, (method, key, values, seeds) in enumerate(blocks):
        groups: dict[str, list] = {}
        base_runs = [r for r in exp.method_runs(method) if r.seed in seeds]
        used = []
        if base_runs and not exp.grid:
            base_value = config_at(base_runs[0].config, key)
            groups[label(base_value, key) + " (base)"] = final_values(base_runs, metric)[1]
            used += base_runs
        for v in values:
            runs = [r for r in exp.done if r.base_method == method and key in r.params and r.params[key] == v]
            if runs:
                groups.setdefault(label(v, key), final_values(runs, metric)[1])
                used += runs
        groups = {k: np.asarray(v) for k, v in groups.items() if len(v)}
        if len(groups) < 2:
            doc.text(f"{method} / {key}: fewer than two values have finished runs.")
            continue
        res = sensitivity(groups, rng, reps=REPS)
        doc.text(f"{method}: {key_name(key)} — {res['reading']}")
        doc.table(["value", "n", f"mean {metric}", "95% CI", "std"],
                  [[r["value"], r["n"], fmt(r["mean"]), f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]", fmt(r["std"])]
                   for r in res["rows"]])
        rows = res["rows"]
        doc.figure(f"sensitivity_{i}", plots.errorbars(
            f"{method}: {key_name(key)}", [str(r["value"]) for r in rows], [r["mean"] for r in rows],
            [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], metric_name(metric),
            points=[groups[r["value"]] if r["value"] in groups else [] for r in rows]),
            caption(f"Final {metric_name(metric)} of {method} against {key_name(key)}; dots are single seeds",
                    runs=len({r.run_id for r in used}), seeds=sorted({r.seed for r in used}), interval=CI))
    doc.end()
