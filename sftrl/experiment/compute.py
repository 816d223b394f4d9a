"""Compute accounting: what each run spent (tokens, FLOPs, wall time) and how the methods' budgets
differ, so a comparison at unequal compute says so.

The training half logs per-step estimates in metrics.jsonl for every SFT and RL step (`KEYS`):
prompt tokens processed, tokens generated, tokens in the training loss, and FLOPs. A run's total is
the sum over its logged steps; a method's is the mean of its runs' totals over seeds. Runs written
before these keys existed have none: their totals are None, shown as "–". Wall time is final.json
`wall_time_s` (training and evaluation).

Owns: `run_totals`, `method_totals`, `step_cost`, the summary table's columns (`HEADER`, `cells`)
and `budget_sentence`. Reads `Run` records only; draws nothing at random.
"""

from __future__ import annotations

import numpy as np

from sftrl.experiment.records import Experiment, Run, final_value

KEYS = {"prompt tokens": "compute/prompt_tokens", "generated tokens": "compute/generated_tokens",
        "trained tokens": "compute/trained_tokens", "FLOPs": "compute/flops"}
"""Column name -> the per-step metrics.jsonl key summed over a run."""
FLOPS = "compute/flops"
WALL = "wall_time_s"
HEADER = [*(f"{name} per run" for name in KEYS), "wall time per run"]
"""The summary table's compute columns (means over seeds of per-run totals)."""


def run_totals(run: Run) -> dict:
    """{key: sum over the run's logged steps, or None where the key was never logged} for `KEYS`,
    plus `wall_time_s` from final.json."""
    out = {}
    for key in KEYS.values():
        col = run.metrics.get(key)
        values = col[np.isfinite(col)] if col is not None else np.zeros(0)
        out[key] = float(values.sum()) if values.size else None
    out[WALL] = final_value(run, WALL)
    return out


def _mean(values) -> float | None:
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def method_totals(runs: list[Run]) -> dict:
    """The mean over runs (seeds) of each `run_totals` entry, over the runs that have it."""
    totals = [run_totals(r) for r in runs]
    return {k: _mean([t[k] for t in totals]) for k in (*KEYS.values(), WALL)}


def step_cost(runs: list[Run], phase: str, key: str = FLOPS) -> float | None:
    """Mean `key` per logged step of `phase` ("sft" or "rl"), pooled over `runs`; None if never logged."""
    values = [v for r in runs if key in r.metrics for v, ph in zip(r.metrics[key], r.phases)
              if ph == phase and np.isfinite(v)]
    return float(np.mean(values)) if values else None


# -- formats -----------------------------------------------------------------------------------------
def count(v: float | None) -> str:
    """12345 -> '12.3k'; None -> '–'."""
    if v is None:
        return "–"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= scale:
            return f"{v / scale:.3g}{unit}"
    return f"{v:.0f}"


def flops(v: float | None) -> str:
    """3.2e12 -> '3.2 TFLOP' (MFLOP to PFLOP, three significant digits); None -> '–'."""
    if v is None:
        return "–"
    for scale, unit in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP")):
        if abs(v) >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v:.3g} FLOP"


def seconds(v: float | None) -> str:
    """Wall time: '42.0 s' below two minutes, '3.5 min' below two hours, else '2.1 h'."""
    if v is None:
        return "–"
    return f"{v:.1f} s" if v < 120 else f"{v / 60:.1f} min" if v < 7200 else f"{v / 3600:.1f} h"


def cells(runs: list[Run]) -> list[str]:
    """The `HEADER` columns of one method's row."""
    t = method_totals(runs)
    return [*(count(t[k]) for k in list(KEYS.values())[:3]), flops(t[FLOPS]), seconds(t[WALL])]


# -- how the budgets differ --------------------------------------------------------------------------
def budget_sentence(exp: Experiment, baseline: str | None) -> str:
    """One sentence, from the numbers: whether the methods ran the same number of steps, what an RL
    step cost against an SFT step in FLOPs, and each method's FLOPs (or, without FLOPs, wall time)
    per run as a multiple of the baseline's."""
    runs = {m: exp.method_runs(m) for m in exp.methods if exp.method_runs(m)}
    if not runs:
        return "No finished runs, so no compute to account for."
    steps = {m: _mean([final_value(r, "step") if final_value(r, "step") is not None else float(len(r.steps))
                       for r in rs]) for m, rs in runs.items()}
    if len({round(s, 6) for s in steps.values()}) == 1:
        parts = [f"every method ran the same number of steps ({next(iter(steps.values())):g} per run)"]
    else:
        parts = ["steps per run differ (" + ", ".join(f"{m} {s:g}" for m, s in steps.items()) + ")"]
    pooled = [r for rs in runs.values() for r in rs]
    rl, sft = step_cost(pooled, "rl"), step_cost(pooled, "sft")
    if rl is not None and sft:
        parts.append(f"an RL step cost {rl / sft:.2f}× an SFT step in FLOPs (mean per logged step)")
    totals = {m: method_totals(rs) for m, rs in runs.items()}
    if baseline in totals:
        key, what = (FLOPS, "FLOPs") if (totals[baseline][FLOPS] or 0) > 0 else (WALL, "wall time")
        ref = totals[baseline][key]
        ratios = [f"{m} {t[key] / ref:.2f}×" for m, t in totals.items() if m != baseline and t[key] is not None]
        if totals[baseline][FLOPS] is None:
            parts.append(f"FLOPs were not logged ({baseline}'s metrics.jsonl has no {FLOPS})")
        if ref and ratios:
            parts.append(f"{what} per run relative to {baseline}: " + ", ".join(ratios))
    return "Budgets: " + "; ".join(parts) + "."
