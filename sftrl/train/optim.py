"""Optimisers: AdamW and its learning-rate schedule from an `OptimConfig`, one per step kind, and
the update that clips, steps and guards against non-finite gradients.

Owns: `lr_multiplier`, `make_optimizer`, `Optimizers` (one AdamW per step kind, made on first use,
its schedule spanning every step of that kind in the run, restored from a checkpoint), `Update`
(what a step calls once per optimiser step) and `clip_and_step`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch

from sftrl.parallel import dist, sharding


class TrainingError(RuntimeError):
    """A run stopped on purpose (non-finite loss, ...); the message says why and what to change."""


def lr_multiplier(step: int, *, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Factor on the peak lr at optimiser step `step` (0-based): linear warm-up, then decay."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    shape = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def make_optimizer(params, ocfg, total_steps: int):
    """AdamW and a LambdaLR scheduler following `ocfg` over `total_steps` steps."""
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=ocfg.lr, betas=tuple(ocfg.betas),
                            eps=ocfg.eps, weight_decay=ocfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_multiplier(
        s, total=total_steps, warmup=ocfg.warmup_steps, schedule=ocfg.schedule, min_ratio=ocfg.min_lr_ratio))
    return opt, sched


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


@dataclass(frozen=True)
class Update:
    """One optimiser's update as a step sees it: `update(model)` clips the gradient, steps the
    optimiser and its schedule, and returns the gradient norm; `what` names the step in errors."""

    opt: torch.optim.Optimizer
    sched: object
    grad_clip: float | None
    what: str
    nonfinite: str = "stop"

    @property
    def lr(self) -> float:
        """The learning rate the next optimiser step uses."""
        return self.sched.get_last_lr()[0]

    def __call__(self, model) -> float:
        return clip_and_step(model, self.opt, self.sched, self.grad_clip, what=self.what, nonfinite=self.nonfinite)


@dataclass
class Optimizers:
    """One AdamW per step kind (sft, rl, buffer), made on first use; each schedule spans
    `steps_of(kind)` steps. `pending` holds states loaded from a checkpoint until then."""

    model: torch.nn.Module
    steps_of: Callable[[str], int]
    made: dict = field(default_factory=dict)        # kind -> (opt, sched)
    pending: dict = field(default_factory=dict)     # kind -> {"opt": ..., "sched": ...}

    def get(self, kind: str, ocfg) -> tuple:
        if kind not in self.made:
            self.made[kind] = make_optimizer(self.model.parameters(), ocfg, self.steps_of(kind))
            if kind in self.pending:                     # resuming: the saved moments and schedule
                opt, sched = self.made[kind]
                saved = self.pending.pop(kind)
                sharding.load_optimizer_state(self.model, opt, saved["opt"])
                sched.load_state_dict(saved["sched"])
        return self.made[kind]

    def update(self, kind: str, ocfg, *, what: str, nonfinite: str = "stop") -> Update:
        opt, sched = self.get(kind, ocfg)
        return Update(opt, sched, ocfg.grad_clip, what, nonfinite)

    def state(self) -> dict:
        """Every optimiser's state (gathered when the model is sharded; every rank must call)."""
        return {k: {"opt": sharding.optimizer_state(self.model, o), "sched": sch.state_dict()}
                for k, (o, sch) in self.made.items()}
