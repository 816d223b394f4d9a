"""`sftrl report EXP_DIR`: one self-contained HTML file and its Markdown twin (no torch).

Owns: `write_report` and the order of the report's sections (written by `report_results` and
`report_runs`) —
  summary          opens with the answer in a paragraph (`answer`) and the headline figure; per method:
                   final metric mean, 95% bootstrap CI over seeds, IQM, std, per-seed values, compute
  validity         can this testbed answer the question: warm start, does RL learn, mixed groups,
                   evaluation noise (`validity`)
  comparisons      paired differences against a baseline (CI, P(improvement), Welch, Mann-Whitney, Holm),
                   each with its minimum detectable effect and the seeds a 1-point effect needs (`power`)
  sensitivity      every swept hyperparameter: value -> metric with CI, between-value vs seed spread
  curves           learning curves with CI bands across seeds (reward, accuracy, KL, entropy, losses, ...)
  distributions    response lengths early vs late, answers per problem, pass@k
  hyperparameters  what differs between methods, and everything else once
  provenance       versions, git sha, hardware, seeds, commands to reproduce
  failures         runs that failed or did not finish (never counted as data)
Statistics come from `stats` and `sensitivity`, all drawn from one generator seeded by `seed` (the
validity checks from a stream spawned from it, so they leave the other sections' draws as they
were), so the same runs give the same report.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from sftrl.experiment import answer, compute, power, validity
from sftrl.experiment import report_results as results
from sftrl.experiment import report_runs as runs
from sftrl.experiment.doc import Doc
from sftrl.experiment.records import load_experiment
from sftrl.runlog import atomic_write_text

SECTIONS = ("summary", "validity", "comparisons", "sensitivity", "curves", "distributions", "hyperparameters",
            "provenance", "failures")
REPS = 2000


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em;display:block;overflow-x:auto}td,th{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f3f3f3}figure{margin:1em 0}img{max-width:100%}
figcaption{font-size:.8em;color:#555}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.8em}
nav a{margin-right:1em}"""
CHECK = """<script>
window.__errors=0;window.addEventListener('error',function(){window.__errors++;},true);
window.addEventListener('unhandledrejection',function(){window.__errors++;});
(function(){var e=console.error;console.error=function(){window.__errors++;return e.apply(console,arguments);};})();
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
    metric = results.headline_metric(exp, metric)
    baseline = baseline or exp.baseline or (exp.methods[0] if exp.methods else None)
    if baseline is not None and baseline not in exp.methods:     # a sweep method with a grid: its first point
        baseline = next((m for m in exp.methods if m.startswith(baseline + " [")), baseline)
    if baseline is not None and baseline not in exp.methods:
        raise ValueError(f"baseline {baseline!r} is not a method of {exp.path}; methods: {', '.join(exp.methods)}")
    html_path = Path(out) if out else exp.path / "report.html"
    md_path = html_path.with_suffix(".md")
    doc = Doc(md_path.parent / "figures")
    rng = np.random.default_rng(seed)
    checks_rng = rng.spawn(1)[0]
    target = power.power_target(exp.study)
    summaries = results.summary(doc, exp, metric, rng, None, baseline=baseline)   # the opening states the question
    checks = validity.assess(exp, metric, baseline, target, checks_rng)
    validity.section(doc, checks)
    compared = results.comparisons(doc, exp, metric, baseline, summaries, rng, power_target=target)
    results.sensitivity_section(doc, exp, metric, rng)
    runs.curves(doc, exp, metric, rng)
    runs.distributions(doc, exp, metric, rng)
    runs.hyperparameters(doc, exp)
    runs.provenance(doc, exp, seed)
    runs.failures(doc, exp)
    answer.write_opening(doc, question=question, metric=metric, baseline=baseline, summaries=summaries,
                         compared=compared, validity=checks, budget=compute.budget_sentence(exp, baseline),
                         target=target)
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
