"""Per-step wall time and peak memory of our RL step against TRL's GRPOTrainer, identical workload.

Workload (both sides): the same random-init Llama and character tokenizer (saved once and loaded
by both), `arith` prompts, 16 prompts x 8 completions, at most 64 new tokens, temperature 1,
beta 0.04 (k3 in the loss), epsilon 0.2, one optimiser update per rollout, per-sequence loss
normalisation (TRL loss_type="grpo" = our `grpo` preset), fp32, no gradient checkpointing,
same threads. Each side runs in its own subprocess so peak RSS is its own.

    python benchmarks/bench_vs_trl.py [--steps 6] [--hidden 256] [--layers 4] [--threads 2]
    python benchmarks/bench_vs_trl.py --study      # the default study's RL step (its model and shape)

Prints one JSON line per side, the ratio of median step times (ours / TRL) and seed-steps per
second of each side (one seed's rollout and its optimiser steps per second; a single process
trains one seed at a time, so this is 1 / step time) with their ratio (ours / TRL). With
`--mini-batches M` both sides take M optimiser steps per rollout (TRL: steps_per_generation M on
batches of P*G/M); with `--lora R ALPHA` both train rank-R adapters on every linear layer (peft on
both sides; the KL reference is the adapter-free model on both). `--study` takes all of these from
the default study and adds `--concurrent 2`: our seeds as the study runs them, two processes of
one thread each at once on the machine's two cores (seed-steps per second = processes / the slower
process's mean step time after its first), against one TRL process. Needs `trl` (pip install -e .[trl]).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

P, G, MAX_NEW, BETA, EPS, MINI = 16, 8, 64, 0.04, 0.2, 1
LORA: tuple | None = None           # (rank, alpha) of adapters on every linear layer, or full fine-tuning


def study_shape() -> dict:
    """The default study's RL step, read from sftrl.experiment.study.DEFAULT: its model and rollout shape."""
    from sftrl.experiment.study import DEFAULT
    b = DEFAULT["base"]
    tiny, roll = b["model"]["tiny"], b["rl"]["rollout"]
    lora = b["model"].get("lora") or {}
    return {"hidden": tiny["hidden_size"], "layers": tiny["num_layers"], "prompts": roll["prompts_per_step"],
            "group": roll["group_size"], "max_new": roll["max_new_tokens"],
            "mini_batches": b["rl"]["algo"]["mini_batches"],
            "lora": (lora["r"], lora["alpha"]) if lora.get("enabled") else None,
            "threads": DEFAULT["threads_per_run"]}


def make_model(out: Path, hidden: int, layers: int) -> None:
    from sftrl.config.schema import TinyModelConfig
    from sftrl.lm.models import build_char_tokenizer, save_policy, tiny_model
    tok = build_char_tokenizer()
    model = tiny_model(TinyModelConfig(hidden_size=hidden, num_layers=layers, num_heads=4), len(tok),
                       seed=0, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    save_policy(model, tok, out)


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_ours(model_dir: str, steps: int, threads: int) -> dict:
    from dataclasses import replace

    import torch
    from sftrl.config import build_config
    from sftrl.runlog import RunDir
    from sftrl.train.fit import Session, quiet_libraries, run_rl_step
    from sftrl.train.session import frozen_reference
    quiet_libraries()
    torch.set_num_threads(threads)
    lora = [] if LORA is None else ["model.lora.enabled=true", f"model.lora.r={LORA[0]}", f"model.lora.alpha={LORA[1]}"]
    cfg = build_config({"phases": [{"kind": "rl", "steps": steps}]}, [
        f"model.name={model_dir}", "rl.algo.preset=grpo", f"rl.algo.kl.coef={BETA}",
        f"rl.rollout.prompts_per_step={P}", f"rl.rollout.group_size={G}", f"rl.algo.mini_batches={MINI}",
        f"rl.rollout.max_new_tokens={MAX_NEW}", "rl.optim.lr=1e-5", "task.train_size=2000", *lora])
    s = Session.build(cfg, RunDir(tempfile.mkdtemp()))
    s.policy = replace(s.policy, ref=frozen_reference(s.model))
    times, parts = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        m = run_rl_step(s)
        s.state.step += 1
        s.state.kind_steps["rl"] = s.state.kind_steps.get("rl", 0) + 1
        times.append(time.perf_counter() - t0)
        parts.append({k: m[k] for k in ("time/rollout", "time/logp_ref", "time/update", "rollout/len_mean")})
    return {"side": "sftrl", "step_s": times, "parts": parts, "peak_rss_mb": peak_mb()}


def run_trl(model_dir: str, steps: int, threads: int) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from sftrl.data.tasks.arith import generate
    from sftrl.data.verify import is_correct
    torch.set_num_threads(threads)
    problems = generate(split="train", n=2000, seed=1234)
    answers = {p.prompt + "\n": p.answer for p in problems}
    data = Dataset.from_dict({"prompt": [p.prompt + "\n" for p in problems]})

    def correctness(prompts, completions, **kw):
        return [float(is_correct(c, answers[p])) for p, c in zip(prompts, completions)]

    stamps = []

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append(["begin", time.perf_counter()])

        def on_step_end(self, args, state, control, **kw):
            stamps.append(["end", time.perf_counter()])

    args = trl.GRPOConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=P * G // MINI,
                          num_generations=G, gradient_accumulation_steps=1, steps_per_generation=MINI,
                          num_iterations=1,
                          max_completion_length=MAX_NEW, temperature=1.0, beta=BETA, epsilon=EPS,
                          loss_type="grpo", learning_rate=1e-5, max_steps=steps * MINI, bf16=False, fp16=False,
                          use_cpu=True, gradient_checkpointing=False, report_to=[], logging_steps=1,
                          save_strategy="no", use_bias_correction_kl=False, dataloader_num_workers=0,
                          seed=0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    peft_config = None
    if LORA is not None:
        from peft import LoraConfig
        peft_config = LoraConfig(r=LORA[0], lora_alpha=LORA[1], lora_dropout=0.0, target_modules="all-linear",
                                 task_type="CAUSAL_LM")
    trainer = trl.GRPOTrainer(model=model_dir, reward_funcs=correctness, args=args, train_dataset=data,
                              processing_class=tok, callbacks=[Clock()], peft_config=peft_config)
    trainer.train()
    begins = [t for k, t in stamps if k == "begin"]
    ends = [t for k, t in stamps if k == "end"]
    # TRL generates inside the step (in _prepare_inputs), so begin->end covers the whole step; a
    # rollout's MINI optimiser steps together are one of our steps
    times = [e - b for b, e in zip(begins, ends)]
    times = [sum(times[i:i + MINI]) for i in range(0, len(times) - MINI + 1, MINI)]
    return {"side": "trl", "trl_version": trl.__version__, "step_s": times, "peak_rss_mb": peak_mb()}


def side(name: str, model_dir: Path, steps: int, threads: int, shape: list, concurrent: int = 1) -> list[dict]:
    """The results of `concurrent` subprocesses of one side run at once."""
    procs = [subprocess.Popen([sys.executable, __file__, "--side", name, "--model", str(model_dir),
                               "--steps", str(steps), "--threads", str(threads), *shape],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(concurrent)]
    outs = [p.communicate() for p in procs]
    results = []
    for stdout, stderr in outs:
        line = next((x for x in stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{name} failed:\n{stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT "):]))
    return results


def main() -> None:
    global P, G, MAX_NEW, MINI, LORA
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=P)
    ap.add_argument("--group", type=int, default=G)
    ap.add_argument("--max-new", type=int, default=MAX_NEW)
    ap.add_argument("--mini-batches", type=int, default=MINI)
    ap.add_argument("--lora", type=float, nargs=2, metavar=("RANK", "ALPHA"), help="adapters on every linear layer")
    ap.add_argument("--concurrent", type=int, default=1, help="our processes at once (threads each: --threads-"
                    "per-run); seed-steps per second counts all of them")
    ap.add_argument("--threads-per-run", type=int, default=None, help="threads of each concurrent process of ours")
    ap.add_argument("--study", action="store_true", help="the default study's model, RL step shape, adapters "
                    "and threads per run, with --concurrent 2")
    ap.add_argument("--side", choices=["sftrl", "trl"], help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.study:
        shape = study_shape()
        a.hidden, a.layers, a.prompts, a.group = shape["hidden"], shape["layers"], shape["prompts"], shape["group"]
        a.max_new, a.mini_batches, a.lora = shape["max_new"], shape["mini_batches"], shape["lora"]
        a.concurrent, a.threads_per_run = 2, shape["threads"]
    P, G, MAX_NEW, MINI = a.prompts, a.group, a.max_new, a.mini_batches
    LORA = None if a.lora is None else (int(a.lora[0]), float(a.lora[1]))
    shape = ["--prompts", str(P), "--group", str(G), "--max-new", str(MAX_NEW), "--mini-batches", str(MINI)]
    if LORA is not None:
        shape += ["--lora", str(LORA[0]), str(LORA[1])]
    if a.side:
        fn = run_ours if a.side == "sftrl" else run_trl
        print("RESULT " + json.dumps(fn(a.model, a.steps, a.threads)))
        return
    model_dir = Path(tempfile.mkdtemp()) / "model"
    make_model(model_dir, a.hidden, a.layers)
    results = {name: side(name, model_dir, a.steps, a.threads, shape)[0] for name in ("sftrl", "trl")}
    summary = {}
    for name, r in results.items():
        steady = r["step_s"][1:] or r["step_s"]          # the first step pays one-time costs
        summary[name] = {"median_step_s": statistics.median(steady), "peak_rss_mb": r["peak_rss_mb"]}
        print(json.dumps({name: summary[name], "steps_s": [round(t, 3) for t in r["step_s"]]}))
    ratio = summary["sftrl"]["median_step_s"] / summary["trl"]["median_step_s"]
    rates = {name: 1.0 / summary[name]["median_step_s"] for name in summary}
    out = {"ratio_step_time_ours_over_trl": round(ratio, 3),
           "seed_steps_per_s": {k: round(v, 3) for k, v in rates.items()},
           "ratio_seed_steps_per_s_ours_over_trl": round(rates["sftrl"] / rates["trl"], 3),
           "workload": {"prompts": P, "group": G, "max_new_tokens": MAX_NEW, "beta": BETA, "mini_batches": MINI,
                        "epsilon": EPS, "hidden": a.hidden, "layers": a.layers, "lora": LORA,
                        "threads": a.threads, "trl": results["trl"].get("trl_version")},
           "parts_sftrl_last": results["sftrl"]["parts"][-1]}
    if a.concurrent > 1:
        per_run = a.threads_per_run or max(1, a.threads // a.concurrent)
        both = side("sftrl", model_dir, a.steps, per_run, shape, concurrent=a.concurrent)
        # steady state: the slowest process's steps after its first, as seed-steps per second of all
        steady = max(sum(r["step_s"][1:]) / max(1, len(r["step_s"]) - 1) for r in both)
        rate = a.concurrent / steady
        out["concurrent"] = {"processes": a.concurrent, "threads_each": per_run,
                             "seed_steps_per_s": round(rate, 3),
                             "ratio_seed_steps_per_s_over_one_trl_process": round(rate / rates["trl"], 3),
                             "median_step_s_each": [round(statistics.median(r["step_s"][1:] or r["step_s"]), 3)
                                                    for r in both]}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
