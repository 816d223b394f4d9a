"""The study measures itself: validity verdicts, power columns, compute totals and the generated
opening paragraph, on synthetic study directories with hand-worked numbers."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import scipy.stats
import yaml

from sftrl.experiment import answer, compute, stats
from sftrl.experiment.records import load_experiment
from sftrl.experiment.report import SECTIONS, write_report
from sftrl.experiment.validity import MIXED_GROUPS, WARM_ACCURACY, grpo_method, ols_slope

SEEDS = [0, 1, 2, 3]
SFT_STEP, RL_STEP = {"p": 100, "g": 0, "t": 400, "f": 2e9}, {"p": 200, "g": 800, "t": 800, "f": 6e9}


def _write(d: Path, *, config: dict, lines: list[dict], final: dict) -> None:
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump(config))
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (d / "eval.jsonl").write_text(json.dumps({"step": final["step"], **{k: v for k, v in final.items()
                                                                      if k.startswith("eval/")}}) + "\n")
    (d / "final.json").write_text(json.dumps(final))
    (d / "DONE").write_text("")


def _lines(phases: list[str], *, slope: float = 0.0, zero_std: float = 0.5, logged: bool = True) -> list[dict]:
    out = []
    for step, phase in enumerate(phases, start=1):
        x = {"step": step, "phase": phase}
        if phase == "rl":
            x.update({"reward/mean": 0.2 + slope * step, "groups/zero_std_frac": zero_std})
        if logged:
            c = RL_STEP if phase == "rl" else SFT_STEP
            x.update({"compute/prompt_tokens": c["p"], "compute/generated_tokens": c["g"],
                      "compute/trained_tokens": c["t"], "compute/flops": c["f"]})
        out.append(x)
    return out


def _sweep(root: Path, name: str, runs: list[dict], methods: list[str], baseline: str | None) -> None:
    (root / "sweep.json").write_text(json.dumps({"name": name, "metric": "eval/arith/acc_strict", "baseline": baseline,
                                                 "methods": {m: [] for m in methods}, "grid": {}, "sensitivity": None,
                                                 "seeds": SEEDS, "runs": runs}))


def _study(root: Path, *, methods: dict, warm: list[dict], per_seed: bool, study: dict) -> None:
    """methods: name -> (phases, accuracies per seed, reward slopes per seed, zero_std, compute logged, wall)."""
    (root / "study.yaml").write_text(yaml.safe_dump({"name": "syn", "warm": {"per_seed": per_seed}, **study}))
    wruns = []
    for i, final in enumerate(warm):
        rid = f"warm__s{i}"
        _write(root / "warm" / "runs" / rid, config={"name": "warm", "seed": i},
               lines=_lines(["sft"] * 3), final={"step": 3, "wall_time_s": 5.0, "eval/arith/n": 300.0, **final})
        wruns.append({"run_id": rid, "method": "warm", "params": {}, "seed": i, "overrides": [], "dir": f"runs/{rid}"})
    _sweep(root / "warm", "syn-warm", wruns, ["warm"], None)
    runs = []
    for m, (phases, accs, slopes, zero_std, logged, wall) in methods.items():
        for s in SEEDS:
            rid = f"{m}__s{s}"
            _write(root / "runs" / rid, config={"name": m, "seed": s, "rl": {"algo": {"preset": "grpo"}}},
                   lines=_lines(phases, slope=slopes[s], zero_std=zero_std, logged=logged),
                   final={"step": len(phases), "wall_time_s": wall[s], "eval/arith/n": 300.0,
                          "eval/arith/acc_strict": accs[s]})
            runs.append({"run_id": rid, "method": m, "params": {}, "seed": s, "overrides": [], "dir": f"runs/{rid}"})
    _sweep(root, "syn", runs, list(methods), "sft")


def _learning_study(root: Path) -> None:
    none = [0.0] * 4
    _study(root, per_seed=False, warm=[{"eval/arith/acc_strict": 0.30, "eval/arith/pass@4": 0.50}],
           study={"question": "Does RL beat SFT here?", "power_target": 2.0}, methods={
               # method: phases, accuracy per seed, reward slope per seed, zero-std share, compute logged, wall time
               "sft": (["sft"] * 4, [0.30, 0.31, 0.29, 0.30], none, 0.5, True, [10.0, 12.0, 11.0, 11.0]),
               "grpo": (["rl"] * 4, [0.34, 0.36, 0.33, 0.37], [0.01, 0.02, 0.03, 0.02], 0.6, True,
                        [30.0, 32.0, 31.0, 31.0]),
               "alt": (["rl", "rl", "sft", "sft"], [0.40, 0.42, 0.39, 0.41], none, 0.6, True, [20.0] * 4),
               "joint": (["rl"] * 4, [0.30, 0.32, 0.28, 0.32], none, 0.6, False, [40.0] * 4),   # older: no compute/*
           })


def _summary(md: str) -> str:
    return md.split("## Summary\n", 1)[1].split("\n## ", 1)[0]


def test_a_study_that_learns_validity_power_compute_and_the_opening(tmp_path):
    _learning_study(tmp_path)
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    page = (tmp_path / "report.html").read_text()
    assert SECTIONS[:3] == ("summary", "validity", "comparisons") and '<section id="validity">' in page
    assert md.index("## Summary") < md.index("## Testbed validity") < md.index("## Paired comparisons")

    # -- validity: every number worked by hand ----------------------------------------------------
    assert WARM_ACCURACY == (0.05, 0.80) and MIXED_GROUPS == 0.3
    assert "| warm-start accuracy | 30.0% (1 warm start) | met |" in md
    assert "| warm-start pass@k | pass@4 = 50.0% against greedy 30.0% | met |" in md
    # reward = 0.2 + b * step with b = 0.01, 0.02, 0.03, 0.02: mean slope 0.02; a percentile bootstrap of a
    # mean stays inside [min, max] of the values, so the CI lies in [0.01, 0.03], above 0
    row = next(x for x in md.splitlines() if x.startswith("| RL raises its reward |"))
    assert "grpo: reward/mean +0.02 per step (95% CI [+" in row and "4 seeds) | met |" in row
    assert row.endswith("| 95% CI of the mean slope above 0 (reward/gain_vs_ref when logged, else reward/mean) |")
    lo, hi = (float(v) for v in row.split("[", 1)[1].split("]", 1)[0].split(", "))
    assert 0.01 <= lo <= 0.02 <= hi <= 0.03
    # accuracy after RL minus the shared warm start: 34, 36, 33, 37 - 30 = 4, 6, 3, 7 points, mean 5.0
    assert "| RL raises accuracy | grpo minus the warm start: +5.0 points (95% CI [+" in md
    assert "| mixed groups | 40.0% of grpo's groups (mean over RL steps and runs) | met |" in md   # 1 - 0.6
    # SE = sqrt(0.3 * 0.7 / 300) = 0.026458 -> 2.65 points, above half the 2-point target
    assert ("| evaluation noise | SE 2.65 points (p = 30.0% of sft, n = 300 problems) | not met | SE at most 1.00 "
            "points (half the 2-point power target) |") in md
    assert "Verdict: 5 of 6 checks met. Not met: evaluation noise, SE 2.65 points" in md

    # -- power columns: differences in points, sd with ddof=1, exact MDE (pinned in test_power) ----
    # grpo: 4, 5, 4, 7 -> sd sqrt(2) = 1.41, MDE 3.01 (< |5.0| but > 2 points); 18 seeds for 1 point
    # alt: 10, 11, 10, 11 -> sd 0.577, MDE 1.23 (powered); joint: 0, 1, -1, 2 -> sd 1.29, MDE 2.75 > |0.5|
    assert md.split("| grpo | 4 | 0.050 |")[1].splitlines()[0].endswith("| 1.41 | 3.01 | 18 |")
    assert md.split("| alt | 4 | 0.105 |")[1].splitlines()[0].endswith("| 0.58 | 1.23 | 5 |")
    assert md.split("| joint | 4 | 0.005 |")[1].splitlines()[0].endswith("| 1.29 | 2.75 | 16 |")
    assert ("Underpowered (MDE above the observed |difference| or above the 2-point target): grpo (MDE 3.01 > "
            "target 2), joint (MDE 2.75 > |difference| 0.50 and target 2).") in md

    # -- compute: per-run totals, means over seeds -----------------------------------------------------
    # sft: 4 SFT steps of 100 prompt / 0 generated / 400 trained tokens and 2 GFLOP; grpo: 4 RL steps of
    # 200 / 800 / 800 and 6 GFLOP; alt: 2 of each (600 / 1.6k / 2.4k / 16 GFLOP); joint logged none
    assert "| sft | 4 | 0.300 |" in md and md.split("| sft | 4 | 0.300 |")[1].splitlines()[0].endswith(
        "| 400 | 0 | 1.6k | 8 GFLOP | 11.0 s |")
    assert md.split("| grpo | 4 | 0.350 |")[1].splitlines()[0].endswith("| 800 | 3.2k | 3.2k | 24 GFLOP | 31.0 s |")
    assert md.split("| alt | 4 | 0.405 |")[1].splitlines()[0].endswith("| 600 | 1.6k | 2.4k | 16 GFLOP | 20.0 s |")
    assert md.split("| joint | 4 | 0.305 |")[1].splitlines()[0].endswith("| – | – | – | – | 40.0 s |")
    budget = ("Budgets: every method ran the same number of steps (4 per run); an RL step cost 3.00× an SFT step in "
              "FLOPs (mean per logged step); FLOPs per run relative to sft: grpo 3.00×, alt 2.00×.")
    assert budget in _summary(md).split("| joint | 4 |")[1]                  # under the table

    # -- the opening paragraph: generated from the numbers above -------------------------------------
    opening = _summary(md).split("\n\n")[0]
    assert opening.startswith("Question: Does RL beat SFT here? Of 3 methods compared with sft on shared seeds, "
                              "alt has the largest mean paired difference: mean eval/arith/acc_strict 40.5% against "
                              "30.0% for sft, a paired difference of +10.5 points (95% CI [+")
    lo, hi = (float(v) for v in opening.split("95% CI [", 1)[1].split("]", 1)[0].split(", "))
    assert 10.0 <= lo <= 10.5 <= hi <= 11.0 and "4 seeds; the interval excludes 0)" in opening
    # Holm over the three paired t p-values (no resampling involved): alt and grpo survive, joint does not
    p = {m: scipy.stats.ttest_rel(a, [0.30, 0.31, 0.29, 0.30]).pvalue for m, a in
         (("grpo", [0.34, 0.36, 0.33, 0.37]), ("alt", [0.40, 0.42, 0.39, 0.41]), ("joint", [0.30, 0.32, 0.28, 0.32]))}
    adj = dict(zip(p, stats.holm(list(p.values()))))
    assert adj["joint"] > 0.05 > max(adj["grpo"], adj["alt"])
    assert (f"After Holm's correction over 3 comparisons, 2 differences are significant at 5%: grpo (+5.0 points, "
            f"Holm p = {adj['grpo']:.3g}), alt (+10.5 points, Holm p = {adj['alt']:.3g}).") in opening
    assert ("2 of 3 comparisons are underpowered at 80% power (MDE above the observed |difference| or above 2 "
            "points): grpo (MDE 3.0 points), joint (MDE 2.7 points).") in opening
    assert "Testbed validity: 5 of 6 checks met. Not met: evaluation noise, SE 2.65 points" in opening
    assert opening.endswith(budget) and "RL did not raise" not in md
    # then the headline figure, then the rest of the summary
    assert _summary(md).split("\n\n")[1].startswith("![Mean final eval/arith/acc_strict per method") \
        and (tmp_path / "figures" / "headline.png").is_file()
    assert md.count("Question: Does RL beat SFT here?") == 1


def test_a_study_where_rl_does_not_learn_says_so_first(tmp_path):
    none = [0.0] * 4
    warm = [{"eval/arith/acc_strict": a} for a in (0.30, 0.31, 0.29, 0.30)]           # one per seed, no pass@k
    _study(tmp_path, per_seed=True, warm=warm, study={"power_target": 6.0}, methods={
        "sft": (["sft"] * 4, [0.30, 0.31, 0.29, 0.30], none, 0.5, True, [10.0] * 4),   # preset grpo, but no RL steps
        "rl_plain": (["rl"] * 4, [0.28, 0.30, 0.29, 0.27], [-0.01, -0.02, -0.01, -0.02], 0.9, True, [30.0] * 4),
    })
    exp = load_experiment(tmp_path)
    assert grpo_method(exp) == "rl_plain"                   # the first method with preset grpo *and* RL steps
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    summary = _summary(md)
    assert summary.startswith("RL did not raise its own training reward on this testbed: the slope of rl_plain's "
                              "reward/mean is -0.015 per step (95% CI [-")
    assert "4 seeds), an interval that is not above 0. None of 1 method" in summary.split("\n\n")[0]
    assert "| warm-start accuracy | 30.0% (4 warm starts, mean) | met |" in md
    assert "| warm-start pass@k | not measured (the warm start has no pass@k) | not measured |" in md
    assert "| RL raises its reward | rl_plain: reward/mean -0.015 per step (95% CI [-" in md
    # per-seed warm starts: 28 - 30, 30 - 31, 29 - 29, 27 - 30 = -2, -1, 0, -3 points, mean -1.5
    row = next(x for x in md.splitlines() if x.startswith("| RL raises accuracy |"))
    assert "rl_plain minus the warm start: -1.5 points" in row
    assert row.endswith("| not met | 95% CI of the paired gain above 0 |")
    assert "| mixed groups | 10.0% of rl_plain's groups (mean over RL steps and runs) | not met |" in md
    assert "| evaluation noise | SE 2.65 points (p = 30.0% of sft, n = 300 problems) | met |" in md   # 2.65 <= 6 / 2
    # differences -2, -1, 0, -3 points: sd 1.29, MDE 2.75 above |-1.5| -> underpowered; target 6 points
    assert ("Underpowered (MDE above the observed |difference| or above the 6-point target): rl_plain (MDE 2.75 > "
            "|difference| 1.50).") in md
    assert "None of 1 method compared with sft on shared seeds has a higher mean; the closest, rl_plain" in summary


def test_a_positive_slope_hidden_by_its_spread_says_how_many_seeds_would_show_it(tmp_path):
    none = [0.0] * 4
    _study(tmp_path, per_seed=False, warm=[{"eval/arith/acc_strict": 0.30}], study={}, methods={
        "sft": (["sft"] * 4, [0.30, 0.31, 0.29, 0.30], none, 0.5, True, [10.0] * 4),
        "grpo": (["rl"] * 4, [0.30, 0.31, 0.29, 0.30], [0.03, -0.01, 0.02, -0.02], 0.5, True, [30.0] * 4),
    })
    write_report(tmp_path)
    row = next(x for x in (tmp_path / "report.md").read_text().splitlines() if x.startswith("| RL raises its reward |"))
    # slopes 0.03, -0.01, 0.02, -0.02: mean 0.005, sd (ddof=1) sqrt(0.0017 / 3) = 0.0238. The seeds a
    # one-sample t-test needs: the smallest n whose power P(|T| > t_{0.975, n-1}), T ~ noncentral
    # t(n-1, 0.005 sqrt(n) / sd), reaches 0.8, found here by counting up from scipy's distributions
    sd = math.sqrt(((0.03 - 0.005) ** 2 + 0.015 ** 2 + 0.015 ** 2 + 0.025 ** 2) / 3)
    n = 2
    while True:
        crit, nc = scipy.stats.t.ppf(0.975, n - 1), 0.005 * math.sqrt(n) / sd
        if scipy.stats.nct.sf(crit, n - 1, nc) + scipy.stats.nct.cdf(-crit, n - 1, nc) >= 0.8:
            break
        n += 1
    assert 150 < n < 200                                     # about ((1.96 + 0.84) sd / 0.005)^2 = 178
    assert "grpo: reward/mean +0.005 per step (95% CI [-" in row
    assert f"4 seeds); {n} seeds would detect a slope this size (80% power, observed spread) | not met |" in row

    # the same runs with reward/gain_vs_ref logged: slopes 0.004, 0.006, 0.005, 0.005 (all above 0, so the
    # bootstrap CI of their mean is too); the check reads them, and shows reward/mean's beside them
    for s, b in zip(SEEDS, [0.004, 0.006, 0.005, 0.005]):
        path = tmp_path / "runs" / f"grpo__s{s}" / "metrics.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        path.write_text("".join(json.dumps({**x, "reward/gain_vs_ref": b * x["step"]}) + "\n" for x in lines))
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    row = next(x for x in md.splitlines() if x.startswith("| RL raises its reward |"))
    assert "grpo: reward/gain_vs_ref +0.005 per step (95% CI [+" in row
    assert "4 seeds); reward/mean +0.005 per step (95% CI [-" in row and row.count("seeds would detect") == 1
    assert "| met |" in row and not _summary(md).startswith("RL did not raise")


def test_noise_at_the_floor_is_not_measured_and_a_plain_sweep_has_no_warm_start(tmp_path):
    none = [0.0] * 4
    _study(tmp_path, per_seed=False, warm=[{"eval/arith/acc_strict": 0.0}], study={}, methods={
        "sft": (["sft"] * 4, none, none, 0.5, True, [10.0] * 4)})
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| evaluation noise | not measured (sft scores 0% on every seed, where the binomial SE is 0) |" in md
    assert "| warm-start accuracy | 0.0% (1 warm start) | not met |" in md
    assert "| RL raises its reward | not measured (no GRPO method with RL steps) | not measured |" in md
    for d in (tmp_path / "warm", tmp_path / "study.yaml"):
        shutil.rmtree(d) if d.is_dir() else d.unlink()
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| warm-start accuracy | not measured (no warm start in this experiment) | not measured |" in md


def test_opening_and_power_words_from_hand_made_numbers():
    class V:                                     # a validity verdict as the opening reads it
        def rl_warning(self):
            return None

        def verdict(self):
            return "6 of 6 checks met."
    sm = {"b": ([0, 1], np.array([0.2, 0.2]), {"mean": 0.2}), "a": ([0, 1], np.array([0.25, 0.27]), {"mean": 0.26})}
    pw = {"n": 2, "mean": 6.0, "sd": 1.0, "mde": 11.0, "seeds_needed": 10, "underpowered": True, "why": ""}
    a = {"method": "a", "n": 2, "mean": 0.06, "ci_low": 0.05, "ci_high": 0.07, "holm_p": 0.2, "power": pw}
    text = answer.opening(question=None, metric="m", baseline="b", summaries=sm, compared=[a], validity=V(),
                          budget="Budgets: x.", target=2.0)
    assert text == ("Of 1 method compared with b on shared seeds, a has the largest mean paired difference: mean "
                    "m 26.0% against 20.0% for b, a paired difference of +6.0 points (95% CI [+5.0, +7.0], 2 seeds; "
                    "the interval excludes 0). After Holm's correction over 1 comparison, no difference is significant "
                    "at 5%. 1 of 1 comparison is underpowered at 80% power (MDE above the observed |difference| or "
                    "above 2 points): a (MDE 11.0 points). Testbed validity: 6 of 6 checks met. Budgets: x.")
    assert answer.power_cells(pw) == ["1.00", "11.00", "10"]
    assert answer.power_cells({**pw, "sd": 0.0, "underpowered": None}) == ["0.00", "–", "–"]


def test_compute_formats_and_slope():
    assert [compute.count(v) for v in (None, 0, 512, 1600, 2.5e6, 3e9)] == ["–", "0", "512", "1.6k", "2.5M", "3B"]
    assert [compute.flops(v) for v in (None, 8e9, 2.4e13, 5e15)] == ["–", "8 GFLOP", "24 TFLOP", "5 PFLOP"]
    assert [compute.seconds(v) for v in (None, 42.0, 210.0, 9000.0)] == ["–", "42.0 s", "3.5 min", "2.5 h"]
    assert ols_slope([1, 2, 3, 4], [1.0, 3.0, 2.0, 4.0]) == 0.8           # sum dx dy = 4, sum dx^2 = 5
    assert math.isclose(ols_slope([1, 2, 3], [0.5, 0.5 + 0.03, 0.5 + 0.06]), 0.03)
