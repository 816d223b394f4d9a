"""Within-run gain of a metric between two evaluations, paired by seed, over a sweep's runs.

    python scripts/paired_gain.py runs/grpo_gain --before 1000 [--metric eval/arith/acc_strict]

For each finished run: the metric at the evaluation of step `--before` and at the final
evaluation; prints one line per run, then the mean gain with its 95% bootstrap CI over seeds,
the t-interval, P(after > before) and the paired t / Wilcoxon p-values.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import scipy.stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sftrl.experiment.records import load_experiment  # noqa: E402
from sftrl.experiment.stats import paired_difference  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("exp_dir")
    ap.add_argument("--before", type=int, required=True, help="step of the 'before' evaluation")
    ap.add_argument("--metric", default="eval/arith/acc_strict")
    a = ap.parse_args()
    exp = load_experiment(a.exp_dir)
    before, after = [], []
    for run in sorted(exp.runs, key=lambda r: (r.method, r.seed)):
        evals = {e["step"]: e for e in run.evals if a.metric in e}
        if run.status != "done" or a.before not in evals:
            print(f"{run.run_id}: skipped ({run.status}; evaluations at {sorted(evals)})")
            continue
        last = evals[max(evals)]
        before.append(100 * evals[a.before][a.metric])
        after.append(100 * last[a.metric])
        print(f"{run.run_id}: step {a.before} {before[-1]:.1f}  step {max(evals)} {after[-1]:.1f}  "
              f"gain {after[-1] - before[-1]:+.1f}")
    if len(before) < 2:
        sys.exit("need at least 2 finished runs with both evaluations")
    d = np.array(after) - np.array(before)
    res = paired_difference(after, before, np.random.default_rng(0), reps=10000)
    half = scipy.stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    print(f"n = {res['n']}: mean gain {res['mean']:+.2f} points, bootstrap 95% CI "
          f"[{res['ci_low']:+.2f}, {res['ci_high']:+.2f}], t-interval [{d.mean() - half:+.2f}, "
          f"{d.mean() + half:+.2f}], sd {d.std(ddof=1):.2f}, P(after > before) "
          f"{res['prob_improvement']:.2f}, paired t p = {res['paired_t_p']:.4f}, "
          f"Wilcoxon p = {res['wilcoxon_p']:.4f}")


if __name__ == "__main__":
    main()
