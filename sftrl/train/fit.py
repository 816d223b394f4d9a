"""The training loop: the phase schedule in `fit`, one step of each kind, evaluation and the
run directory's writes.

Owns: the order of things in a run. `run_sft_step` and `run_rl_step` turn a `Session` into the
explicit arguments of `sft_step` and `rl_step` and thread `TrainState` (counters, the entropy
controller, ReLIFT's buffer) through them; only `fit` writes metrics. Math lives in `algos`,
sampling in `lm.rollout`, files in `runlog`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import replace

import torch

from sftrl.config import Config, to_yaml
from sftrl.data import verify
from sftrl.lm.models import quiet_libraries, save_policy
from sftrl import trackers
from sftrl.parallel import dist, sharding
from sftrl.runlog import CONFIG, EVAL, LOGS, METRICS, MODEL, SAMPLES, QuietRunDir, RunDir, truncate_jsonl
from sftrl.train import checkpoints
from sftrl.train.compute import sft_step_metrics
from sftrl.train.evaluate import evaluate
from sftrl.train.optim import TrainingError
from sftrl.train.progress import Progress
from sftrl.train.relift import buffer_sft
from sftrl.train.rl_step import rl_step
from sftrl.train.session import Session, frozen_reference
from sftrl.train.sft_step import sft_step
from sftrl.train.state import restore, state_of

__all__ = ["Session", "TrainingError", "buffer_step", "evaluate_all", "fit", "quiet_libraries", "run_rl_step",
           "run_sft_step"]


def run_sft_step(s: Session) -> dict:
    """One SFT step on the next batch of this rank's training problems."""
    cfg = s.cfg
    problems = dist.shard(s.streams.train.next(cfg.sft.batch_size))
    batch = s.policy.demos(problems)
    update = s.optims.update("sft", cfg.sft.optim, what=f"sft step {s.state.step + 1}",
                             nonfinite=cfg.guard.nonfinite)
    lr = update.lr
    with s.policy.precision():
        out = sft_step(s.model, update, batch, micro_batch_size=cfg.sft.micro_batch_size)
    return {**out, "optim/lr": lr, **sft_step_metrics(batch, n_params=s.policy.n_params)}


def run_rl_step(s: Session) -> dict:
    """One RL step; then ReLIFT's buffer takes the step's routed problems (its null form does
    nothing). The KL reference is frozen from the policy as it enters its first RL step."""
    cfg, st = s.cfg, s.state
    if s.algo.needs_ref and s.ref is None:
        s.policy = replace(s.policy, ref=frozen_reference(s.model, s.fresh_policy))
    update = s.optims.update("rl", cfg.rl.optim, what=f"rl step {st.step + 1}", nonfinite=cfg.guard.nonfinite)
    with s.policy.precision():
        metrics, st.ctls, s.last_groups = rl_step(
            s.policy, update, s.streams, cfg.rl, s.algo, st.ctls, st.kind_steps.get("rl", 0), s.rngs.sample)
        buffered = st.buffer.step(s.last_groups.routed, lambda problems: buffer_step(s, problems))
    metrics["compute/trained_tokens"] += buffered.pop("compute/buffer_trained_tokens", 0.0)   # ReLIFT's extra
    metrics["compute/flops"] += buffered.pop("compute/buffer_flops", 0.0)                     # SFT steps count too
    return {**metrics, **buffered}


def buffer_step(s: Session, problems: list) -> dict:
    """ReLIFT's separate SFT step: its own AdamW at a constant rate (hybrid.buffer_lr, else the
    RL rate), entropy bonus hybrid.entropy_coef."""
    hy, rl = s.cfg.rl.hybrid, s.cfg.rl
    ocfg = rl.optim.model_copy(update={"lr": hy.buffer_lr or rl.optim.lr, "warmup_steps": 0, "schedule": "constant"})
    updates = lambda: s.optims.update("buffer", ocfg, what=f"the buffer SFT step of rl step {s.state.step + 1}",  # noqa: E731
                                      nonfinite=s.cfg.guard.nonfinite)
    return buffer_sft(s.model, updates, s.policy.demos, problems, batch=hy.buffer_batch, epochs=hy.buffer_epochs,
                      entropy_coef=s.algo.sft_entropy_coef, micro_batch_size=rl.micro_batch_size,
                      n_params=s.policy.n_params)


def evaluate_all(s: Session) -> tuple[dict, list[dict]]:
    """Metrics and records of every evaluation task, on the process that writes the run; the
    others return ({}, []). Every process must call it: a sharded policy is gathered first."""
    metrics, records = {}, []
    with sharding.full_weights(s.model):
        if s.run.writes:
            for task, problems in s.eval_sets:
                prompts = [s.policy.render(p, task.template) for p in problems]
                with s.policy.precision():
                    m, r = evaluate(s.model, s.policy.tokenizer, problems, prompts, key=task.key,
                                    ecfg=s.cfg.eval, gen=s.rngs.eval)
                metrics.update(m)
                records.extend(r)
    return metrics, records


def save_model(s: Session, directory) -> None:
    """The policy as a loadable model folder (rank 0 writes; every rank must call: a sharded
    policy is gathered into an unsharded copy first)."""
    model = s.model
    if sharding.is_sharded(model):
        state = sharding.full_state_dict(model)
        if not s.run.writes:
            return
        model = s.fresh_policy(torch.device("cpu"))
        model.load_state_dict(state)
    if s.run.writes:
        save_policy(model, s.policy.tokenizer, directory)


def _open(cfg: Config, out_dir, argv) -> tuple[RunDir, Session]:
    """The run directory and session: resumed from the newest checkpoint when the directory holds
    an unfinished run of the same config (logs cut back to it), else started afresh."""
    run = RunDir(out_dir) if dist.is_main_env() else QuietRunDir(out_dir)   # one writer
    text, ckpt = to_yaml(cfg), checkpoints.latest(run.path)
    if ckpt is not None and run.file(CONFIG).is_file() and run.file(CONFIG).read_text() != text:
        raise ValueError(f"{run.path} holds an unfinished run with a different config; rerun its own "
                         f"config to resume it, or choose another --out")
    if ckpt is None:
        run.start(text, seed=cfg.seed, argv=argv)
        for name in LOGS:
            if run.writes:
                run.file(name).unlink(missing_ok=True)       # left by a run killed before any checkpoint
    s = Session.build(cfg, run)
    if ckpt is not None:
        restore(s, checkpoints.load(ckpt))
        run.resume(argv=argv, step=s.state.step)
        for name in LOGS:
            if run.writes:
                truncate_jsonl(run.file(name), s.state.step)
    return run, s


def fit(cfg: Config, out_dir, argv: list[str] | None = None) -> dict:
    """Run the phases of `cfg` into `out_dir`; return final.json's content.

    An unfinished run directory with the same config and a checkpoint is resumed exactly from its
    newest checkpoint (lines logged after it are dropped and recomputed); one without a
    checkpoint starts over."""
    quiet_libraries()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    run, s = _open(cfg, out_dir, argv)
    if run.writes and cfg.log.report_to:                  # every metrics/eval line and final.json go to them too
        run.track(trackers.open_all(cfg.log.report_to, run.path, project=cfg.name, name=run.path.name,
                                    config=cfg.model_dump(mode="json")))
    st, steps = s.state, {"sft": run_sft_step, "rl": run_rl_step}
    progress = Progress(cfg.total_steps, mode=cfg.log.progress if run.writes else "off", label=cfg.name)
    t_start = time.perf_counter()
    done = 0
    for phase in cfg.phases:
        for i in range(phase.steps):
            done += 1
            if done <= st.step:                               # finished before the checkpoint
                continue
            kind = phase.kind_at(i)
            t0 = time.perf_counter()
            metrics = steps[kind](s)
            st.step += 1
            st.kind_steps[kind] = st.kind_steps.get(kind, 0) + 1
            _guard(s, metrics)
            metrics.update({"time/step": time.perf_counter() - t0, "time/elapsed": time.perf_counter() - t_start})
            if st.step % cfg.log.every == 0 or st.step == cfg.total_steps:
                run.log(METRICS, {"step": st.step, "phase": kind, **metrics})
            if kind == "rl" and cfg.log.samples_every and st.kind_steps["rl"] % cfg.log.samples_every == 0:
                for record in rollout_records(s.last_groups, cfg.log.samples_n):
                    run.log(SAMPLES, {"step": st.step, "kind": "rollout", **record})
            if cfg.eval.every and st.step % cfg.eval.every == 0 and st.step < cfg.total_steps:
                ev, records = evaluate_all(s)                 # ({}, []) on the processes that do not write
                run.log(EVAL, {"step": st.step, **ev})
                for r in records:
                    run.log(SAMPLES, {"step": st.step, "kind": "eval", **r})
                metrics.update(ev)
            if cfg.checkpoint.every and st.step % cfg.checkpoint.every == 0 and st.step < cfg.total_steps:
                state = state_of(s)                           # every process: sharded state is gathered
                if run.writes:
                    checkpoints.save(run.path, st.step, state, keep=cfg.checkpoint.keep)
            progress.update(st.step, metrics)
    final, records = evaluate_all(s)
    save_model(s, run.file(MODEL))
    if not run.writes:                                    # other processes: training only
        return {}
    run.log(EVAL, {"step": st.step, **final})
    for r in records:
        run.log(SAMPLES, {"step": st.step, "kind": "eval", **r})
    final = {"step": st.step, "wall_time_s": time.perf_counter() - t_start, "peak_rss_mb": peak_rss_mb(), **final}
    if cfg.guard.nonfinite == "skip":
        final["guard/skipped_steps"] = st.skipped
    progress.close(final)
    run.finish(final)
    return final


def _guard(s: Session, metrics: dict) -> None:
    """Count updates skipped for a non-finite gradient; stop after too many in a row."""
    st = s.state
    if s.cfg.guard.nonfinite != "skip":
        return
    if math.isfinite(metrics.get("grad/norm", 0.0)):
        st.skipped_run = 0
    else:
        st.skipped += 1
        st.skipped_run += 1
        if st.skipped_run > s.cfg.guard.max_skips:
            raise TrainingError(f"{st.skipped_run} updates in a row had a non-finite loss or gradient "
                                f"(step {st.step}); lower the learning rate or check the data; the last "
                                f"checkpoint is intact")
    metrics["guard/skipped_steps"] = float(st.skipped)


def rollout_records(g, n: int) -> list[dict]:
    """The first `n` rows of an RL step's groups as samples.jsonl records (whole groups first),
    so answer and length distributions, and reward hacking, can be read from the run."""
    if g is None:
        return []
    G = g.sc.r.shape[1] if g.sc.r.ndim == 2 else 1
    adv = None if g.adv is None else g.adv.sum(1) / (g.ro.lengths.clamp(min=1) if g.adv.shape[1] > 1 else 1)   # [N]
    out = []
    for row in range(min(n, len(g.ro.texts))):
        p = g.problems[row // G]
        text = g.ro.texts[row]
        out.append({"problem_id": p.id, "group": row // G, "gold": p.answer, "completion": text,
                    "answer": verify.extract(text, "strict"), "reward": float(g.sc.r.view(-1)[row]),
                    "correct": bool(g.sc.acc.view(-1)[row] > 0), "length": int(g.ro.lengths[row]),
                    "offpolicy": bool(g.off[row]), "advantage": None if adv is None else float(adv[row])})
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ru_maxrss is in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
