"""Stages 1-3 of an RL step: rollout, reward, SFT routing and dynamic sampling, then the step's
token batch.

Owns: `Groups` (what a step trains on), `draw` and `StepBatch` (RL rows followed by demonstration
rows, with the masks every later stage reads). Routing reads the samples' accuracy *before* any
group is dropped, so the all-fail groups SFT needs survive dynamic sampling (DAPO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftrl import batch as rows_of
from sftrl.algos import hybrid
from sftrl.batch import Rollout
from sftrl.data.rewards import Scored, score_rollout
from sftrl.parallel import dist
from sftrl.train import compute


@dataclass
class Groups:
    """What an RL step trains on: rows of groups kept for the RL loss, and the routed problems."""

    ro: Rollout                     # N = P' x G rows, prompt-major
    sc: Scored                      # r, acc [P', G]; keep [N]
    off: torch.Tensor               # [N] bool: row is a demonstration placed in the group (LUFFY)
    problems: list                  # P' problems of the RL groups
    routed: list                    # problems routed to SFT, from every rollout drawn this step
    metrics: dict
    adv: torch.Tensor | None = None     # [N, 1] or [N, T]: the advantages the step trained with


def group_size(rcfg, algo) -> int:
    """Rows per group: rollout.group_size, less the slot a demonstration of the SFT term takes."""
    return rcfg.rollout.group_size - algo.sft_slots


def _rollout(p, problems: list, rcfg, algo, gen) -> tuple:
    """Rollout of G samples per problem (G-1 and the demonstration with off-policy groups) and scores."""
    G = group_size(rcfg, algo)
    ro = p.sample(p.model, [p.prompt(pb) for pb in problems], G - algo.offpolicy, gen)
    off = torch.zeros(len(problems) * G, dtype=torch.bool)                      # [N]
    if algo.offpolicy:
        ro, off = hybrid.with_demos(ro, p.demos(problems), G, p.pad_id)
    sc = score_rollout(ro.texts, problems, ro.lengths, ro.truncated, rcfg.reward, group_size=G,
                       max_new_tokens=rcfg.rollout.max_new_tokens)
    return ro, off, sc


def draw(p, stream, rcfg, algo, gen) -> Groups:
    """This rank's block of the next P problems, rolled out, scored and routed; with dynamic
    sampling, more rollouts until P groups have mixed accuracy (at most `max_gen_batches`),
    truncated to exactly P."""
    G, P_all = group_size(rcfg, algo), rcfg.rollout.prompts_per_step
    problems = dist.shard(stream.next(P_all))
    P = len(problems)
    parts, routed, drawn, batches, cost = [], [], 0, 0, {"compute/prompt_tokens": 0.0, "compute/generated_tokens": 0.0}
    while True:
        batches += 1
        ro, off, sc = _rollout(p, problems, rcfg, algo, gen)
        cost["compute/prompt_tokens"] += compute.prompt_tokens(ro)
        cost["compute/generated_tokens"] += float(ro.completion_mask[~off].sum())
        route = algo.route(sc.acc[:, ~off[:G]])                                 # [P] bool, samples only
        routed += [pb for pb, r in zip(problems, route.tolist()) if r]
        drawn += len(problems)
        keep = ~route if algo.replace_group else torch.ones_like(route)        # [P] bool
        if algo.dynamic_sampling:
            keep &= sc.acc.max(1).values != sc.acc.min(1).values
        parts.append((ro, off, sc, problems, keep.nonzero().squeeze(1)))
        if not algo.dynamic_sampling or sum(len(x[4]) for x in parts) >= P or batches >= algo.max_gen_batches:
            break
        problems = dist.shard(stream.next(P_all))       # every rank its own block of the next batch
    if algo.dynamic_sampling and not any(len(x[4]) for x in parts):   # nothing informative: keep the last batch
        ro, off, sc, pb, _ = parts[-1]
        keep = ~route if algo.replace_group else torch.ones_like(route)
        parts = [(ro, off, sc, pb, keep.nonzero().squeeze(1))]
    ros, offs, scs, pbs = [], [], [], []
    for ro, off, sc, pb, groups in parts:
        rows = rows_of.group_rows(groups, G)
        ros.append(rows_of.select_rows(ro, rows))
        offs.append(off[rows])
        scs.append(sc.select(groups, G))
        pbs.extend(pb[i] for i in groups.tolist())
    n = min(P, len(pbs)) if algo.dynamic_sampling else len(pbs)
    rows = torch.arange(n * G)
    metrics = {"sft/routed_frac": len(routed) / drawn, **cost}
    if algo.dynamic_sampling:
        metrics.update({"groups/gen_batches": float(batches), "groups/kept": float(n)})
    return Groups(ro=rows_of.select_rows(rows_of.concat(ros, p.pad_id), rows),
                  sc=scs[0].concat(scs).select(torch.arange(n), G), off=torch.cat(offs)[rows],
                  problems=pbs[:n], routed=routed, metrics=metrics)


@dataclass(frozen=True)
class StepBatch:
    """The step's rows: the n_rl RL rows of `Groups`, then one row per demonstration of the SFT
    term. Masks are float; everything later indexes rows of these tensors."""

    ro: Rollout                     # [N] rows
    n_rl: int
    mask: torch.Tensor              # [N, T] tokens of the RL loss (RL rows, truncation rule applied)
    sft_mask: torch.Tensor          # [N, T] tokens of the SFT term (demonstration rows)
    off: torch.Tensor               # [N] bool: a demonstration inside a group (LUFFY)

    @classmethod
    def build(cls, g: Groups, demos: Rollout | None, pad_id: int) -> "StepBatch":
        ro = rows_of.concat([g.ro, demos], pad_id) if demos is not None else g.ro
        n_rl, N = g.ro.prompt_ids.shape[0], ro.prompt_ids.shape[0]
        is_rl = torch.arange(N) < n_rl                                          # [N]
        mask = ro.completion_mask * is_rl[:, None]                              # [N, T]
        mask[:n_rl] *= g.sc.keep[:, None].to(mask)
        off = torch.cat([g.off, torch.zeros(N - n_rl, dtype=torch.bool)])      # [N]
        return cls(ro=ro, n_rl=n_rl, mask=mask, sft_mask=ro.completion_mask * ~is_rl[:, None], off=off)

    @property
    def rl_rows(self) -> torch.Tensor:
        return torch.arange(self.n_rl)

    @property
    def sft_rows(self) -> torch.Tensor:
        return torch.arange(self.n_rl, self.mask.shape[0])

    def mini_batches(self, k: int, epochs: int = 1, gen: torch.Generator | None = None) -> list[tuple]:
        """(RL rows, SFT rows) of each optimiser step of `epochs` passes with `k` steps each: RL rows
        split in order (whole groups when G divides), or in a fresh permutation drawn from `gen`
        each pass (oat), SFT rows spread evenly over a pass's steps."""
        out = []
        for _ in range(epochs):
            order = self.rl_rows if gen is None else self.rl_rows[torch.randperm(self.n_rl, generator=gen)]
            rl = list(order.chunk(k)) if self.n_rl else [order]
            out += list(zip(rl, self.sft_rows.tensor_split(len(rl))))
        return out
