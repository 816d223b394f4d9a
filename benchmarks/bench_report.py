"""Wall time of `sftrl report` on a synthetic experiment of 100 runs x 500 steps.

    python benchmarks/bench_report.py [--runs 100] [--steps 500] [--keep DIR]

The experiment mimics a study: 5 methods x 4 values of one swept hyperparameter x 5 seeds, every
run logging the usual RL metrics each step, an evaluation every 50 steps, rollout samples every 50
steps and the final evaluation's answers for 100 test problems. Prints one JSON line with the
report's wall time (target: under 30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
KEYS = ["reward/mean", "reward/std", "reward/accuracy", "policy/kl", "policy/entropy", "loss/pg", "loss/kl",
        "loss/entropy", "loss/total", "loss/sft", "rollout/len_mean", "rollout/len_max", "policy/clip_low",
        "policy/clip_high", "groups/zero_std_frac", "entropy/coef", "sft/weight", "grad/norm", "optim/lr",
        "time/step", "time/rollout", "time/update"]


def make(root: Path, n_runs: int, steps: int) -> None:
    rng = np.random.default_rng(0)
    methods, values = [f"m{i}" for i in range(5)], [0.0, 0.01, 0.04, 0.1]
    seeds = list(range(max(1, n_runs // (len(methods) * len(values)))))
    runs = []
    for seed in seeds:
        for m in methods:
            for v in values:
                run_id = f"{m}__kl={v}__s{seed}"
                d = root / "runs" / run_id
                d.mkdir(parents=True)
                skill = 0.1 + 0.05 * methods.index(m) + rng.normal(0, 0.02)
                (d / "config.yaml").write_text(yaml.safe_dump({"name": m, "seed": seed, "rl": {"algo": {"kl": {"coef": v}}}}))
                with open(d / "metrics.jsonl", "w") as f:
                    for s in range(1, steps + 1):
                        rec = {"step": s, "phase": "rl", **{k: float(skill * (1 + s / steps) + rng.normal(0, 0.01)) for k in KEYS}}
                        f.write(json.dumps(rec) + "\n")
                acc = float(skill + 0.1)
                with open(d / "eval.jsonl", "w") as f:
                    for s in range(50, steps + 1, 50):
                        f.write(json.dumps({"step": s, "eval/arith/acc_strict": acc * s / steps}) + "\n")
                with open(d / "samples.jsonl", "w") as f:
                    for s in range(50, steps + 1, 50):
                        for i in range(16):
                            f.write(json.dumps({"step": s, "kind": "rollout", "problem_id": str(i), "completion": "1+2=3 #### 3",
                                                "answer": "3", "reward": 1.0, "correct": True,
                                                "length": int(rng.integers(10, 60))}) + "\n")
                    for i in range(100):
                        ans = [str(int(a)) for a in rng.integers(0, 5, 4)]
                        f.write(json.dumps({"step": steps, "kind": "eval", "task": "arith", "problem_id": str(i),
                                            "gold": "3", "greedy_answer": ans[0], "greedy_len": 30,
                                            "sampled_answers": ans, "sampled_correct": [a == "3" for a in ans],
                                            "sampled_len": [30] * 4}) + "\n")
                (d / "final.json").write_text(json.dumps({"step": steps, "eval/arith/acc_strict": acc,
                                                          "eval/arith/pass@4": acc + 0.1, "eval/arith/maj@4": acc}))
                (d / "provenance.json").write_text(json.dumps({"git_sha": "bench", "argv": ["sftrl", "train"]}))
                (d / "DONE").write_text("")
                runs.append({"run_id": run_id, "method": m, "params": {"rl.algo.kl.coef": v}, "seed": seed,
                             "overrides": [], "dir": f"runs/{run_id}"})
    (root / "sweep.json").write_text(json.dumps({
        "name": "bench", "metric": "eval/arith/acc_strict", "baseline": "m0", "methods": {m: [] for m in methods},
        "grid": {"rl.algo.kl.coef": values}, "sensitivity": None, "seeds": seeds, "runs": runs}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--keep", help="build the experiment here and keep it")
    a = ap.parse_args()
    root = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="bench_report_"))
    make(root, a.runs, a.steps)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "sftrl.cli", "report", str(root), "--baseline", "m0"],
                          cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(proc.stderr)
    print(json.dumps({"runs": a.runs, "steps": a.steps, "report_wall_s": round(wall, 2),
                      "html_mb": round((root / "report.html").stat().st_size / 2 ** 20, 2)}))


if __name__ == "__main__":
    main()
