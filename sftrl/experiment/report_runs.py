"""The report's sections on what the runs did and how they were made: learning curves,
distributions, hyperparameters, provenance and failures.

Owns: `curves`, `distributions`, `hyperparameters`, `provenance`, `failures`, and the lists of
curves shown (`CURVES`) and config keys left out of the hyperparameter table (`IGNORE`).
"""

from __future__ import annotations

import html
import json
import warnings

import numpy as np

from sftrl.experiment import plots, stats
from sftrl.experiment.doc import Doc, caption, label, metric_name, metric_title
from sftrl.experiment.records import Experiment, Run, final_values, flatten
from sftrl.experiment.report_results import CI, REPS

BAND = "95% percentile bootstrap band over seeds (500 resamples)"
POOLED = "runs pooled, no interval"

CURVES = ("reward/mean", "reward/gain_vs_ref", "reward/accuracy", "policy/kl", "policy/entropy", "loss/",
          "rollout/len_mean", "policy/clip_low", "policy/clip_high", "groups/zero_std_frac", "entropy/coef",
          "sft/weight", "sft/routed_frac")
IGNORE = ("seed", "threads", "log.progress", "log.report_to", "name")


def _band(runs: list[Run], key: str, rng, points: int = 200):
    """(steps, mean, low, high) of `key` across runs; long runs are averaged into `points` bins of
    consecutive steps first (per run), which keeps curves readable and the bootstrap cheap."""
    cols = [(r.steps, r.metrics[key]) for r in runs if key in r.metrics]
    cols = [(s[np.isfinite(v)], v[np.isfinite(v)]) for s, v in cols]
    cols = [c for c in cols if len(c[0])]
    if not cols:
        return None
    steps = np.unique(np.concatenate([c[0] for c in cols]))
    arr = np.full((len(cols), len(steps)), np.nan)
    for j, (s_, v) in enumerate(cols):
        arr[j, np.searchsorted(steps, s_)] = v
    if len(steps) > points:
        edges = np.linspace(0, len(steps), points + 1).astype(int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)          # a bin where a run has no value
            arr = np.stack([np.nanmean(arr[:, a:b], axis=1) for a, b in zip(edges[:-1], edges[1:])], axis=1)
        steps = np.array([steps[a:b].mean() for a, b in zip(edges[:-1], edges[1:])])
    mean, low, high = stats.curve_band(arr, rng, reps=500)
    return steps, mean, low, high


def curves(doc: Doc, exp: Experiment, metric: str, rng) -> None:
    doc.section("curves", "Learning curves (mean and 95% CI band across seeds)")
    keys = []
    present = {k for r in exp.done for k in r.metrics}
    for k in CURVES:
        keys += sorted(x for x in present if x.startswith(k)) if k.endswith("/") else ([k] if k in present else [])
    for i, key in enumerate(keys):
        series, used = {}, []
        for m in exp.methods:
            band = _band(exp.method_runs(m), key, rng)
            if band is not None:
                series[m] = band
                used += [r for r in exp.method_runs(m) if key in r.metrics]
        if series:
            doc.figure(f"curve_{i}", plots.curves(metric_title(key), series, metric_name(key)),
                       caption(f"{metric_title(key)} per step, mean over seeds by method", runs=len(used),
                               seeds=_seeds(used), interval=BAND))
    evals = {}
    for m in exp.methods:
        runs = exp.method_runs(m)
        if any(len(r.evals) > 1 for r in runs):
            for r in runs:
                r.metrics.setdefault("__eval", None)
            fake = [Run(r.run_id, r.path, m, {}, r.seed, "done", steps=np.array([e["step"] for e in r.evals], float),
                        metrics={metric: np.array([e.get(metric, np.nan) for e in r.evals], float)}) for r in runs]
            band = _band(fake, metric, rng)
            if band is not None:
                evals[m] = band
    if evals:
        used = [r for m in evals for r in exp.method_runs(m)]
        doc.figure("curve_eval", plots.curves(f"{metric_name(metric)} at evaluations", evals, metric_name(metric)),
                   caption(f"{metric_title(metric)} at the evaluations during training, mean over seeds",
                           runs=len(used), seeds=_seeds(used), interval=BAND))
    if not keys and not evals:
        doc.text("No per-step metrics were logged.")
    doc.end()


def _seeds(runs) -> list:
    return sorted({r.seed for r in runs})


def profile(doc: Doc, exp: Experiment, metric: str, rng) -> None:
    """rliable's performance profile of the headline metric: the share of each method's runs whose
    final value exceeds tau, over tau from the lowest to the highest value seen."""
    finals = {m: final_values(exp.method_runs(m), metric)[1] for m in exp.methods}
    finals = {m: v for m, v in finals.items() if len(v)}
    if not finals:
        return
    pooled = np.concatenate(list(finals.values()))
    lo, hi = float(pooled.min()), float(pooled.max())
    pad = max((hi - lo) * 0.05, 1e-3)
    taus = np.linspace(lo - pad, hi + pad, 101)
    g = rng.spawn(1)[0]                       # a stream of its own: the other sections' draws stay as they were
    series = {m: (taus, *stats.performance_profile(v, taus, g, reps=REPS)) for m, v in finals.items()}
    used = [r for m in finals for r in exp.method_runs(m) if r.status == "done"]
    doc.figure("profile", plots.curves(f"performance profile: {metric_name(metric)}", series,
                                       "fraction of runs > τ", xlabel=f"τ ({metric_name(metric)})"),
               caption(f"Performance profile: the fraction of each method's runs whose final {metric_name(metric)} "
                       f"is above τ (higher and further right is better)", runs=len(used), seeds=_seeds(used),
                       interval=CI.replace("CIs", "bands")))


def distributions(doc: Doc, exp: Experiment, metric: str, rng) -> None:
    doc.section("distributions", "Distributions: response lengths, answers per problem, pass@k")
    profile(doc, exp, metric, rng)
    early, late, distinct, share = {}, {}, {}, {}
    for m in exp.methods:
        rollouts = [x for r in exp.method_runs(m) for x in r.samples("rollout")]
        if rollouts:
            steps = sorted({x["step"] for x in rollouts})
            early[m] = [x["length"] for x in rollouts if x["step"] == steps[0]]
            late[m] = [x["length"] for x in rollouts if x["step"] == steps[-1]]
        evals = [x for r in exp.method_runs(m) for x in r.samples("eval")]
        if evals:
            last = max(x["step"] for x in evals)
            task = metric.split("/")[1] if metric.count("/") >= 2 else None
            final = [x for x in evals if x["step"] == last and (task is None or x.get("task") == task)]
            answers = [x["sampled_answers"] for x in final if x.get("sampled_answers")]
            if answers:
                distinct[m] = [len(set(map(str, a))) for a in answers]
                share[m] = [max(map(list(map(str, a)).count, set(map(str, a)))) / len(a) for a in answers]
            elif final and "greedy_len" in final[0] and m not in late:
                late[m] = [x["greedy_len"] for x in final]
    runs_of = lambda names: [r for m in names for r in exp.method_runs(m)]   # noqa: E731
    if early:
        doc.figure("len_early", plots.histograms("response length, first logged RL step", early, "tokens"),
                   caption("Response lengths of rollouts at the first logged RL step, by method",
                           runs=len(runs_of(early)), seeds=_seeds(runs_of(early)), interval=POOLED))
    if late:
        doc.figure("len_late", plots.histograms("response length, last logged step", late, "tokens"),
                   caption("Response lengths at the last logged step, by method", runs=len(runs_of(late)),
                           seeds=_seeds(runs_of(late)), interval=POOLED))
    if distinct:
        doc.figure("answers_distinct", plots.histograms("distinct answers per problem (final eval samples)", distinct,
                                                        "distinct answers", bins=np.arange(0.5, 17.5)),
                   caption("Number of distinct answers among the k samples of each test problem",
                           runs=len(runs_of(distinct)), seeds=_seeds(runs_of(distinct)), interval=POOLED))
        doc.figure("answers_share", plots.histograms("majority share per problem", share, "share of the most "
                                                     "frequent answer", bins=10),
                   caption("Share of the most frequent answer among the k samples of each test problem",
                           runs=len(runs_of(share)), seeds=_seeds(runs_of(share)), interval=POOLED))
    task = metric.rsplit("/", 1)[0]
    kinds = sorted({k.rsplit("/", 1)[1] for r in exp.done for k in r.final
                    if k.startswith(task + "/") and (k.endswith(("/acc_strict", "/pass@1_sampled")) or "@" in k)})
    if kinds:
        series = {}
        for m in exp.methods:
            cols = []
            for kind in kinds:
                _, vals = final_values(exp.method_runs(m), f"{task}/{kind}")
                sm = stats.summarize(vals, rng, reps=REPS) if len(vals) else None
                cols.append((sm["mean"], sm["ci_low"], sm["ci_high"]) if sm else (np.nan,) * 3)
            if cols and np.isfinite([c[0] for c in cols]).any():
                series[m] = tuple(np.array(c) for c in zip(*cols))
        if series:
            doc.figure("pass_at_k", plots.grouped_bars(f"{task}: greedy, sampled pass@1, maj@k, pass@k", kinds,
                                                       series, "fraction of problems"),
                       caption("Greedy accuracy, sampled pass@1, maj@k and pass@k per method, means over seeds",
                               runs=len(runs_of(series)), seeds=_seeds(runs_of(series)), interval=CI))
    if not (early or late or distinct or kinds):
        doc.text("No samples were logged.")
    doc.end()


def hyperparameters(doc: Doc, exp: Experiment) -> None:
    doc.section("hyperparameters", "Hyperparameters")
    firsts = {m: exp.method_runs(m)[0] for m in exp.methods if exp.method_runs(m)}
    flat = {m: flatten(r.config) for m, r in firsts.items()}
    keys = sorted({k for f in flat.values() for k in f if k not in IGNORE})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat.values()}) > 1]
    if differ:
        doc.text("What differs between methods (each method's resolved config):")
        doc.table(["key", *flat], [[k, *(label(f.get(k), k) for f in flat.values())] for k in differ])
    same = [k for k in keys if k not in differ]
    doc.text("Everything else, shared by every method:")
    first = next(iter(flat.values()), {})
    doc.table(["key", "value"], [[k, label(first.get(k), k)] for k in same])
    if exp.study and exp.study.get("warm"):
        doc.text("Warm start every method continues from: the base config with "
                 + " ".join(exp.study["warm"].get("overrides", [])) +
                 (" (one per seed)" if exp.study["warm"].get("per_seed") else " (shared by all seeds)") + ".")
    doc.end()


def provenance(doc: Doc, exp: Experiment, seed: int) -> None:
    doc.section("provenance", "Provenance and how to reproduce")
    prov = next((r.provenance for r in exp.done if r.provenance), {})
    rows = [["git sha", prov.get("git_sha")], ["hardware", label(prov.get("hardware"))],
            ["versions", label(prov.get("versions"))], ["seeds", ", ".join(map(str, exp.seeds))],
            ["first run start", prov.get("start_time")], ["report rng seed", seed]]
    doc.table(["item", "value"], [[a, "–" if b is None else b] for a, b in rows])
    cmds = []
    if exp.study:
        cmds.append(f"sftrl study {exp.study.get('name', '')}  # the whole study (built-in name or its YAML)")
    if (exp.path / "sweep.yaml").is_file():
        cmds.append(f"sftrl sweep {exp.path / 'sweep.yaml'} --out {exp.path}")
    for m in exp.methods:
        runs = exp.method_runs(m)
        if runs:
            argv = runs[0].provenance.get("argv") or []
            cmds.append(f"{m}: sftrl train {runs[0].path / 'config.yaml'}  # resolved config of seed {runs[0].seed}"
                        if not argv else f"{m}: " + " ".join(["sftrl", *argv[1:]]))
    doc.text("Commands (every run's config.yaml is fully resolved, so `sftrl train RUN/config.yaml "
             "--out NEW` reruns it):")
    doc.html.append("<pre>" + html.escape("\n".join(cmds)) + "</pre>")
    doc.md.append("```\n" + "\n".join(cmds) + "\n```\n")
    doc.end()


def failures(doc: Doc, exp: Experiment) -> None:
    bad = [r for r in exp.runs if r.status != "done"]
    notes = [w for r in exp.runs for w in r.warnings]
    if not bad and not notes:
        return
    doc.section("failures", "Failed and unfinished runs (not counted)")
    if bad:
        doc.table(["run", "status", "error"], [[r.run_id, r.status, r.error or ""] for r in bad])
    for w in notes:
        doc.text(w)
    doc.end()
