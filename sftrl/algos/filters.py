"""Token filters (ALGORITHMS.md §7): which tokens keep their policy-gradient loss, and which get
KL-Cov's penalty.

Owns: `TOKEN_FILTERS`. Filters read the rollout's own log-probs and entropies, computed once per
step; with one update per rollout that is identical to computing them per mini-batch as verl does.
"""

from __future__ import annotations

import math

import torch

from sftrl.registry import Registry

TOKEN_FILTERS = Registry("token filter")   # (old_logp, adv, ent, mask, *, gen) -> (keep, penalise)


def _token_cov(old_logp, adv, mask) -> torch.Tensor:
    """Cov_i = (logp_i - mean logp)(A_i - mean A) over valid tokens (Entropy Mechanism Eq. 10)."""
    n = mask.sum().clamp(min=1.0)
    a = adv.expand_as(old_logp)                                                 # [N, T]
    mean_lp = (old_logp * mask).sum() / n
    mean_a = (a * mask).sum() / n
    return (old_logp - mean_lp) * (a - mean_a) * mask                           # [N, T]


@TOKEN_FILTERS.register("none")
def no_filter(old_logp, adv, ent, mask, *, gen=None):
    """Every token keeps its loss."""
    return torch.ones_like(mask), torch.zeros_like(mask)


@TOKEN_FILTERS.register("top_entropy")
def top_entropy(old_logp, adv, ent, mask, *, gen=None, rho: float = 0.2):
    """Keep the policy gradient only on tokens at or above the batch (1 - rho) entropy quantile
    ("Beyond the 80/20 rule": forking tokens)."""
    valid = ent[mask > 0]
    if valid.numel() == 0:
        return torch.ones_like(mask), torch.zeros_like(mask)
    threshold = torch.quantile(valid.float(), 1.0 - rho)
    return (ent >= threshold).float() * mask, torch.zeros_like(mask)


@TOKEN_FILTERS.register("clip_cov")
def clip_cov(old_logp, adv, ent, mask, *, gen=None, ratio: float = 2e-4, cov_low: float = 1.0,
             cov_high: float = 5.0):
    """Clip-Cov: among tokens with cov_low < Cov < cov_high, detach floor(ratio * N_valid) chosen
    at random (with `gen`)."""
    cov = _token_cov(old_logp, adv, mask)                                       # [N, T]
    candidates = ((cov > cov_low) & (cov < cov_high) & (mask > 0)).flatten().nonzero().squeeze(1)
    k = min(int(ratio * float(mask.sum())), candidates.numel())
    keep = torch.ones_like(mask).flatten()
    if k > 0:
        pick = candidates[torch.randperm(candidates.numel(), generator=gen)[:k]]
        keep[pick] = 0.0
    return keep.view_as(mask), torch.zeros_like(mask)


@TOKEN_FILTERS.register("kl_cov")
def kl_cov(old_logp, adv, ent, mask, *, gen=None, k: float = 2e-4, coef: float = 1.0):
    """KL-Cov: the top-k fraction of tokens by Cov get coef * |logp - old_logp| added to their loss
    (k is a fraction, as in verl's port; the official scripts give it in percent)."""
    cov = _token_cov(old_logp, adv, mask).masked_fill(mask == 0, -math.inf).flatten()
    n = max(1, int(k * float(mask.sum()))) if k > 0 else 0
    penalise = torch.zeros_like(cov)
    if n:
        penalise[cov.topk(n).indices] = coef
    return torch.ones_like(mask), penalise.view_as(mask) * mask
