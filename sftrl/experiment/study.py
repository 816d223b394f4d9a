"""`sftrl study`: the SFT-vs-RL-vs-hybrid comparison with entropy regularisation, in one command.

Owns: the built-in studies (`STUDIES`: default, quick, full) and `run_study`, which (1) trains the
warm start every method continues from, (2) runs the methods x seeds sweep plus one-at-a-time
sensitivity sweeps (epsilon, beta, entropy coefficient, lambda), and (3) writes the report.
Like the rest of the experiment half it never imports torch: training happens in `sftrl train`
subprocesses started by the sweep.

    EXP_DIR/base.yaml      the study's base config (every run starts from it)
    EXP_DIR/study.yaml     the study definition as run
    EXP_DIR/warm/          the warm-start sweep (one SFT run, or one per seed)
    EXP_DIR/sweep.json     the main sweep's manifest; EXP_DIR/runs/<run_id>/ its runs
    EXP_DIR/report.html    the report (and report.md, figures/)

Why a warm start: RL from a random-init model earns no reward, so every method spends the same
step budget continuing from one SFT checkpoint (the usual "SFT warm-up, then compare" design);
with `warm.per_seed` each seed has its own warm start (seed variance then includes it).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from sftrl import yamlio
from sftrl.experiment.power import POWER_TARGET
from sftrl.experiment.progress import ProgressDisplay
from sftrl.experiment.spec import SweepError
from sftrl.experiment.sweep import run_sweep
from sftrl.registry import did_you_mean
from sftrl.runlog import atomic_write_text


class StudyError(ValueError):
    """A study that cannot run or finish; one line saying what to change."""


ARITH = {"min_ops": 2, "max_ops": 3, "max_operand": 20, "operators": "+-*"}
OOD = {"name": "arith", "kwargs": {"min_ops": 4, "max_ops": 4, "max_operand": 20, "operators": "+-*"},
       "label": "arith_4ops", "test_size": 100}

# The default study: tiny Llama (hidden 64, 2 layers, 0.1M parameters) on 2-3 operation arithmetic,
# sized for 20 minutes on 2 CPU cores. Design (pilots in docs/LOG.md, 2026-12-02 and 2026-12-06):
# - warm start: 1000 steps of full fine-tuning SFT (batch 64, cosine 3e-3 -> 3e-4) to ~30% greedy
#   accuracy, pass@8 ~51%: about half of the GRPO groups have mixed outcomes, so plain RL has
#   something to sharpen, and about half still fail entirely, which is what the routed hybrids act on
#   (from an earlier ~11% warm start three quarters of the groups all failed and GRPO learned nothing);
# - every method then trains the same rank-4 LoRA adapters (alpha 8, every linear layer) at 10x the
#   full fine-tuning rates (RL 1e-3, SFT 3e-3): with every weight trained, GRPO's noisy updates cost
#   more than they gain and its reward did not rise from a 22.6% warm start (t 1.1); through the
#   adapters it rose from both warm starts tried (t 6.1 and 3.4), while SFT lost under a point;
# - 40 steps per method; an RL step is one rollout of 32 prompts x 8 samples and two optimiser
#   steps on it (so the clip range matters); an SFT step is 256 demonstrations, the same number of
#   trained sequences as an RL step;
# - 8 seeds and 2,500 test problems (binomial SE of one run's accuracy about 1 point): with 10 seeds
#   the paired differences' spread was 0.6-0.9 points (every MDE under 1 point) and the study took
#   23 minutes; 8 seeds keep every MDE near 1 point within the budget; pass@4 on the first 500;
# - no sensitivity blocks and no out-of-distribution task (at 3-5 seeds per value the blocks detect
#   nothing at this size, and every method scores 1-3% on 4-operation problems); `--full` runs both,
#   and SuperRL, HPT, SRFT, CHORD and adaptive entropy.
DEFAULT = {
    "name": "study",
    "question": "Does combining SFT and RL (sequential, alternating, joint loss, routed, off-policy "
                "demonstrations) make a small model reason better than either alone, and does entropy "
                "regularisation make RL more stable and better?",
    "base": {
        "name": "study",
        "model": {"name": "tiny", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4},
                  "lora": {"enabled": True, "r": 4, "alpha": 8.0}},
        "task": {"name": "arith", "kwargs": ARITH, "test_size": 2500},
        "schedule": {"steps": 40, "sft_frac": 0.5, "rl_steps": 2, "sft_steps": 1},
        "sft": {"batch_size": 256, "optim": {"lr": 3.0e-3, "warmup_steps": 0, "schedule": "constant"}},
        "rl": {"rollout": {"group_size": 8, "prompts_per_step": 32, "max_new_tokens": 56, "temperature": 1.0},
               "algo": {"mini_batches": 2}, "optim": {"lr": 1.0e-3}},
        "eval": {"every": 0, "k": 4, "k_n": 500, "max_new_tokens": 56, "extra_tasks": []},
        "log": {"samples_every": 10, "samples_n": 16},
    },
    "warm": {"overrides": ["model.lora.enabled=false", "phases=[{kind: sft, steps: 1000}]", "eval.k=8",
                           "eval.extra_tasks=[]", "sft.batch_size=64",
                           "sft.optim={lr: 3.0e-3, warmup_steps: 30, schedule: cosine, min_lr_ratio: 0.1}"],
             "per_seed": False, "threads": 2},
    "metric": "eval/arith/acc_strict",
    "baseline": "sft",
    "methods": {
        "sft": ["method=sft"],
        "grpo": ["method=grpo"],
        "grpo_entropy": ["method=grpo", "rl.algo.entropy={mode: constant, kwargs: {coef: 0.01}}"],
        "sft_then_rl": ["method=sft_then_rl"],
        "alternate": ["method=alternate"],
        "joint": ["method=joint"],
        "relift": ["method=relift"],
        "luffy": ["method=luffy"],
    },
    "seeds": 8,
    "sensitivity": [],
    "threads_per_run": 1,
    "power_target": POWER_TARGET,     # the report calls a comparison underpowered above this MDE (points)
}

SENSITIVITY = [
    {"method": "grpo", "seeds": 5, "params": {
        "rl.algo.surrogate_kwargs": [{"eps_low": 0.1, "eps_high": 0.1}, {"eps_low": 0.3, "eps_high": 0.3}],
        "rl.algo.kl.coef": [0.0, 0.1],
        "rl.algo.entropy.kwargs": [{"coef": 0.003}, {"coef": 0.03}]}},
    {"method": "joint", "seeds": 5, "params": {"rl.hybrid.weight_kwargs": [{"value": 0.1}, {"value": 0.3}]}},
]
"""The one-at-a-time sensitivity blocks of `--full`: clip range, KL coefficient and entropy bonus
for GRPO, the SFT weight for the joint loss."""


def _quick() -> dict:
    """A smoke version (under a minute): every stage and report section, tiny sizes."""
    s = copy.deepcopy(DEFAULT)
    s["name"] = "study-quick"
    b = s["base"]
    b["model"]["tiny"] = {"hidden_size": 32, "num_layers": 1, "num_heads": 4}
    b["task"].update(train_size=500, test_size=24)
    b["schedule"]["steps"] = 4
    b["sft"]["batch_size"] = 16
    b["rl"]["rollout"].update(group_size=4, prompts_per_step=4, max_new_tokens=24)
    b["eval"].update(k=2, max_new_tokens=24, extra_tasks=[{**OOD, "test_size": 8}])
    b["log"]["samples_every"] = 2
    small = {"phases=": "phases=[{kind: sft, steps: 20}]", "sft.batch_size=": "sft.batch_size=16"}
    s["warm"]["overrides"] = [next((v for k, v in small.items() if o.startswith(k)), o) for o in s["warm"]["overrides"]]
    s["warm"]["threads"] = 1
    s["methods"] = {k: s["methods"][k] for k in ("sft", "grpo", "grpo_entropy", "joint", "luffy")}
    s["seeds"] = 2
    s["sensitivity"] = [{"method": "grpo", "seeds": 2, "params": {"rl.algo.kl.coef": [0.0]}},
                        {"method": "joint", "seeds": 2, "params": {"rl.hybrid.weight_kwargs": [{"value": 0.3}]}}]
    return s


def _full() -> dict:
    """The larger version (about 3.5 hours on 2 cores, from the default's per-step times): one warm
    start per seed, 10 seeds, a 200-step budget, every hybrid, the sensitivity blocks with 5 seeds
    per value, and harder out-of-distribution levels."""
    s = copy.deepcopy(DEFAULT)
    s["name"] = "study-full"
    s["seeds"] = 10
    b = s["base"]
    b["schedule"]["steps"] = 200
    b["eval"]["extra_tasks"] = [OOD, {"name": "arith", "label": "arith_big", "test_size": 100,
                                      "kwargs": {"min_ops": 2, "max_ops": 3, "max_operand": 50, "operators": "+-*"}}]
    s["warm"]["per_seed"] = True
    s["warm"]["threads"] = 1
    s["methods"].update({"superrl": ["method=superrl"], "hpt": ["method=hpt"], "srft": ["method=srft"],
                         "chord": ["method=chord"],
                         "grpo_adaptive_entropy": ["method=grpo", "rl.algo.entropy={mode: adaptive, kwargs: "
                                                   "{target: 0.3, delta: 0.0001, max_coef: 0.005}}"]})
    s["sensitivity"] = copy.deepcopy(SENSITIVITY)
    return s


STUDIES = {"default": lambda: copy.deepcopy(DEFAULT), "quick": _quick, "full": _full}


def smoke(spec: dict) -> dict:
    """Any study shrunk to a smoke test of its pipeline (`sftrl study FILE --smoke`): same model,
    task, methods and sensitivity keys, but a 2-step warm start, 4 steps per run, 2 seeds, one value
    per sensitivity key, a handful of problems and short completions. Its numbers mean nothing; it
    shows the study runs end to end (e.g. a GPU-sized study on a CPU)."""
    s = copy.deepcopy(spec)
    s["name"] = f"{spec['name']}-smoke"
    b = s["base"]
    b.setdefault("schedule", {})["steps"] = 4
    task = b.setdefault("task", {})
    task.update(train_size=min(64, task.get("train_size") or 64), test_size=8)
    sft = b.setdefault("sft", {})
    sft["batch_size"] = 4
    rl = b.setdefault("rl", {})
    rl.setdefault("rollout", {}).update(group_size=3, prompts_per_step=2, max_new_tokens=32)   # LUFFY needs 3
    ev = b.setdefault("eval", {})
    ev.update(k=min(2, ev.get("k", 0)), max_new_tokens=32, batch_size=8, every=0,
              extra_tasks=[{**t, "test_size": 4} for t in ev.get("extra_tasks", [])])
    b.setdefault("log", {})["samples_every"] = 2
    w = s["warm"]
    w["overrides"] = [o for o in w["overrides"] if not o.startswith("phases=")] + \
        ["phases=[{kind: sft, steps: 2}]"]
    s["seeds"] = 2
    s["sensitivity"] = [{**blk, "seeds": 2, "params": {k: v[:1] for k, v in blk["params"].items()}}
                        for blk in s.get("sensitivity") or []]
    return s


def load_study(name_or_path: str | None) -> dict:
    """A built-in study by name, or a study YAML file (same keys as `DEFAULT`)."""
    name = name_or_path or "default"
    if name in STUDIES:
        return STUDIES[name]()
    path = Path(name)
    if not path.is_file():
        alt = Path("configs/studies") / f"{name}.yaml"
        if alt.is_file():
            path = alt
        else:
            raise StudyError(f"unknown study {name!r}; {did_you_mean(name, STUDIES)} (or give a study "
                             f"YAML file, e.g. configs/studies/real-smollm2.yaml)")
    data = yamlio.load(path.read_text())
    if not isinstance(data, dict):
        raise StudyError(f"{path}: a study is a mapping of keys ({', '.join(DEFAULT)})")
    unknown = [k for k in data if k not in DEFAULT]
    if unknown:
        raise StudyError(f"{path}: unknown study key {unknown[0]!r}; {did_you_mean(unknown[0], DEFAULT)}")
    return {**copy.deepcopy(DEFAULT), **data}


def warm_sweep(spec: dict, exp: Path) -> dict:
    w = spec["warm"]
    return {"name": f"{spec['name']}-warm", "base": str(exp / "base.yaml"), "overrides": list(w["overrides"]),
            "methods": {"warm": []}, "seeds": _seed_list(spec["seeds"]) if w["per_seed"] else [0],
            "threads_per_run": w["threads"], "workers": "auto", "retries": 1}


def main_sweep(spec: dict, exp: Path) -> dict:
    model = str(exp / "warm" / "runs" / ("warm__s{seed}" if spec["warm"]["per_seed"] else "warm__s0") / "model")
    return {"name": spec["name"], "base": str(exp / "base.yaml"), "metric": spec["metric"],
            "baseline": spec["baseline"], "overrides": [f"model.name={model}"],
            "methods": spec["methods"], "seeds": spec["seeds"], "sensitivity": spec["sensitivity"],
            "threads_per_run": spec["threads_per_run"], "workers": "auto", "retries": 1}


def _seed_list(seeds) -> list[int]:
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def run_study(spec: dict, out_dir: str | Path | None = None, *, workers=None, progress: bool = True,
              executor: str = "local", address: str | None = None) -> Path:
    """Warm start, main sweep, report; returns the experiment directory. Rerunning the same
    command resumes: finished runs are skipped."""
    exp = Path(out_dir or Path("runs") / spec["name"]).resolve()
    exp.mkdir(parents=True, exist_ok=True)
    atomic_write_text(exp / "base.yaml", yaml.safe_dump(spec["base"], sort_keys=False))
    atomic_write_text(exp / "study.yaml", yaml.safe_dump(spec, sort_keys=False))
    show = (lambda name: ProgressDisplay(name)) if progress else (lambda name: None)
    try:
        warm = run_sweep(warm_sweep(spec, exp), exp / "warm", executor=executor, address=address,
                         workers=workers, progress=show(f"{spec['name']}: warm start"))
        if warm.interrupted or warm.exit_code:
            raise StudyError(f"the warm start did not finish ({exp / 'warm'}); see its runs' ERROR "
                             f"files, then rerun the same command to resume")
        result = run_sweep(main_sweep(spec, exp), exp, executor=executor, address=address, workers=workers,
                           progress=show(spec["name"]))
    except SweepError as e:
        raise StudyError(str(e)) from None
    if result.interrupted:
        raise StudyError(f"the study was interrupted; rerun the same command to resume ({exp})")
    from sftrl.experiment import report
    report.write_report(exp, question=spec.get("question"))
    return exp


def results_table(exp: Path, metric: str, seed: int = 0) -> str:
    """Per method (no swept parameters): n, mean, 95% bootstrap CI over seeds, IQM, std, as a
    Markdown table; runs without DONE are not counted."""
    import numpy as np

    from sftrl.experiment import stats
    from sftrl.experiment.records import load_experiment
    loaded = load_experiment(exp)
    values: dict[str, list[float]] = {m: [] for m in dict.fromkeys(r.base_method for r in loaded.runs)}
    for run in loaded.done:
        v = run.final.get(metric)
        if not run.params and v is not None:
            values[run.base_method].append(float(v))
    rng = np.random.default_rng(seed)
    rows = [f"| method | n | mean {metric} | 95% CI | IQM | std |", "|---|---|---|---|---|---|"]
    for method, vals in values.items():
        if not vals:
            rows.append(f"| {method} | 0 | | | | |")
            continue
        sm = stats.summarize(np.asarray(vals), rng)
        std = "" if not np.isfinite(sm["std"]) else f"{sm['std']:.3f}"
        rows.append(f"| {method} | {sm['n']} | {sm['mean']:.3f} | [{sm['ci_low']:.3f}, {sm['ci_high']:.3f}] "
                    f"| {sm['iqm']:.3f} | {std} |")
    return "\n".join(rows)
