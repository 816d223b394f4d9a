"""The reward stage of an RL step: weighted reward functions, truncation rule, overlong shaping.

Owns: `REWARDS` (reward functions by name, or a custom 'module:function') and `score_rollout`,
which turns completions into the scalar reward matrix r[P, G] plus the raw
accuracy acc[P, G] that routing and dynamic sampling read (never the shaped reward: DAPO filters on
accuracy, or the length penalty would make all-wrong groups look informative).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftrl.algos import policy
from sftrl.batch import group_rows
from sftrl.data import verify
from sftrl.registry import Registry, import_object


REWARDS = Registry("reward")
"""`fn(completions: list[str], problems: list[Problem], **kw) -> list[float]`."""


@REWARDS.register("correctness")
def correctness(completions, problems, *, correct: float = 1.0, wrong: float = 0.0,
                mode: str = "strict", timeout: float = 2.0) -> list[float]:
    """`correct` when the extracted answer equals the reference, else `wrong` (DAPO uses +-1);
    `timeout` bounds each symbolic check in seconds (an answer that overruns it is wrong)."""
    return [correct if verify.is_correct(c, p.answer, mode, timeout=timeout) else wrong
            for c, p in zip(completions, problems)]


@REWARDS.register("format")
def format_reward(completions, problems, *, value: float = 1.0) -> list[float]:
    """`value` when a strict answer (#### N or \\boxed{}) can be extracted."""
    return [value if verify.extract_strict(c) is not None else 0.0 for c in completions]


def resolve_reward(name: str):
    """A registered reward, or a custom 'module:function'."""
    if ":" in name:
        fn = import_object(name)
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    return REWARDS[name]


@dataclass
class Scored:
    r: torch.Tensor          # [P, G] scalar reward used for advantages
    acc: torch.Tensor        # [P, G] 1.0 where the strict answer is correct
    keep: torch.Tensor       # [N] 1.0 unless the truncation rule masks the row out of the loss
    parts: dict[str, float]  # per-reward means for logging

    def select(self, groups: torch.Tensor, G: int) -> "Scored":
        """Only the given groups (indices into P), rows kept prompt-major."""
        rows = group_rows(groups, G)
        return Scored(r=self.r[groups], acc=self.acc[groups], keep=self.keep[rows], parts=self.parts)

    @staticmethod
    def concat(parts: list["Scored"]) -> "Scored":
        return Scored(r=torch.cat([p.r for p in parts]), acc=torch.cat([p.acc for p in parts]),
                      keep=torch.cat([p.keep for p in parts]), parts=parts[-1].parts)


def score_rollout(texts: list[str], problems: list, lengths: torch.Tensor, truncated: torch.Tensor,
                  rcfg, *, group_size: int, max_new_tokens: int) -> Scored:
    """Rewards for N = P*G completions of `problems` (length P, prompt-major rows)."""
    N, G = len(texts), group_size
    P = N // G
    expanded = [p for p in problems for _ in range(G)]
    total = torch.zeros(N)
    parts: dict[str, float] = {}
    for spec in rcfg.functions:
        values = torch.tensor(resolve_reward(spec.name)(texts, expanded, **spec.kwargs),
                              dtype=torch.float32)                              # [N]
        if values.shape != (N,) or not torch.isfinite(values).all():
            raise ValueError(f"reward {spec.name!r} returned {tuple(values.shape)} values with "
                             f"non-finite entries or the wrong count; it must return {N} finite floats")
        parts[f"reward/{spec.name}/mean"] = float(values.mean())
        parts[f"reward/{spec.name}/std"] = float(values.std()) if N > 1 else 0.0
        total += spec.weight * values
    acc = torch.tensor([float(verify.is_correct(t, p.answer, "strict")) for t, p in zip(texts, expanded)])
    cut = truncated.cpu()
    if rcfg.truncated == "zero":                                                # Dr. GRPO
        total = torch.where(cut, torch.zeros_like(total), total)
    keep = (~cut).float() if rcfg.truncated == "mask" else torch.ones(N)        # DAPO overlong filtering
    if rcfg.overlong_cache:
        penalty = policy.overlong_penalty(lengths.cpu().float(), max_len=max_new_tokens,
                                         cache=rcfg.overlong_cache, factor=rcfg.overlong_factor)
        parts["reward/overlong/mean"] = float(penalty.mean())
        total = total + penalty
    return Scored(r=total.view(P, G), acc=acc.view(P, G), keep=keep, parts=parts)

