"""Token filters (ALGORITHMS.md §7): which tokens keep their policy-gradient loss, which keep their
entropy bonus, and which get KL-Cov's penalty.

Owns: `TOKEN_FILTERS` and `Filtered`. A filter runs once per optimiser mini-batch, on the whole
mini-batch (never per micro-batch, so micro-batching cannot change which tokens it picks), from
the current policy's log-probs and entropies at the mini-batch's start (`logp`, `ent`, detached)
and the behaviour log-probs (`old_logp`). The sources compute the same statistics per micro-batch
of one GPU (Entropy-Mechanism-of-RL, verl) or per micro-batch gathered over processes (TRL).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from sftrl.registry import Registry

TOKEN_FILTERS = Registry("token filter")   # (logp, old_logp, adv, ent, mask, *, gen, clip) -> Filtered


class Filtered(NamedTuple):
    """Per-token multipliers [n, T] of one mini-batch."""

    keep: torch.Tensor          # 1: the token keeps its policy-gradient loss
    keep_entropy: torch.Tensor  # 1: the token counts in the entropy bonus
    penalise: torch.Tensor      # KL-Cov's coefficient on |logp - old_logp|


def _nothing(mask: torch.Tensor) -> Filtered:
    return Filtered(torch.ones_like(mask), torch.ones_like(mask), torch.zeros_like(mask))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / (mask.sum() + 1e-8)                               # verl_F.masked_mean


def token_cov(logp, adv, mask) -> torch.Tensor:
    """(A - mean A)(logp - mean logp) per token, means over the valid tokens (Entropy Mechanism
    Eq. 10, in the per-token form its code ranks by; no 1/N)."""
    a = adv.expand_as(logp)                                                     # [n, T]
    return (a - _masked_mean(a, mask)) * (logp - _masked_mean(logp, mask))      # [n, T]


@TOKEN_FILTERS.register("none")
def no_filter(logp, old_logp, adv, ent, mask, *, gen=None, clip=None) -> Filtered:
    """Every token keeps its loss and its entropy bonus."""
    return _nothing(mask)


@TOKEN_FILTERS.register("top_entropy")
def top_entropy(logp, old_logp, adv, ent, mask, *, gen=None, clip=None, rho: float = 0.2) -> Filtered:
    """Keep the policy gradient, and the entropy bonus, only on tokens at or above the (1 - rho)
    quantile of the mini-batch's valid-token entropies ("Beyond the 80/20 rule"; TRL
    top_entropy_quantile multiplies the policy loss and restricts the bonus to these tokens; the
    KL term stays on every token)."""
    valid = ent[mask > 0]
    if valid.numel() == 0:
        return _nothing(mask)
    threshold = torch.quantile(valid.float(), 1.0 - rho)                        # linear, as torch's default
    keep = (ent * mask >= threshold).float() * mask                             # [n, T]
    return Filtered(keep, keep, torch.zeros_like(mask))


@TOKEN_FILTERS.register("clip_cov")
def clip_cov(logp, old_logp, adv, ent, mask, *, gen=None, clip=None, ratio: float = 2e-4,
             cov_low: float = 1.0, cov_high: float = 5.0) -> Filtered:
    """Clip-Cov (Entropy-Mechanism-of-RL compute_policy_loss_clip_cov): among valid tokens not
    already clipped by PPO with cov_low < Cov < cov_high, max(floor(ratio * N_valid), 1) chosen
    uniformly at random (with `gen`) lose their policy-gradient loss; they still count in the
    normaliser. `clip` is the surrogate's (eps_low, eps_high)."""
    a = adv.expand_as(logp)                                                     # [n, T]
    cov = token_cov(logp, adv, mask)                                            # [n, T]
    eligible = (mask > 0) & (cov > cov_low) & (cov < cov_high)
    if clip is not None:                                                        # PPO's own clip wins
        r = torch.exp(logp - old_logp)
        eligible &= ~(-a * r.clamp(1 - clip[0], 1 + clip[1]) > -a * r)
    candidates = eligible.flatten().nonzero().squeeze(1)
    k = min(max(int(ratio * float(mask.sum())), 1), candidates.numel())
    keep = torch.ones_like(mask).flatten()
    if k > 0:
        keep[candidates[torch.randperm(candidates.numel(), generator=gen)[:k]]] = 0.0
    return Filtered(keep.view_as(mask), torch.ones_like(mask), torch.zeros_like(mask))


@TOKEN_FILTERS.register("kl_cov")
def kl_cov(logp, old_logp, adv, ent, mask, *, gen=None, clip=None, k: float = 2e-3, coef: float = 1.0) -> Filtered:
    """KL-Cov (Entropy-Mechanism-of-RL compute_policy_loss_kl_cov, verl's port): the
    max(1, floor(k * N_valid)) valid tokens with the largest Cov get coef * |logp - old_logp|
    added to their loss. k is a fraction as in verl (the original gives it in percent: 0.2 there is
    0.002 here, the 7B recipe); the recipes pair it with the unclipped -A r (surrogate no_clip) and
    several mini-batches per rollout, as the penalty has no gradient before the policy moves."""
    n_valid = int(mask.sum())
    if n_valid == 0:
        return _nothing(mask)
    a = adv.expand_as(logp)[mask > 0]                                           # [n_valid]
    lp = logp[mask > 0]
    cov = (a - a.mean()) * (lp - lp.mean())                                     # plain means, as the source
    top = cov.topk(max(1, int(n_valid * k))).indices
    flat = torch.zeros(n_valid, dtype=mask.dtype, device=mask.device)
    flat[top] = coef
    penalise = torch.zeros_like(mask)
    penalise[mask > 0] = flat
    return Filtered(torch.ones_like(mask), torch.ones_like(mask), penalise)
