"""`sftrl report EXP_DIR`: one self-contained HTML file and its Markdown twin (no torch).

Owns: the report's sections, in order —
  summary          per method: final metric mean, 95% bootstrap CI over seeds, IQM, std, per-seed values
  comparisons      paired differences against a baseline (CI, P(improvement), Welch, Mann-Whitney, Holm)
  sensitivity      every swept hyperparameter: value -> metric with CI, between-value vs seed spread
  curves           learning curves with CI bands across seeds (reward, accuracy, KL, entropy, losses, ...)
  distributions    response lengths early vs late, answers per problem, pass@k
  hyperparameters  what differs between methods, and everything else once
  provenance       versions, git sha, hardware, seeds, commands to reproduce
  failures         runs that failed or did not finish (never counted as data)
Statistics come from `stats` and `sensitivity`, all drawn from one generator seeded by `seed`, so
the same runs give the same report.
"""

from __future__ import annotations

import html
import json
import warnings
from pathlib import Path

import numpy as np

from sftrl.experiment import plots, stats
from sftrl.experiment.doc import Doc, fmt, fmt_p
from sftrl.experiment.records import Experiment, Run, flatten, load_experiment
from sftrl.experiment.sensitivity import sensitivity
from sftrl.runlog import atomic_write_text

SECTIONS = ("summary", "comparisons", "sensitivity", "curves", "distributions", "hyperparameters",
            "provenance", "failures")
CURVES = ("reward/mean", "reward/accuracy", "policy/kl", "policy/entropy", "loss/", "rollout/len_mean",
          "policy/clip_low", "policy/clip_high", "groups/zero_std_frac", "entropy/coef", "sft/weight",
          "sft/routed_frac")
IGNORE = ("seed", "threads", "log.progress", "name")
REPS = 2000


# -- data helpers -------------------------------------------------------------------------------------
def _final(run: Run, key: str):
    v = run.final.get(key)
    return float(v) if isinstance(v, (int, float)) and v is not None else None


def _values(runs: list[Run], key: str) -> tuple[list[int], np.ndarray]:
    pairs = [(r.seed, _final(r, key)) for r in runs if _final(r, key) is not None]
    return [s for s, _ in pairs], np.array([v for _, v in pairs], dtype=float)


def _get(tree: dict, key: str):
    """Value at a dotted key of a nested config (None when absent)."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _label(v) -> str:
    return json.dumps(v, separators=(",", ":"), sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _metric(exp: Experiment, metric: str | None) -> str:
    if metric:
        return metric
    if exp.metric:
        return exp.metric
    keys = sorted({k for r in exp.done for k in r.final if k.endswith("/acc_strict")})
    return keys[0] if keys else "eval/arith/acc_strict"


# -- sections -----------------------------------------------------------------------------------------
def _summary(doc: Doc, exp: Experiment, metric: str, rng, question: str | None) -> dict:
    doc.section("summary", "Summary")
    if question:
        doc.text(f"Question: {question}")
    counts = {s: sum(r.status == s for r in exp.runs) for s in ("done", "failed", "incomplete")}
    doc.text(f"Experiment {exp.name}: {len(exp.runs)} runs ({counts['done']} done, {counts['failed']} failed, "
             f"{counts['incomplete']} unfinished); methods: {', '.join(exp.methods)}; seeds: "
             f"{', '.join(map(str, exp.seeds))}. Headline metric: {metric} (final evaluation). Intervals are "
             f"95% percentile bootstrap CIs over seeds ({REPS} resamples); IQM is the 25% trimmed mean.")
    rows, summaries = [], {}
    for m in exp.methods:
        seeds, vals = _values(exp.method_runs(m), metric)
        if not len(vals):
            rows.append([m, 0, "–", "–", "–", "–", ""])
            continue
        sm = stats.summarize(vals, rng, reps=REPS)
        summaries[m] = (seeds, vals, sm)
        rows.append([m, sm["n"], fmt(sm["mean"]), f"[{fmt(sm['ci_low'])}, {fmt(sm['ci_high'])}]", fmt(sm["iqm"]),
                     fmt(sm["std"]), ", ".join(f"s{s}: {fmt(v)}" for s, v in zip(seeds, vals))])
    doc.table(["method", "n", f"mean {metric}", "95% CI", "IQM", "std", "per-seed values"], rows)
    other = sorted({k for r in exp.done for k in r.final if k.startswith("eval/") and k != metric
                    and (k.endswith("/acc_strict") or "@" in k.rsplit("/", 1)[-1])})
    if other:
        rows = []
        for m in exp.methods:
            row = [m]
            for k in other:
                _, vals = _values(exp.method_runs(m), k)
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


def _comparisons(doc: Doc, exp: Experiment, metric: str, baseline: str, summaries: dict, rng) -> None:
    doc.section("comparisons", f"Paired comparisons against {baseline}")
    if baseline not in summaries:
        doc.text(f"No finished runs of the baseline {baseline!r}; nothing to compare.")
        doc.end()
        return
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
        results.append((m, len(common), stats.paired_difference(x, y, rng, reps=REPS)))
    tested = [r for r in results if r[2] is not None]
    adj = stats.holm([r[2]["welch_p"] for r in tested]) if tested else []
    rows = []
    for (m, n, d), p_adj in zip(tested, adj):
        rows.append([m, n, fmt(d["mean"]), f"[{fmt(d['ci_low'])}, {fmt(d['ci_high'])}]", fmt(d["prob_improvement"], 2),
                     fmt_p(d["welch_p"]), fmt_p(d["mannwhitney_p"]), fmt_p(d["paired_t_p"]), fmt_p(p_adj)])
    rows += [[m, n, "–", "(fewer than 2 shared seeds)", "", "", "", "", ""] for m, n, d in results if d is None]
    doc.text(f"Differences are method minus {baseline} on the same seed (same warm start, data order and "
             f"initialisation), with a bootstrap CI over seeds; P(improvement) is the probability that a run "
             f"of the method beats a run of {baseline} (ties count half).")
    doc.table(["method", "paired seeds", "mean diff", "95% CI", "P(improvement)", "Welch p", "Mann-Whitney p",
               "paired t p", "Holm-adjusted Welch p"], rows)
    survive = [m for (m, _, _), p in zip(tested, adj) if np.isfinite(p) and p < 0.05]
    doc.text(f"Multiple comparisons: {len(tested)} methods were compared with {baseline}; Holm-Bonferroni keeps "
             f"the family-wise error at 5%. Differences that survive: {', '.join(survive) if survive else 'none'}. "
             f"With few seeds, absence of significance is not evidence of no effect: read the CIs.")
    doc.end()


def _sensitivity_section(doc: Doc, exp: Experiment, metric: str, rng) -> None:
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
        if base_runs and not exp.grid:
            base_value = _get(base_runs[0].config, key)
            groups[_label(base_value) + " (base)"] = _values(base_runs, metric)[1]
        for v in values:
            runs = [r for r in exp.done if r.base_method == method and key in r.params and r.params[key] == v]
            if runs:
                groups.setdefault(_label(v), _values(runs, metric)[1])
        groups = {k: np.asarray(v) for k, v in groups.items() if len(v)}
        if len(groups) < 2:
            doc.text(f"{method} / {key}: fewer than two values have finished runs.")
            continue
        res = sensitivity(groups, rng, reps=REPS)
        doc.text(f"{method}: {key} — {res['reading']}")
        doc.table(["value", "n", f"mean {metric}", "95% CI", "std"],
                  [[r["value"], r["n"], fmt(r["mean"]), f"[{fmt(r['ci_low'])}, {fmt(r['ci_high'])}]", fmt(r["std"])]
                   for r in res["rows"]])
        rows = res["rows"]
        doc.figure(f"sensitivity_{i}", plots.errorbars(
            f"{method}: {key}", [str(r["value"]) for r in rows], [r["mean"] for r in rows],
            [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], metric,
            points=[groups[r["value"]] if r["value"] in groups else [] for r in rows]),
            f"{metric} against {key} ({method}); bars are 95% CIs over seeds, dots single seeds")
    doc.end()


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


def _curves(doc: Doc, exp: Experiment, metric: str, rng) -> None:
    doc.section("curves", "Learning curves (mean and 95% CI band across seeds)")
    keys = []
    present = {k for r in exp.done for k in r.metrics}
    for k in CURVES:
        keys += sorted(x for x in present if x.startswith(k)) if k.endswith("/") else ([k] if k in present else [])
    for i, key in enumerate(keys):
        series = {}
        for m in exp.methods:
            band = _band(exp.method_runs(m), key, rng)
            if band is not None:
                series[m] = band
        if series:
            doc.figure(f"curve_{i}", plots.curves(key, series, key), f"{key} per step, by method")
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
        doc.figure("curve_eval", plots.curves(f"{metric} at evaluations", evals, metric), f"{metric} during training")
    if not keys and not evals:
        doc.text("No per-step metrics were logged.")
    doc.end()


def _distributions(doc: Doc, exp: Experiment, metric: str, rng) -> None:
    doc.section("distributions", "Distributions: response lengths, answers per problem, pass@k")
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
    if early:
        doc.figure("len_early", plots.histograms("response length, first logged RL step", early, "tokens"),
                   "Response lengths of rollouts at the first logged RL step (pooled over seeds)")
    if late:
        doc.figure("len_late", plots.histograms("response length, last logged step", late, "tokens"),
                   "Response lengths at the last logged step (pooled over seeds)")
    if distinct:
        doc.figure("answers_distinct", plots.histograms("distinct answers per problem (final eval samples)", distinct,
                                                        "distinct answers", bins=np.arange(0.5, 17.5)),
                   "Number of distinct answers among the k samples of each test problem")
        doc.figure("answers_share", plots.histograms("majority share per problem", share, "share of the most "
                                                     "frequent answer", bins=10),
                   "Share of the most frequent answer among the k samples of each test problem")
    task = metric.rsplit("/", 1)[0]
    kinds = sorted({k.rsplit("/", 1)[1] for r in exp.done for k in r.final
                    if k.startswith(task + "/") and (k.endswith(("/acc_strict", "/pass@1_sampled")) or "@" in k)})
    if kinds:
        series = {}
        for m in exp.methods:
            cols = []
            for kind in kinds:
                _, vals = _values(exp.method_runs(m), f"{task}/{kind}")
                sm = stats.summarize(vals, rng, reps=REPS) if len(vals) else None
                cols.append((sm["mean"], sm["ci_low"], sm["ci_high"]) if sm else (np.nan,) * 3)
            if cols and np.isfinite([c[0] for c in cols]).any():
                series[m] = tuple(np.array(c) for c in zip(*cols))
        if series:
            doc.figure("pass_at_k", plots.grouped_bars(f"{task}: greedy, sampled pass@1, maj@k, pass@k", kinds,
                                                       series, "fraction of problems"),
                       "Greedy accuracy, sampled pass@1, maj@k and pass@k per method (95% CIs over seeds)")
    if not (early or late or distinct or kinds):
        doc.text("No samples were logged.")
    doc.end()


def _hyperparameters(doc: Doc, exp: Experiment) -> None:
    doc.section("hyperparameters", "Hyperparameters")
    firsts = {m: exp.method_runs(m)[0] for m in exp.methods if exp.method_runs(m)}
    flat = {m: flatten(r.config) for m, r in firsts.items()}
    keys = sorted({k for f in flat.values() for k in f if k not in IGNORE})
    differ = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat.values()}) > 1]
    if differ:
        doc.text("What differs between methods (each method's resolved config):")
        doc.table(["key", *flat], [[k, *(_label(f.get(k)) for f in flat.values())] for k in differ])
    same = [k for k in keys if k not in differ]
    doc.text("Everything else, shared by every method:")
    first = next(iter(flat.values()), {})
    doc.table(["key", "value"], [[k, _label(first.get(k))] for k in same])
    if exp.study and exp.study.get("warm"):
        doc.text("Warm start every method continues from: the base config with "
                 + " ".join(exp.study["warm"].get("overrides", [])) +
                 (" (one per seed)" if exp.study["warm"].get("per_seed") else " (shared by all seeds)") + ".")
    doc.end()


def _provenance(doc: Doc, exp: Experiment, seed: int) -> None:
    doc.section("provenance", "Provenance and how to reproduce")
    prov = next((r.provenance for r in exp.done if r.provenance), {})
    rows = [["git sha", prov.get("git_sha")], ["hardware", _label(prov.get("hardware"))],
            ["versions", _label(prov.get("versions"))], ["seeds", ", ".join(map(str, exp.seeds))],
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


def _failures(doc: Doc, exp: Experiment) -> None:
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


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.8em;color:#555}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
nav a{margin-right:1em}"""
CHECK = """<script>
window.__errors=0;window.addEventListener('error',function(){window.__errors++;});
window.addEventListener('load',function(){var im=Array.prototype.slice.call(document.images);
var ok=im.filter(function(i){return i.complete&&i.naturalWidth>0;}).length;
document.body.setAttribute('data-images',ok+'/'+im.length);
document.body.setAttribute('data-errors',String(window.__errors));});
</script>"""


def write_report(exp_dir, *, metric: str | None = None, baseline: str | None = None, question: str | None = None,
                 seed: int = 0, out: str | Path | None = None) -> tuple[Path, Path]:
    """Write EXP_DIR/report.html (self-contained) and report.md (+ figures/); return both paths."""
    exp = load_experiment(exp_dir)
    if question is None and exp.study:
        question = exp.study.get("question")
    metric = _metric(exp, metric)
    baseline = baseline or exp.baseline or (exp.methods[0] if exp.methods else None)
    if baseline is not None and baseline not in exp.methods:     # a sweep method with a grid: its first point
        baseline = next((m for m in exp.methods if m.startswith(baseline + " [")), baseline)
    if baseline is not None and baseline not in exp.methods:
        raise ValueError(f"baseline {baseline!r} is not a method of {exp.path}; methods: {', '.join(exp.methods)}")
    html_path = Path(out) if out else exp.path / "report.html"
    md_path = html_path.with_suffix(".md")
    doc = Doc(md_path.parent / "figures")
    rng = np.random.default_rng(seed)
    summaries = _summary(doc, exp, metric, rng, question)
    _comparisons(doc, exp, metric, baseline, summaries, rng)
    _sensitivity_section(doc, exp, metric, rng)
    _curves(doc, exp, metric, rng)
    _distributions(doc, exp, metric, rng)
    _hyperparameters(doc, exp)
    _provenance(doc, exp, seed)
    _failures(doc, exp)
    title = f"sftrl report: {exp.name}"
    nav = "".join(f'<a href="#{s}">{s}</a>' for s in SECTIONS if f'id="{s}"' in "".join(doc.html))
    page = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style>{CHECK}</head><body><h1>{html.escape(title)}</h1><nav>{nav}</nav>"
            + "".join(doc.html) + "</body></html>\n")
    doc.fig_dir.mkdir(parents=True, exist_ok=True)
    for name, png in doc.figures.items():
        (doc.fig_dir / f"{name}.png").write_bytes(png)
    atomic_write_text(html_path, page)
    atomic_write_text(md_path, f"# {title}\n" + "".join(doc.md))
    return html_path, md_path
