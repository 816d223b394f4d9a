"""The training loop: `sft_step`, the phase schedule in `fit`, evaluation and run-directory writes.

Owns: the order of things in a run. Math lives in `algos`/`logprobs`, sampling in `rollout`,
files in `runlog`. Step functions return metrics; only `fit` writes them.
"""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from sftrl.algos import entropy
from sftrl.algos import policy as algos
from sftrl.config import Config, to_yaml
from sftrl.data import verify
from sftrl.data.streams import ProblemStream, demo_batch
from sftrl.data.tasks import load_problems
from sftrl.data.tasks.prompts import TEMPLATES, completion_target
from sftrl.lm import logprobs
from sftrl.lm.models import AdaptersOff, autocast, device_from, is_lora, load_policy, render_prompt, save_policy, shard
from sftrl.parallel import dist, sharding
from sftrl.runlog import QuietRunDir, RunDir, truncate_jsonl
from sftrl.train import checkpoints, forward
from sftrl.train.evaluate import evaluate
from sftrl.train.optim import make_optimizer
from sftrl.train.progress import Progress
from sftrl.train.relift import SFTBuffer
from sftrl.train.rl_step import Algo, rl_step


class TrainingError(RuntimeError):
    """A run stopped on purpose (non-finite loss, ...); the message says why and what to change."""


@dataclass
class Rngs:
    """Independent streams derived from the run seed (STYLE rule 7)."""

    data: np.random.Generator       # order of training problems
    sample: torch.Generator         # rollout sampling
    eval: torch.Generator           # evaluation sampling (pass@k), separate so eval never shifts training
    init_seed: int                  # model initialisation
    expert: np.random.Generator     # order of the expert demonstration stream (CHORD)


def make_rngs(seed: int) -> Rngs:
    data, sample, ev, init, expert = np.random.SeedSequence(seed).spawn(5)
    as_int = lambda ss: int(ss.generate_state(1)[0])  # noqa: E731
    return Rngs(data=np.random.default_rng(data),
                sample=torch.Generator().manual_seed(as_int(sample)),
                eval=torch.Generator().manual_seed(as_int(ev)),
                init_seed=as_int(init), expert=np.random.default_rng(expert))


def micro_slices(n: int, size: int | None):
    size = size or n
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def sft_step(model, opt, sched, batch, *, micro_batch_size: int | None, grad_clip: float | None,
             entropy_coef: float = 0.0, nonfinite: str = "stop", what: str = "an SFT step") -> dict:
    """One optimiser step of prompt-masked NLL on demonstration tokens (minus an optional entropy
    bonus, ReLIFT's SFT step).

    The token-mean weights come from the whole batch's mask, so the sum of micro-batch losses is
    exactly the full-batch loss: gradient accumulation never changes the objective.
    """
    mask = batch.completion_mask                                                # [B, T]
    w = dist.global_weights(algos.WEIGHTINGS["token_mean"], mask)               # [B, T] over all ranks
    ids, attn, Lp = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]
    total = ent_total = 0.0
    for rows in forward.each(model, micro_slices(ids.shape[0], micro_batch_size)):
        if entropy_coef:
            logp, ent = logprobs.token_logp_and_entropy(model, ids[rows], attn[rows], Lp)   # [b, T]
            bonus = (ent * w[rows]).sum()
            ent_total += bonus.item()
        else:
            logp, bonus = logprobs.token_logp(model, ids[rows], attn[rows], Lp), 0.0
        nll = -(logp * w[rows]).sum()
        (nll - entropy_coef * bonus).backward()
        total += nll.item()
    grad_norm = clip_and_step(model, opt, sched, grad_clip, what=f"{what} (loss {total:.4g})",
                              nonfinite=nonfinite)
    total, ent_total = dist.sum_scalars({"loss": total, "ent": ent_total}, ("loss", "ent")).values()
    out = {"loss/sft": total, "grad/norm": grad_norm, "sft/tokens": float(mask.sum()),
           "sft/truncated": float(batch.truncated.float().mean())}
    if entropy_coef:
        out["sft/entropy"] = ent_total
    return out


def clip_and_step(model, opt, sched, grad_clip: float | None, *, what: str, nonfinite: str = "stop") -> float:
    """Clip the global gradient norm, step optimiser and schedule. A non-finite norm (NaN/inf
    loss or gradient) stops the run, or with nonfinite="skip" drops this update (the schedule
    still advances) and returns NaN."""
    if not sharding.is_sharded(model):                    # sharded: backward has summed them already
        dist.sum_gradients(model)                         # several processes: the global gradient
    params = [p for p in model.parameters() if p.requires_grad]
    norm = sharding.global_norm(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf")))
    if not math.isfinite(norm):
        opt.zero_grad(set_to_none=True)
        if nonfinite == "skip":
            sched.step()
            return float("nan")
        raise TrainingError(f"non-finite loss or gradient at {what}; lower the learning rate, set a "
                            f"grad_clip, or set guard.nonfinite=skip; the run directory keeps everything "
                            f"logged so far and its last checkpoint")
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return norm


class Session:
    """What a run holds while it trains: model, tokenizer, data, optimisers, RNGs, run dir."""

    def __init__(self, cfg: Config, run: RunDir):
        self.cfg, self.run = cfg, run
        self.device = device_from(cfg.device)
        dist.init_from_env(self.device)
        self.rngs = make_rngs(cfg.seed)
        rank = dist.world()[0]
        if rank:                                  # each process samples its own completions
            self.rngs.sample.manual_seed(self.rngs.sample.initial_seed() + 7919 * rank)
        self.train_problems = load_problems(cfg.task, "train")
        self.eval_sets = [(cfg.task, load_problems(cfg.task, "test", cfg.eval.n))] + \
            [(t, load_problems(t, "test", cfg.eval.n)) for t in cfg.eval.extra_tasks]
        self.model, self.tokenizer = load_policy(cfg.model, seed=self.rngs.init_seed, device=self.device)
        if cfg.dist.strategy == "fsdp":
            self.model = shard(self.model)      # one process: unchanged
        self.stream = ProblemStream(self.train_problems, self.rngs.data)
        self.optimizers: dict[str, tuple] = {}
        self.step = 0
        self.kind_steps: dict[str, int] = {}   # steps done per kind (sft, rl): schedules read these
        self.algo = Algo.from_config(cfg.rl)
        hy, ro = cfg.rl.hybrid, cfg.rl.rollout
        self.buffer = SFTBuffer(order=hy.buffer_order)
        self.buffer_trigger = hy.buffer_trigger or ro.prompts_per_step
        self.expert_stream = ProblemStream(self.train_problems, self.rngs.expert)
        self.stream_size = hy.stream_size or max(1, ro.prompts_per_step * ro.group_size // 4)
        self.last_groups = None
        self.pending_optim: dict[str, dict] = {}   # optimiser states loaded from a checkpoint
        self.skipped, self.skipped_run = 0, 0      # non-finite updates skipped: total, in a row
        self.entropy_ctl = entropy.make_controller(cfg.rl.algo.entropy.mode, cfg.rl.algo.entropy.kwargs)
        self.ref = None                 # frozen copy of the policy as it enters RL (KL reference)
        self._vllm = None               # colocated vLLM engine (rl.rollout.engine=vllm), made on first use
        if cfg.rl.rollout.engine == "vllm" and cfg.steps_of("rl"):
            from sftrl.lm.rollout_vllm import require_vllm
            require_vllm()              # refused before any training, with what is missing
        self.needs_ref = cfg.rl.algo.kl.coef > 0 or cfg.rl.algo.kl.log

    def prompt(self, problem, template: str) -> str:
        return render_prompt(self.tokenizer, TEMPLATES[template](problem), self.cfg.model.chat_template)

    def optimizer(self, kind: str, ocfg):
        """One optimiser per step kind, its schedule spanning every step of that kind in the run."""
        if kind not in self.optimizers:
            total = self.cfg.steps_of("rl" if kind == "buffer" else kind)
            self.optimizers[kind] = make_optimizer(self.model.parameters(), ocfg, total)
            if kind in self.pending_optim:              # resuming: the saved moments and schedule
                opt, sched = self.optimizers[kind]
                saved = self.pending_optim.pop(kind)
                sharding.load_optimizer_state(self.model, opt, saved["opt"])
                sched.load_state_dict(saved["sched"])
        return self.optimizers[kind]

    def fresh_policy(self, device=None):
        """A new, unsharded policy built from the config (weights to be loaded by the caller)."""
        return load_policy(self.cfg.model, seed=self.rngs.init_seed, device=device or self.device)[0]

    def save_model(self, directory) -> None:
        """The policy as a loadable model folder (rank 0 writes; every rank must call: a sharded
        policy is gathered into an unsharded copy first)."""
        model = self.model
        if sharding.is_sharded(model):
            state = sharding.full_state_dict(model)
            if not self.run.writes:
                return
            model = self.fresh_policy(torch.device("cpu"))
            model.load_state_dict(state)
        if self.run.writes:
            save_policy(model, self.tokenizer, directory)

    def clip_and_step(self, kind: str, grad_clip: float | None) -> float:
        opt, sched = self.optimizers[kind]
        return clip_and_step(self.model, opt, sched, grad_clip, what=f"{kind} step {self.step + 1}",
                             nonfinite=self.cfg.guard.nonfinite)

    def vllm(self):
        if self._vllm is None:
            from sftrl.lm.rollout_vllm import VLLMSampler
            self._vllm = VLLMSampler(self.model, self.tokenizer, gpu_memory_utilization=self.cfg.rl.rollout.vllm_gpu_memory,
                                     seed=self.cfg.seed)
        return self._vllm

    def precision(self):
        """Context of model.autocast: every forward of the run (training, reference, rollouts,
        evaluation) runs inside it."""
        return autocast(self.cfg.model, self.device)

    def run_rl_step(self) -> dict:
        if self.needs_ref and self.ref is None:
            self.ref = frozen_reference(self.model, self.fresh_policy)
        with self.precision():
            return rl_step(self)

    def demos(self, problems: list):
        """Prompt + demonstration rows of `problems` (a Rollout-shaped batch)."""
        return demo_batch(self.tokenizer, [self.prompt(p, self.cfg.task.template) for p in problems],
                          [completion_target(p) for p in problems], max_len=self.cfg.sft.max_len,
                          device=self.device)

    def run_buffer_step(self, problems: list) -> dict:
        """ReLIFT's separate SFT step on popped buffer problems: its own AdamW (constant rate), one
        optimiser step per `buffer_batch` demonstrations, `buffer_epochs` passes, entropy bonus."""
        hy, rl = self.cfg.rl.hybrid, self.cfg.rl
        ocfg = rl.optim.model_copy(update={"lr": hy.buffer_lr or rl.optim.lr, "warmup_steps": 0,
                                           "schedule": "constant"})
        opt, sched = self.optimizer("buffer", ocfg)
        size, losses = hy.buffer_batch or len(problems), []
        for _ in range(hy.buffer_epochs):       # called from rl_step: already under self.precision()
            for i in range(0, len(problems), size):
                out = sft_step(self.model, opt, sched, self.demos(problems[i:i + size]),
                               micro_batch_size=rl.micro_batch_size, grad_clip=ocfg.grad_clip,
                               entropy_coef=hy.entropy_coef, nonfinite=self.cfg.guard.nonfinite,
                               what=f"the buffer SFT step of rl step {self.step + 1}")
                losses.append(out["loss/sft"])
        return {"loss/sft_buffer": sum(losses) / len(losses), "sft/buffer_steps": float(len(losses)),
                "sft/buffer_problems": float(len(problems))}

    def run_sft_step(self) -> dict:
        cfg = self.cfg
        problems = dist.shard(self.stream.next(cfg.sft.batch_size))
        batch = self.demos(problems)
        opt, sched = self.optimizer("sft", cfg.sft.optim)
        lr = sched.get_last_lr()[0]
        with self.precision():
            out = sft_step(self.model, opt, sched, batch, micro_batch_size=cfg.sft.micro_batch_size,
                           grad_clip=cfg.sft.optim.grad_clip, nonfinite=cfg.guard.nonfinite,
                           what=f"sft step {self.step + 1}")
        return {**out, "optim/lr": lr}

    def evaluate_all(self) -> tuple[dict, list[dict]]:
        """Metrics and records of every evaluation task, on the process that writes the run; the
        others return ({}, []). Every process must call it: a sharded policy is gathered first."""
        metrics, records = {}, []
        with sharding.full_weights(self.model):
            if self.run.writes:
                metrics, records = self._evaluate_tasks()
        return metrics, records

    def _evaluate_tasks(self) -> tuple[dict, list[dict]]:
        metrics, records = {}, []
        for task, problems in self.eval_sets:
            prompts = [self.prompt(p, task.template) for p in problems]
            with self.precision():
                m, r = evaluate(self.model, self.tokenizer, problems, prompts, key=task.key,
                                ecfg=self.cfg.eval, gen=self.rngs.eval)
            metrics.update(m)
            records.extend(r)
        return metrics, records


def quiet_libraries() -> None:
    """Hide third-party progress bars (weights loading/saving): our own display is the progress."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def fit(cfg: Config, out_dir, argv: list[str] | None = None) -> dict:
    """Run the phases of `cfg` into `out_dir`; return final.json's content.

    An unfinished run directory with the same config and a checkpoint is resumed exactly from its
    newest checkpoint (lines logged after it are dropped and recomputed); one without a
    checkpoint starts over."""
    quiet_libraries()
    torch.set_num_threads(cfg.threads or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=True)
    run = RunDir(out_dir) if dist.is_main_env() else QuietRunDir(out_dir)   # one writer
    text = to_yaml(cfg)
    ckpt = checkpoints.latest(run.path)
    if ckpt is not None and run.file("config.yaml").is_file() and run.file("config.yaml").read_text() != text:
        raise ValueError(f"{run.path} holds an unfinished run with a different config; rerun its own "
                         f"config to resume it, or choose another --out")
    if ckpt is None:
        run.start(text, seed=cfg.seed, argv=argv)
        for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
            if run.writes:
                run.file(name).unlink(missing_ok=True)       # left by a run killed before any checkpoint
    s = Session(cfg, run)
    if ckpt is not None:
        state = checkpoints.load(ckpt)
        restore(s, state)
        run.resume(argv=argv, step=s.step)
        for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
            if run.writes:
                truncate_jsonl(run.file(name), s.step)
    steps = {"sft": s.run_sft_step, "rl": s.run_rl_step}
    progress = Progress(cfg.total_steps, mode=cfg.log.progress if run.writes else "off", label=cfg.name)
    t_start = time.perf_counter()
    done = 0
    for phase in cfg.phases:
        for i in range(phase.steps):
            done += 1
            if done <= s.step:                                # finished before the checkpoint
                continue
            kind = phase.kind_at(i)
            t0 = time.perf_counter()
            metrics = steps[kind]()
            s.step += 1
            s.kind_steps[kind] = s.kind_steps.get(kind, 0) + 1
            _guard(s, metrics)
            metrics.update({"time/step": time.perf_counter() - t0,
                            "time/elapsed": time.perf_counter() - t_start})
            if s.step % cfg.log.every == 0 or s.step == cfg.total_steps:
                run.log("metrics.jsonl", {"step": s.step, "phase": kind, **metrics})
            if kind == "rl" and cfg.log.samples_every and s.kind_steps["rl"] % cfg.log.samples_every == 0:
                for record in rollout_records(s.last_groups, cfg.log.samples_n):
                    run.log("samples.jsonl", {"step": s.step, "kind": "rollout", **record})
            if cfg.eval.every and s.step % cfg.eval.every == 0 and s.step < cfg.total_steps:
                ev, records = s.evaluate_all()                # ({}, []) on the processes that do not write
                run.log("eval.jsonl", {"step": s.step, **ev})
                for r in records:
                    run.log("samples.jsonl", {"step": s.step, "kind": "eval", **r})
                metrics.update(ev)
            if cfg.checkpoint.every and s.step % cfg.checkpoint.every == 0 and s.step < cfg.total_steps:
                state = state_of(s)                           # every process: sharded state is gathered
                if run.writes:
                    checkpoints.save(run.path, s.step, state, keep=cfg.checkpoint.keep)
            progress.update(s.step, metrics)
    final, records = s.evaluate_all()
    s.save_model(run.file("model"))
    if not run.writes:                                    # other processes: training only
        return {}
    run.log("eval.jsonl", {"step": s.step, **final})
    for r in records:
        run.log("samples.jsonl", {"step": s.step, "kind": "eval", **r})
    final = {"step": s.step, "wall_time_s": time.perf_counter() - t_start,
             "peak_rss_mb": peak_rss_mb(), **final}
    if cfg.guard.nonfinite == "skip":
        final["guard/skipped_steps"] = s.skipped
    progress.close(final)
    run.finish(final)
    return final


def _guard(s: Session, metrics: dict) -> None:
    """Count updates skipped for a non-finite gradient; stop after too many in a row."""
    if s.cfg.guard.nonfinite != "skip":
        return
    if math.isfinite(metrics.get("grad/norm", 0.0)):
        s.skipped_run = 0
    else:
        s.skipped += 1
        s.skipped_run += 1
        if s.skipped_run > s.cfg.guard.max_skips:
            raise TrainingError(f"{s.skipped_run} updates in a row had a non-finite loss or gradient "
                                f"(step {s.step}); lower the learning rate or check the data; the last "
                                f"checkpoint is intact")
    metrics["guard/skipped_steps"] = float(s.skipped)


def state_of(s: Session) -> dict:
    """Everything an exact resume needs: weights, optimisers and schedules, every RNG stream,
    data positions, controllers, the SFT buffer and step counters."""
    return {"step": s.step, "kind_steps": dict(s.kind_steps),
            "model": sharding.full_state_dict(s.model),
            "ref": sharding.full_state_dict(s.ref) if isinstance(s.ref, torch.nn.Module) else None,
            "optimizers": {k: {"opt": sharding.optimizer_state(s.model, o), "sched": sch.state_dict()}
                           for k, (o, sch) in s.optimizers.items()},
            "rngs": {"sample": s.rngs.sample.get_state(), "eval": s.rngs.eval.get_state(),
                     "torch": torch.get_rng_state(),
                     # each process samples its own completions: every rank's streams, in rank order
                     "by_rank": dist.gather_objects([(s.rngs.sample.get_state(), torch.get_rng_state())])},
            "stream": s.stream.state(), "expert_stream": s.expert_stream.state(),
            "entropy": entropy.controller_state(s.entropy_ctl), "buffer": s.buffer.state(),
            "skipped": (s.skipped, s.skipped_run)}


def restore(s: Session, state: dict) -> None:
    """Inverse of `state_of` on a freshly built session of the same config (every process loads
    the full state; a sharded model keeps its own shards)."""
    s.step, s.kind_steps = state["step"], dict(state["kind_steps"])
    sharding.load_full_state_dict(s.model, state["model"])
    if state["ref"] is not None:
        s.ref = frozen_reference(s.model, s.fresh_policy)
        sharding.load_full_state_dict(s.ref, state["ref"])
    elif is_lora(s.model) and s.kind_steps.get("rl"):
        s.ref = AdaptersOff(s.model)
    s.pending_optim = dict(state["optimizers"])
    rank, size = dist.world()
    by_rank = state["rngs"].get("by_rank")             # absent in checkpoints of older versions
    sample, torch_rng = by_rank[rank] if by_rank and len(by_rank) == size else \
        (state["rngs"]["sample"], state["rngs"]["torch"])
    s.rngs.sample.set_state(sample)
    s.rngs.eval.set_state(state["rngs"]["eval"])
    torch.set_rng_state(torch_rng)
    s.stream.load_state(state["stream"])
    s.expert_stream.load_state(state["expert_stream"])
    s.entropy_ctl = entropy.controller_from_state(state["entropy"])
    s.buffer.load_state(state["buffer"], {p.id: p for p in s.train_problems})
    s.skipped, s.skipped_run = state["skipped"]


def frozen_reference(model, fresh=None):
    """The KL reference: a frozen copy of the policy as it enters RL, or for LoRA the same weights
    with adapters disabled (adapters are zero at the start, so that is the initial policy).
    A sharded policy gets a sharded copy: `fresh()` (a new unsharded policy) is sharded the same
    way and each rank copies its own shards, so no rank ever holds the full reference."""
    if is_lora(model):
        return AdaptersOff(model)
    if sharding.is_sharded(model):
        ref = shard(fresh().eval().requires_grad_(False))
        ref.load_state_dict(model.state_dict())         # DTensor shards into the same layout: local copies
        return ref
    return copy.deepcopy(model).eval().requires_grad_(False)


def rollout_records(g, n: int) -> list[dict]:
    """The first `n` rows of an RL step's groups as samples.jsonl records (whole groups first),
    so answer and length distributions, and reward hacking, can be read from the run."""
    if g is None:
        return []
    G = g.sc.r.shape[1] if g.sc.r.ndim == 2 else 1
    out = []
    for row in range(min(n, len(g.ro.texts))):
        p = g.problems[row // G]
        text = g.ro.texts[row]
        out.append({"problem_id": p.id, "group": row // G, "gold": p.answer, "completion": text,
                    "answer": verify.extract(text, "strict"), "reward": float(g.sc.r.view(-1)[row]),
                    "correct": bool(g.sc.acc.view(-1)[row] > 0), "length": int(g.ro.lengths[row]),
                    "offpolicy": bool(g.off[row])})
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (Linux ru_maxrss is in KiB)."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
