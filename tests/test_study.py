"""The report: `sftrl study --quick` end to end with every section, known numbers on a synthetic
experiment, failures never counted, determinism, and a real headless browser check."""

import json
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sftrl.experiment import stats
from sftrl.experiment.records import load_experiment
from sftrl.experiment.report import SECTIONS, write_report

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "quick"
    proc = subprocess.run([sys.executable, "-m", "sftrl.cli", "study", "--quick", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.mark.slow
def test_quick_study_runs_end_to_end_and_the_report_has_every_section(quick):
    out, stdout = quick
    assert f"report: {out / 'report.html'}" in stdout and "| sft | 2 |" in stdout     # results table printed
    page = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for sid in SECTIONS[:-1]:                                   # no failures in this study
        assert f'<section id="{sid}">' in page, sid
    for heading in ("## Summary", "## Paired comparisons against sft", "## Sensitivity to hyperparameters",
                    "## Learning curves", "## Distributions", "## Hyperparameters", "## Provenance"):
        assert heading in md, heading
    for needle in ("rl.algo.kl.coef", "rl.hybrid.weight_kwargs", "policy/kl", "policy/entropy", "loss/pg",
                   "loss/sft", "reward/mean", "rollout/len_mean", "Holm", "P(improvement)", "IQM",
                   "distinct answers", "pass@k", "git sha", "sftrl study"):
        assert needle in page, needle
    assert "http://" not in page and "https://" not in page and 'src="data:image/png;base64,' in page
    for name in (x.split("](")[1].rstrip(")") for x in md.splitlines() if x.startswith("![")):
        assert (out / name).is_file(), name
        assert stat.S_IMODE((out / name).stat().st_mode) & 0o044 == 0o044, name    # others may read it
    for name in ("report.html", "report.md"):
        assert stat.S_IMODE((out / name).stat().st_mode) & 0o044 == 0o044, name
    # rliable's figures, and every caption says how many runs and seeds and which interval
    for fig in ("interval_estimates", "improvement", "profile"):
        assert f"figures/{fig}.png" in md, fig
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert len(captions) == page.count("<img ") >= 10
    for c in captions:
        assert re.search(r"n = \d+ runs, \d+ seeds \(", c) and ("CI" in c or "band" in c or "no interval" in c), c
    assert '{"' not in page.split("<h2>Hyperparameters")[0]                   # no JSON dicts as labels


@pytest.mark.slow
def test_quick_study_measures_itself(quick):
    """Power, validity and compute read from what the training half really writes."""
    out, _ = quick
    md = (out / "report.md").read_text()
    summary = md.split("## Summary\n", 1)[1].split("\n## ", 1)[0]
    assert "Testbed validity: " in summary.split("\n\n")[0] and "![Mean final" in summary
    assert "an RL step cost" in summary and "FLOPs per run relative to sft: grpo" in summary
    flops_cells = [r.split(" | ")[-2] for r in summary.splitlines() if r.startswith("| grpo | 2 |")]
    assert flops_cells and flops_cells[0].endswith("FLOP")
    validity = md.split("## Testbed validity\n", 1)[1].split("\n## ", 1)[0]
    assert sum(r.startswith("| ") for r in validity.splitlines()) == 1 + 6        # the header and six checks
    assert "| MDE at 80% power (points) | seeds for a 1-point effect |" in md


@pytest.mark.slow
def test_report_is_deterministic(quick, tmp_path):
    out, _ = quick
    md1 = (out / "report.md").read_text()
    write_report(out, out=tmp_path / "again.html")
    assert (tmp_path / "again.md").read_text() == md1


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (apt-get install chromium)")
def test_report_renders_in_a_headless_browser(quick, tmp_path):
    out, _ = quick
    page = out / "report.html"
    n_img = page.read_text().count("<img ")
    assert n_img >= 10
    body = _body(page)
    assert f'data-images="{n_img}/{n_img}"' in body and 'data-errors="0"' in body   # every figure loaded, no error
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1200,2000", f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000           # a rendered, non-blank page
    # the check can fail: a broken image and a script error are seen
    bad = tmp_path / "bad.html"
    bad.write_text(page.read_text().replace("</body>", '<img src="data:image/png;base64,AAAA">'
                                            "<script>undefined_function()</script>"
                                            "<script>console.error('logged')</script></body>"))
    body = _body(bad)
    assert f'data-images="{n_img}/{n_img + 1}"' in body and 'data-errors="3"' in body   # image, script, console


def _body(page: Path) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                           "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    if "bad.html" not in page.name:
        assert "Uncaught" not in proc.stderr and ":CONSOLE" not in proc.stderr, proc.stderr[-2000:]
    return proc.stdout[proc.stdout.index("<body"):][:200]


# -- a synthetic experiment with known numbers ---------------------------------------------------------
def _run(root: Path, run_id: str, method: str, seed: int, acc: float | None, *, status: str = "done",
         torn: bool = False) -> dict:
    d = root / "runs" / run_id
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"name": method, "seed": seed, "rl": {"algo": {"kl": {"coef": 0.04}}},
                                                   "sft": {"optim": {"lr": 0.001 if method == "a" else 0.002}}}))
    lines = [json.dumps({"step": s, "phase": "rl", "reward/mean": acc * s, "policy/kl": 0.01 * s}) for s in (1, 2, 3)]
    (d / "metrics.jsonl").write_text("\n".join(lines) + ("\n{\"step\": 4, \"rew" if torn else "\n"))
    if status == "done":
        (d / "final.json").write_text(json.dumps({"eval/arith/acc_strict": acc, "eval/arith/pass@4": acc + 0.1}))
        (d / "provenance.json").write_text(json.dumps({"git_sha": "abc", "argv": ["x", "train", "c.yaml"]}))
        (d / "DONE").write_text("")
    elif status == "failed":
        (d / "ERROR").write_text("sftrl train: error: something broke\ntraceback tail\n")
    return {"run_id": run_id, "method": method, "params": {}, "seed": seed, "overrides": [], "dir": f"runs/{run_id}"}


def test_summary_and_comparison_numbers_come_from_the_stats_functions(tmp_path):
    a, b = [0.30, 0.34, 0.38], [0.20, 0.26, 0.30]
    runs = [_run(tmp_path, f"a_s{i}", "a", i, v, torn=(i == 0)) for i, v in enumerate(a)]
    runs += [_run(tmp_path, f"b_s{i}", "b", i, v) for i, v in enumerate(b)]
    runs += [_run(tmp_path, "a_s3", "a", 3, 0.99, status="failed"), _run(tmp_path, "b_s3", "b", 3, 0.99, status="incomplete")]
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "syn", "metric": "eval/arith/acc_strict", "baseline": "b",
                                                     "methods": {"a": [], "b": []}, "grid": {}, "sensitivity": None,
                                                     "seeds": [0, 1, 2, 3], "runs": runs}))
    exp = load_experiment(tmp_path)
    assert [r.status for r in exp.runs][-2:] == ["failed", "incomplete"] and len(exp.done) == 6
    assert any("unreadable line" in w for r in exp.runs for w in r.warnings)
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    rng = np.random.default_rng(0)
    sm = stats.summarize(np.array(a), rng, reps=2000)        # the report's first draw
    assert f"| a | 3 | {sm['mean']:.3f} | [{sm['ci_low']:.3f}, {sm['ci_high']:.3f}] | {sm['iqm']:.3f} | {sm['std']:.3f} |" in md
    assert "0.990" not in md.split("## Failed")[0]            # failed/unfinished runs are not data
    assert "| a_s3 | failed | sftrl train: error: something broke |" in md and "| b_s3 | incomplete |" in md
    diff = np.array(a) - np.array(b)
    assert f"| a | 3 | {diff.mean():.3f} |" in md and "| 0.94 |" in md   # P(a > b): 8 wins + 1 tie of 9
    assert "| sft.optim.lr | 0.001 | 0.002 |" in md            # what differs between methods
    assert "| rl.algo.kl.coef | 0.04 |" in md                   # everything else once


@pytest.mark.slow
def test_cli_report_and_bad_baseline(tmp_path, capsys):
    from sftrl.cli import main
    runs = [_run(tmp_path, f"a_s{i}", "a", i, 0.1 * i) for i in range(2)]
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "s", "metric": "eval/arith/acc_strict", "baseline": None,
                                                     "methods": {"a": []}, "grid": {}, "sensitivity": None,
                                                     "seeds": [0, 1], "runs": runs}))
    assert main(["report", str(tmp_path)]) == 0 and (tmp_path / "report.html").is_file()
    assert main(["report", str(tmp_path), "--baseline", "zz"]) == 2
    assert "baseline 'zz' is not a method" in capsys.readouterr().err


def test_grid_points_are_methods_and_bad_files_never_crash(tmp_path):
    runs = []
    for seed in (0, 1, 2):
        for kl in (0.0, 0.04):
            r = _run(tmp_path, f"g_kl{kl}_s{seed}", "g", seed, 0.1 + kl + 0.01 * seed)
            r["params"] = {"rl.algo.kl.coef": kl}
            runs.append(r)
    broken = _run(tmp_path, "g_kl0.1_s0", "g", 0, 0.5)
    broken["params"] = {"rl.algo.kl.coef": 0.1}
    (tmp_path / "runs" / "g_kl0.1_s0" / "final.json").write_text("{not json")
    (tmp_path / "runs" / "g_kl0.0_s1" / "metrics.jsonl").write_bytes(b'{"step": 1}\n[1, 2]\n\xff\xfe\n')
    (tmp_path / "sweep.json").write_text(json.dumps({"name": "grid", "metric": "eval/arith/acc_strict", "baseline": None,
                                                     "methods": {"g": []}, "grid": {"rl.algo.kl.coef": [0.0, 0.04, 0.1]},
                                                     "sensitivity": None, "seeds": [0, 1, 2], "runs": runs + [broken]}))
    exp = load_experiment(tmp_path)
    assert exp.methods == ["g [β = 0.0]", "g [β = 0.04]", "g [β = 0.1]"]          # readable grid labels
    assert [r.status for r in exp.runs if r.run_id == "g_kl0.1_s0"] == ["failed"]
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "| g [β = 0.04] | 3 | 0.150 |" in md and "| g [β = 0.0] | 3 | 0.110 |" in md
    assert "g: KL coefficient β (rl.algo.kl.coef)" in md and "final.json is missing or unreadable" in md
    assert md.count("unreadable line skipped") == 2


def test_smoke_shrinks_any_study_and_every_run_config_is_valid(tmp_path):
    """`sftrl study FILE --smoke`: same methods and keys, tiny sizes; every planned run builds."""
    from sftrl.config import build_config
    from sftrl.experiment.study import load_study, main_sweep, smoke, warm_sweep
    from sftrl.experiment.spec import plan
    for name in ("default", "full", str(ROOT / "configs/studies/real-smollm2.yaml")):
        spec = load_study(name)
        s = smoke(spec)
        assert s["name"] == spec["name"] + "-smoke" and s["methods"] == spec["methods"]
        assert s["seeds"] == 2 and s["base"]["schedule"]["steps"] == 4
        assert [sorted(b["params"]) for b in s["sensitivity"]] == [sorted(b["params"]) for b in spec["sensitivity"]]
        assert all(len(v) == 1 for b in s["sensitivity"] for v in b["params"].values())
        assert s["warm"]["overrides"][-1] == "phases=[{kind: sft, steps: 2}]"
        assert sum(o.startswith("phases=") for o in s["warm"]["overrides"]) == 1
        exp = tmp_path / s["name"]
        exp.mkdir()
        (exp / "base.yaml").write_text(yaml.safe_dump(s["base"], sort_keys=False))
        warm_runs = plan(warm_sweep(s, exp), exp / "warm")
        main = main_sweep(s, exp)
        main["overrides"] = []                      # the warm model does not exist yet
        runs = plan(main, exp)
        assert len(runs) == 2 * len(s["methods"]) + 2 * sum(len(b["params"]) for b in s["sensitivity"])
        for r in warm_runs + runs:
            cfg = build_config(yaml.safe_load((exp / "base.yaml").read_text()), list(r.overrides))
            assert cfg.task.test_size == 8 and cfg.rl.rollout.max_new_tokens == 32
            assert cfg.steps_of("sft") + cfg.steps_of("rl") <= 4 or r in warm_runs
    assert load_study(str(ROOT / "configs/studies/real-smollm2.yaml"))["base"]["model"]["name"] == "smollm2-135m"

