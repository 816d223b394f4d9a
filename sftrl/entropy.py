"""Entropy control: coefficient controllers and token filters (ALGORITHMS.md §7).

Owns: `ENTROPY` (frozen controllers with `.coef` and a pure `.update(entropy, step)`) and
`TOKEN_FILTERS` (which tokens keep their policy-gradient loss, and which get KL-Cov's penalty).
Filters read the rollout's own log-probs and entropies, computed once per step; with one update
per rollout that is identical to computing them per mini-batch as verl does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from sftrl.registry import Registry, did_you_mean

ENTROPY = Registry("entropy controller")
TOKEN_FILTERS = Registry("token filter")   # (old_logp, adv, ent, mask, *, gen) -> (keep, penalise)


@ENTROPY.register("off")
@dataclass(frozen=True)
class Off:
    """No entropy bonus (entropy is still logged)."""

    @property
    def coef(self) -> float:
        return 0.0

    def update(self, entropy: float, step: int) -> "Off":
        return self


@ENTROPY.register("constant")
@dataclass(frozen=True)
class Constant:
    """L = L_pg - coef * H (0.001 in LUFFY/ReLIFT/HPT scripts)."""

    coef: float = 0.0

    def update(self, entropy: float, step: int) -> "Constant":
        return self


@ENTROPY.register("scheduled")
@dataclass(frozen=True)
class Scheduled:
    """Coefficient moving from `start` to `end` over `steps` RL steps, linear or cosine."""

    start: float = 1e-3
    end: float = 0.0
    steps: int = 100
    shape: str = "linear"
    t: int = 0

    def __post_init__(self):
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"entropy scheduled: shape={self.shape!r}; use 'linear' or 'cosine'")

    @property
    def coef(self) -> float:
        x = min(1.0, self.t / max(1, self.steps))
        mix = x if self.shape == "linear" else 0.5 * (1 - math.cos(math.pi * x))
        return self.start + (self.end - self.start) * mix

    def update(self, entropy: float, step: int) -> "Scheduled":
        return replace(self, t=self.t + 1)


@ENTROPY.register("adaptive")
@dataclass(frozen=True)
class Adaptive:
    """Skywork-OR1 EntController: alpha += delta while entropy < target, else -= delta, clipped to
    [min_coef, max_coef]; the bonus applies only while the last measured entropy is below target."""

    alpha: float = 0.0
    target: float = 0.2
    delta: float = 1e-4
    max_coef: float = 5e-3
    min_coef: float = 0.0
    last: float = math.inf

    @property
    def coef(self) -> float:
        return self.alpha if self.last < self.target else 0.0

    def update(self, entropy: float, step: int) -> "Adaptive":
        step_ = self.delta if entropy < self.target else -self.delta
        alpha = min(max(self.alpha + step_, self.min_coef), self.max_coef)
        return replace(self, alpha=alpha, last=entropy)


def make_controller(mode: str, kwargs: dict | None):
    """A controller from its registry name and settings, checked against its fields."""
    cls = ENTROPY[mode]
    kwargs = dict(kwargs or {})
    fields = list(cls.__dataclass_fields__)
    for key in kwargs:
        if key not in fields:
            raise ValueError(f"entropy controller {mode!r}: unknown setting {key!r}; {did_you_mean(key, fields)}")
    return cls(**kwargs)


def controller_state(ctl) -> dict:
    return {"mode": next(k for k, v in ENTROPY.items() if v is type(ctl)), "fields": asdict(ctl)}


def controller_from_state(state: dict):
    return ENTROPY[state["mode"]](**state["fields"])


# -- token filters -------------------------------------------------------------------------------
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

