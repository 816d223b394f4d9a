"""Supervision inside RL (ALGORITHMS.md §3-6): routing rules, SFT weights, off-policy shaping.

Owns: the registries `ROUTES` (which groups get supervision), `SFT_SCHEDULES` (lambda(t)) and
`SFT_ROW_WEIGHTS` (SRFT's per-sequence entropy weight), `MIXES` (how lambda weights the RL loss),
`SFT_SOURCES` (which demonstrations a step trains on), `TOKEN_WEIGHTS` (CHORD-phi), `OFFPOLICY` (the loss of a
demonstration placed inside a group, LUFFY), `SELF_WEIGHTS` (SRFT's reweighting of the policy's own
samples), and `with_demos` (a group of G-1 samples plus one demonstration). Everything is a pure
function of tensors and floats; `sftrl.train.rl_step` composes them. Named methods are presets in
`sftrl.config.presets`; ReLIFT's buffer is `sftrl.train.relift`.
"""

from __future__ import annotations

import math

import torch

from sftrl.registry import Registry
from sftrl.batch import Rollout, concat, select_rows

ROUTES = Registry("routing rule")          # acc[P, G] -> routed[P] bool
SFT_SCHEDULES = Registry("SFT schedule")   # t -> lambda(t), a float
SFT_ROW_WEIGHTS = Registry("SFT row weight")   # seq_entropy[m, 1] -> weight per SFT row [m, 1]
MIXES = Registry("loss mix")               # lambda -> factor on the RL loss
SFT_SOURCES = Registry("SFT source")       # (routed problems, expert(k)) -> problems of the SFT term
TOKEN_WEIGHTS = Registry("SFT token weight")  # logp[n, T] -> w[n, T] (detached)
OFFPOLICY = Registry("off-policy loss")    # (logp, adv[n, 1]) -> loss[n, T]
SELF_WEIGHTS = Registry("self-rollout weighting")  # (adv[n, 1], acc[n, 1], seq_entropy[n, 1]) -> adv'


# -- routing (§3, §4, §6.4): decided from raw accuracy, before any group filter -------------------
@ROUTES.register("none")
def route_none(acc: torch.Tensor) -> torch.Tensor:
    """No supervision."""
    return torch.zeros(acc.shape[0], dtype=torch.bool)


@ROUTES.register("always")
def route_always(acc: torch.Tensor) -> torch.Tensor:
    """Every prompt's demonstration joins the SFT term ("RL w/ SFT loss", SRFT)."""
    return torch.ones(acc.shape[0], dtype=torch.bool)


@ROUTES.register("all_fail")
def route_all_fail(acc: torch.Tensor) -> torch.Tensor:
    """No sample of the group is correct (SuperRL-v2 gate c(x) = 0; ReLIFT's hardest questions)."""
    return acc.max(1).values <= 0


@ROUTES.register("success_le")
def route_success_le(acc: torch.Tensor, *, gamma: int = 0) -> torch.Tensor:
    """At most `gamma` samples of the group are correct (HPT's switch gate; gamma=0 is all-fail)."""
    return acc.sum(1) <= gamma


# -- SFT weights: a schedule lambda(t) (§6.3), or per-row weights (§6.1); t counts RL steps from 0 --
@SFT_SCHEDULES.register("constant")
def schedule_constant(t: int, *, value: float = 1.0) -> float:
    """lambda(t) = value ("RL w/ SFT loss": 1.0; HPT sft_loss_coef)."""
    return value


@SFT_SCHEDULES.register("linear")
def schedule_linear(t: int, *, start: float = 1.0, end: float = 0.0, steps: int = 100) -> float:
    """lambda moves linearly from `start` to `end` over `steps`, then stays at `end`."""
    x = min(1.0, t / max(1, steps))
    return start + (end - start) * x


@SFT_SCHEDULES.register("cosine")
def schedule_cosine(t: int, *, start: float = 1.0, end: float = 0.0, steps: int = 100) -> float:
    """lambda follows half a cosine from `start` to `end` over `steps`, then stays at `end`."""
    x = min(1.0, t / max(1, steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * x))


@SFT_SCHEDULES.register("chord_mu")
def schedule_chord_mu(t: int, *, peak: float = 0.9, valley: float = 0.05, warmup: int = 0,
                      decay: int = 200) -> float:
    """CHORD-mu: linear warm-up 0 -> peak over `warmup` steps, cosine peak -> valley over `decay`
    steps, then valley (Trinity-RFT mix_chord defaults: warm-up 0, decay 200, 0.9 -> 0.05)."""
    if t < warmup:
        return peak * t / warmup
    if t < warmup + decay:
        x = (t - warmup) / decay
        return valley + (peak - valley) * 0.5 * (1 + math.cos(math.pi * x))
    return valley


@SFT_ROW_WEIGHTS.register("srft")
def row_weight_srft(seq_entropy: torch.Tensor, *, scale: float = 0.5) -> torch.Tensor:
    """SRFT: w_SFT = scale * exp(-H) per demonstration, H its mean token entropy (detached):
    low entropy -> more SFT."""
    return scale * torch.exp(-seq_entropy.detach())                            # [m, 1]


def schedule_weight(lam: float, seq_entropy: torch.Tensor) -> torch.Tensor:
    """Every SFT row weighted by the step's lambda(t)."""
    return torch.full_like(seq_entropy, lam)                                    # [m, 1]


# -- how lambda mixes the two losses ------------------------------------------------------------
@MIXES.register("sum")
def mix_sum(lam: float) -> float:
    """L_RL + lambda L_SFT: the RL loss keeps weight 1."""
    return 1.0


@MIXES.register("convex")
def mix_convex(lam: float) -> float:
    """(1 - lambda) L_RL + lambda L_SFT (CHORD)."""
    return 1.0 - lam


# -- which demonstrations an RL step trains on -----------------------------------------------------
@SFT_SOURCES.register("routed")
def source_routed(routed: list, expert) -> list:
    """The demonstrations of the problems the routing rule picked this step."""
    return routed


@SFT_SOURCES.register("stream")
def source_stream(routed: list, expert, *, size: int) -> list:
    """A separate batch of `size` demonstrations every step (CHORD's expert stream); `expert(k)`
    draws them."""
    return expert(size)


@SFT_SOURCES.register("none")
def source_none(routed: list, expert) -> list:
    """No SFT term inside the step (ReLIFT: routed problems wait in a buffer instead)."""
    return []


# -- SFT token weights ----------------------------------------------------------------------------
@TOKEN_WEIGHTS.register("none")
def token_weight_none(logp: torch.Tensor) -> torch.Tensor:
    """Plain NLL."""
    return torch.ones_like(logp)


@TOKEN_WEIGHTS.register("phi")
def token_weight_phi(logp: torch.Tensor) -> torch.Tensor:
    """CHORD-phi: sg(p (1 - p)); tokens the model already knows (p ~ 1) or finds alien (p ~ 0)
    barely move it."""
    p = torch.exp(logp.detach())
    return p * (1 - p)


# -- off-policy demonstrations in the group (§5) -------------------------------------------------
@OFFPOLICY.register("shaped")
def offpolicy_shaped(logp: torch.Tensor, adv: torch.Tensor, *, gamma: float = 0.1) -> torch.Tensor:
    """LUFFY policy shaping: -A * f(p), f(p) = p / (p + gamma), p = pi_theta(token); the
    demonstrator's probability is taken as 1 and nothing is clipped."""
    p = torch.exp(logp)
    return -adv * p / (p + gamma)


@OFFPOLICY.register("plain")
def offpolicy_plain(logp: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    """Off-policy ratio with pi_phi = 1 and no shaping: -A * p (LUFFY's ablation 'no shaping')."""
    return -adv * torch.exp(logp)


# -- SRFT self-rollout weighting (§6.1) -----------------------------------------------------------
@SELF_WEIGHTS.register("none")
def self_weight_none(adv, acc, seq_entropy):
    """The group advantage, unchanged."""
    return adv


@SELF_WEIGHTS.register("srft")
def self_weight_srft(adv, acc, seq_entropy, *, pos_scale: float = 0.1, neg: float = -1.0):
    """SRFT on the policy's own samples: correct -> +pos_scale * exp(H) (detached), wrong -> neg;
    used with the `reinforce` surrogate (-A log p)."""
    return torch.where(acc > 0, pos_scale * torch.exp(seq_entropy.detach()), torch.full_like(adv, neg))


# -- LUFFY groups ---------------------------------------------------------------------------------
def with_demos(samples: Rollout, demos: Rollout, group_size: int, pad_id: int) -> tuple[Rollout, torch.Tensor]:
    """Groups of `group_size`: the G-1 samples of prompt p followed by its demonstration.

    `samples` has P*(G-1) prompt-major rows, `demos` P rows. Returns the merged rollout (P*G rows)
    and the off-policy row flag [P*G] bool (True on demonstrations)."""
    P, G = demos.prompt_ids.shape[0], group_size
    merged = concat([samples, demos], pad_id)
    on = torch.arange(P * (G - 1)).view(P, G - 1)                               # [P, G-1]
    off = P * (G - 1) + torch.arange(P)[:, None]                                # [P, 1]
    order = torch.cat([on, off], 1).reshape(-1)                                 # [P*G]
    flag = torch.zeros(P, G, dtype=torch.bool)
    flag[:, -1] = True
    return select_rows(merged, order), flag.reshape(-1)
