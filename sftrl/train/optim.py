"""Optimiser and learning-rate schedule built from an `OptimConfig`.

Owns: AdamW construction and the warm-up + decay multiplier. Each step kind (sft, rl) gets its
own optimiser whose schedule spans all steps of that kind in the run.
"""

from __future__ import annotations

import math

import torch


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
