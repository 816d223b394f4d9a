"""`Algo`: the registry functions of an RL config bound to their hyperparameters once, and every
choice the RL step would otherwise make by comparing config strings, as a field.

Owns: `Algo` and `Algo.from_config`. The step (`sftrl.train.rl_step`) reads fields; it never looks
at a name. What each preset sets is `sftrl.config.presets`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch

from sftrl.algos import filters, hybrid, policy
from sftrl.registry import bind


def float32(x: float) -> float:
    """`x` rounded to float32: lambda multiplies float32 losses, so the value logged is the one applied."""
    return float(torch.tensor(x, dtype=torch.float32))


@dataclass(frozen=True)
class Algo:
    """What an RL step computes, bound from `RLConfig` (see `from_config` for each field's source)."""

    # -- the policy-gradient objective ------------------------------------------------------------
    advantage: Callable            # r[P, G] -> adv[P, G]; token-level: (score[N], kl[N, T], mask) -> adv[N, T]
    token_advantage: bool          # advantages per token from per-token rewards (REINFORCE++), no groups
    surrogate: Callable            # (logp, old_logp, adv[N, 1], mask) -> loss[N, T]
    weighting: Callable            # mask[N, T] -> w[N, T], per optimiser mini-batch
    token_filter: Callable         # (logp, old_logp, adv, ent, mask, *, gen, clip) -> filters.Filtered
    filters: bool                  # a token filter runs (once per mini-batch)
    kl: Callable                   # (logp, ref_logp) -> kl[N, T]
    kl_in_loss: bool               # beta * KL is a loss term
    kl_in_reward: bool             # beta * KL is subtracted from the reward
    needs_ref: bool                # a frozen reference is kept (KL used, or only logged)
    needs_old_logp: bool           # the behaviour log-probs are needed before the first update
    clip_eps: tuple | None         # (eps_low, eps_high) of the surrogate; None: no clip range
    mini_batches: int              # optimiser steps per pass over the rollout
    epochs: int                    # passes over the rollout
    shuffle: bool                  # rows permuted (with the step's generator) before each pass is split
    # -- which groups are trained ------------------------------------------------------------------
    dynamic_sampling: bool         # DAPO: keep only mixed groups, draw more until P are kept
    max_gen_batches: int
    route: Callable                # acc[P, G] -> routed[P] bool
    replace_group: bool            # routed groups leave the RL loss
    offpolicy: int                 # demonstrations placed in each group (LUFFY)
    sft_slots: int                 # group slots given to the SFT term's demonstration (G - sft_slots samples)
    # -- supervision inside the step ----------------------------------------------------------------
    sft_source: Callable           # (routed, expert(k)) -> problems of this step's SFT term
    buffered: bool                 # routed problems wait in ReLIFT's buffer (`sftrl.train.relift`)
    sft_schedule: Callable | None  # t -> lambda(t); None when SFT rows carry their own weights
    sft_row_weight: Callable       # (lambda, seq_entropy[m, 1]) -> weight[m, 1]
    rl_scale: Callable             # lambda -> factor on the RL loss
    lambda_scales_rl: bool         # the RL loss depends on lambda even without SFT rows (convex)
    token_weight: Callable         # logp[m, T] -> w[m, T] of the SFT NLL (CHORD-phi)
    sft_entropy_coef: float        # entropy bonus inside the SFT term and ReLIFT's buffer step
    offpolicy_loss: Callable       # (logp, adv) -> loss of demonstration tokens in a group
    self_weight: Callable          # (adv, acc, seq_entropy) -> weight of the policy's own samples

    @classmethod
    def from_config(cls, rl) -> "Algo":
        a, h, ro = rl.algo, rl.hybrid, rl.rollout
        in_reward, adaptive = a.kl.placement == "reward", a.kl.target is not None
        token_level = a.advantage in policy.TOKEN_ADVANTAGES
        kw = a.surrogate_kwargs or {}
        clip = (kw.get("eps_low", 0.2), kw.get("eps_high", 0.2)) if {"eps_low", "eps_high"} & set(kw) else None
        if h.execution == "buffer":
            source = hybrid.SFT_SOURCES["none"]
        elif h.source == "stream":
            size = h.stream_size or max(1, ro.prompts_per_step * ro.group_size // 4)   # CHORD's 20% share
            source = partial(hybrid.SFT_SOURCES["stream"], size=size)
        else:
            source = hybrid.SFT_SOURCES["routed"]
        if h.weight in hybrid.SFT_ROW_WEIGHTS:
            row = bind(hybrid.SFT_ROW_WEIGHTS, h.weight, h.weight_kwargs)
            schedule, row_weight = None, (lambda lam, seq_entropy: row(seq_entropy))
        else:
            bound = bind(hybrid.SFT_SCHEDULES, h.weight, h.weight_kwargs)
            schedule, row_weight = (lambda t: float32(bound(t))), hybrid.schedule_weight
        advantages = policy.TOKEN_ADVANTAGES if token_level else policy.ADVANTAGES
        return cls(advantage=bind(advantages, a.advantage, a.advantage_kwargs), token_advantage=token_level,
                   surrogate=bind(policy.SURROGATES, a.surrogate, a.surrogate_kwargs),
                   weighting=bind(policy.WEIGHTINGS, a.weighting, a.weighting_kwargs),
                   token_filter=bind(filters.TOKEN_FILTERS, a.token_filter, a.token_filter_kwargs),
                   filters=a.token_filter != "none", kl=policy.KL[a.kl.estimator],
                   kl_in_loss=not in_reward and a.kl.coef > 0, kl_in_reward=in_reward and a.kl.coef > 0,
                   needs_ref=a.kl.coef > 0 or a.kl.log,
                   needs_old_logp=a.mini_batches * a.epochs > 1 or a.token_filter != "none" or
                   (in_reward and a.kl.coef > 0) or adaptive,
                   clip_eps=clip, mini_batches=a.mini_batches, epochs=a.epochs, shuffle=a.shuffle,
                   dynamic_sampling=a.dynamic_sampling, max_gen_batches=a.max_gen_batches,
                   route=bind(hybrid.ROUTES, h.route, h.route_kwargs), replace_group=h.replace_group,
                   offpolicy=h.offpolicy, sft_slots=h.sft_slots, sft_source=source, buffered=h.execution == "buffer",
                   sft_schedule=schedule, sft_row_weight=row_weight, rl_scale=hybrid.MIXES[h.mix],
                   lambda_scales_rl=h.mix == "convex",
                   token_weight=bind(hybrid.TOKEN_WEIGHTS, h.token_weight), sft_entropy_coef=h.entropy_coef,
                   offpolicy_loss=bind(hybrid.OFFPOLICY, h.offpolicy_loss, h.offpolicy_kwargs),
                   self_weight=bind(hybrid.SELF_WEIGHTS, h.self_weight, h.self_weight_kwargs))

    def sft_lambda(self, t: int) -> float:
        """lambda(t) at RL step t; 1.0 where SFT rows carry their own weights (SRFT), which then
        only the RL loss's factor under `mix=sum` could read, and that is 1 whatever lambda is."""
        return self.sft_schedule(t) if self.sft_schedule is not None else 1.0


@dataclass(frozen=True)
class Controllers:
    """The coefficients a step reads and updates: the entropy bonus and the KL coefficient beta."""

    entropy: object                 # sftrl.algos.entropy.ENTROPY
    kl: object                      # sftrl.algos.kl_control.KL_CONTROLLERS

    def update(self, entropy: float, kl: float, n: int, t: int) -> "Controllers":
        """The next controllers, from the step's entropy and its measured KL over n sequences."""
        return Controllers(self.entropy.update(entropy, t), self.kl.update(kl, n))
