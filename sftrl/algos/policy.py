"""The pure math of group-relative RL: advantages, surrogates, loss weightings, KL estimators.

Owns: the registries `ADVANTAGES` (group-relative, from r[P, G]), `TOKEN_ADVANTAGES` (from
per-token rewards, REINFORCE++), `SURROGATES`, `WEIGHTINGS`, `KL` and the DAPO overlong penalty.
Every function is a plain function of tensors with keyword-only hyperparameters; named methods are
presets over these (sftrl.config.presets). Entropy controllers and token filters live in
`sftrl.algos.entropy` and `sftrl.algos.filters`. Dims: P prompts, G group size, N = P*G rows
(prompt-major), T completion tokens. Sources are ALGORITHMS.md sections (§) of the specification.
"""

from __future__ import annotations

import torch

from sftrl.registry import Registry

ADVANTAGES = Registry("advantage")   # r[P, G] -> adv[P, G]
TOKEN_ADVANTAGES = Registry("token-level advantage")   # (score[N], token_kl[N, T], mask[N, T]) -> adv[N, T]
SURROGATES = Registry("surrogate")   # (logp, old_logp, adv[N, 1], mask) -> loss[N, T]
WEIGHTINGS = Registry("weighting")   # mask[N, T] -> w[N, T], once per optimiser mini-batch
KL = Registry("kl estimator")        # (logp, ref_logp) -> kl[N, T]


# -- advantages (§0.1) -------------------------------------------------------------------------
def _center(r: torch.Tensor) -> torch.Tensor:
    return r - r.mean(1, keepdim=True)                                          # [P, G]


@ADVANTAGES.register("grpo")
def grpo(r: torch.Tensor, *, eps: float = 1e-6, std_scope: str = "group") -> torch.Tensor:
    """(r - group mean) / (std + eps), DeepSeekMath. std over the group (unbiased, as verl/TRL),
    over the whole batch (TRL scale_rewards="batch") or none (= Dr. GRPO)."""
    centred = _center(r)                                                        # [P, G]
    if std_scope == "none":
        return centred
    if std_scope == "group":
        std = r.std(1, keepdim=True) if r.shape[1] > 1 else torch.ones_like(r[:, :1])   # [P, 1]
    elif std_scope == "batch":
        std = r.std() if r.numel() > 1 else torch.ones(())
    else:
        raise ValueError(f"grpo: std_scope={std_scope!r}; use 'group', 'batch' or 'none'")
    std = torch.where(std > 0, std, torch.ones_like(std))   # all-equal groups: 0 / 1, never 0 / 0
    return centred / (std + eps)                                                # [P, G]


@ADVANTAGES.register("drgrpo")
def drgrpo(r: torch.Tensor) -> torch.Tensor:
    """r - group mean: no std scaling, which up-weights near-solved and hopeless prompts (Dr. GRPO)."""
    return _center(r)                                                           # [P, G]


@ADVANTAGES.register("rloo")
def rloo(r: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline r_i - mean_{j != i} r_j = G/(G-1) (r_i - mean) (Ahmadian et al.)."""
    G = r.shape[1]
    return (G * r - r.sum(1, keepdim=True)) / (G - 1)                          # [P, G]


@ADVANTAGES.register("reinforce_pp_baseline")
def reinforce_pp_baseline(r: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """Group-centred, then whitened over the whole batch (REINFORCE++-baseline). verl whitens over
    valid tokens, weighting long responses more; here each response counts once."""
    centred = _center(r)                                                        # [P, G]
    std = centred.std() if centred.numel() > 1 else torch.ones(())
    std = std if std > 0 else torch.ones(())
    return (centred - centred.mean()) / (std + eps)                             # [P, G]


# -- token-level advantages: per-token rewards and returns, no group baseline -------------------
@TOKEN_ADVANTAGES.register("reinforce_pp")
def reinforce_pp(score: torch.Tensor, token_kl: torch.Tensor, mask: torch.Tensor, *,
                 gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ (verl compute_reinforce_plus_plus_outcome_advantage, OpenRLHF `reinforce`): the
    outcome score on each sequence's last token minus the (beta-scaled) per-token KL, summed to go
    with discount gamma, then whitened over every valid token of the batch (mean removed, unbiased
    variance, 1e-8 inside the square root, as verl's masked_whiten)."""
    N, T = mask.shape
    last = (mask.cumsum(1) == mask.sum(1, keepdim=True)) & (mask > 0)           # [N, T] last valid token
    rewards = score[:, None] * last - token_kl * mask                           # [N, T]
    returns = torch.zeros_like(rewards)
    running = torch.zeros(N, dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(T)):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
        running = running * mask[:, t]                                          # nothing flows past a sequence's end
    n = mask.sum()
    mean = (returns * mask).sum() / (n + 1e-8)
    var = ((returns - mean) ** 2 * mask).sum() / (n + 1e-8) * n / (n - 1).clamp(min=1.0)
    return (returns - mean) * torch.rsqrt(var + 1e-8) * mask                    # [N, T]


# -- surrogates (§0.2), per-token losses to minimise --------------------------------------------
@SURROGATES.register("ppo_clip")
def ppo_clip(logp, old_logp, adv, mask, *, eps_low: float = 0.2, eps_high: float = 0.2,
             dual_clip: float | None = None):
    """-min(r A, clip(r, 1-eps_low, 1+eps_high) A); eps_high > eps_low is DAPO's clip-higher.
    Dual clip (verl clip_ratio_c) caps the loss of A<0 tokens at -c A."""
    ratio = torch.exp(logp - old_logp)                                          # [N, T]
    loss = -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)  # [N, T]
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)
    return loss


@SURROGATES.register("no_clip")
def no_clip(logp, old_logp, adv, mask):
    """-r A without clipping (LUFFY/ReLIFT/HPT `loss_remove_clip`)."""
    return -torch.exp(logp - old_logp) * adv                                   # [N, T]


@SURROGATES.register("reinforce")
def reinforce(logp, old_logp, adv, mask):
    """-A log p: the plain on-policy policy gradient (no ratio)."""
    return -adv * logp                                                          # [N, T]


@SURROGATES.register("gspo")
def gspo(logp, old_logp, adv, mask, *, eps_low: float = 3e-4, eps_high: float = 4e-4):
    """Sequence-level ratio s_i = exp(mean_t(logp - old_logp)), clipped (GSPO), in the token form
    s_i,t = sg(s_i) exp(logp - sg(logp)) whose gradient is the sequence-mean of token gradients."""
    n_tok = mask.sum(1, keepdim=True).clamp(min=1.0)                            # [N, 1]
    seq_log_ratio = ((logp - old_logp) * mask).sum(1, keepdim=True) / n_tok     # [N, 1]
    s = torch.exp(seq_log_ratio.detach() + logp - logp.detach())                # [N, T]
    return -torch.minimum(s * adv, s.clamp(1 - eps_low, 1 + eps_high) * adv)   # [N, T]


def clip_indicators(logp, old_logp, adv, *, eps_low: float, eps_high: float) -> dict:
    """Per-token 0/1 tensors [N, T]: ratio clipped below with A<0, above with A>0 (TRL's metrics)."""
    ratio = torch.exp(logp - old_logp)                                          # [N, T]
    low = ((ratio < 1 - eps_low) & (adv < 0)).float()
    high = ((ratio > 1 + eps_high) & (adv > 0)).float()
    return {"low": low, "high": high, "region": ((low + high) > 0).float()}


# -- loss weightings (§0.3): sum over micro-batches of (loss * w[rows]) == full-batch loss -------
@WEIGHTINGS.register("seq_mean_token_mean")
def seq_mean_token_mean(mask: torch.Tensor) -> torch.Tensor:
    """Mean over each sequence's tokens, then over sequences (DeepSeekMath Eq. 3, TRL "grpo")."""
    per_seq = mask.sum(1, keepdim=True).clamp(min=1.0)                          # [N, 1]
    return mask / per_seq / mask.shape[0]                                       # [N, T]


@WEIGHTINGS.register("token_mean")
def token_mean(mask: torch.Tensor) -> torch.Tensor:
    """Every completion token of the mini-batch counts equally (DAPO, verl token-mean, TRL "dapo")."""
    return mask / mask.sum().clamp(min=1.0)                                     # [N, T]


@WEIGHTINGS.register("const_len")
def const_len(mask: torch.Tensor, *, max_len: int) -> torch.Tensor:
    """Token sum over a fixed length, mean over sequences: no length bias (Dr. GRPO, TRL "dr_grpo")."""
    return mask / (mask.shape[0] * max_len)                                     # [N, T]


@WEIGHTINGS.register("seq_mean_token_sum")
def seq_mean_token_sum(mask: torch.Tensor) -> torch.Tensor:
    """Token sum of each sequence, mean over the sequences that have tokens (verl "seq-mean-token-sum")."""
    seqs = (mask.sum(1) > 0).sum().clamp(min=1)                                 # []
    return mask / seqs                                                          # [N, T]


@WEIGHTINGS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(mask: torch.Tensor, *, max_len: int) -> torch.Tensor:
    """Token sum over every sequence / a constant, no division by their count (verl
    "seq-mean-token-sum-norm" with loss_scale_factor; the "remove token mean" of LUFFY, ReLIFT and
    HPT, whose vLLM output is always padded to max_response_length, so their divisor is that
    constant). The constant never depends on the step's batch: demonstrations joining it cannot
    change the RL rows' weight."""
    return mask / max_len                                                       # [N, T]


# -- KL estimators (§0.4), delta = ref_logp - logp ----------------------------------------------
@KL.register("k1")
def k1(logp, ref_logp):
    """log p - log p_ref; unbiased, can be negative (used in the reward)."""
    return logp - ref_logp                                                      # [N, T]


@KL.register("k2")
def k2(logp, ref_logp):
    """(log p - log p_ref)^2 / 2."""
    return 0.5 * (ref_logp - logp) ** 2                                         # [N, T]


@KL.register("k3")
def k3(logp, ref_logp):
    """exp(delta) - delta - 1 >= 0 (DeepSeekMath Eq. 4; unclamped, as TRL)."""
    delta = ref_logp - logp                                                     # [N, T]
    return torch.exp(delta) - delta - 1


@KL.register("k3_plus")
def k3_plus(logp, ref_logp):
    """Value of k3 with the gradient of k2 (verl "k3+", straight-through)."""
    v2 = k2(logp, ref_logp)
    return k3(logp, ref_logp).detach() + v2 - v2.detach()                       # [N, T]


# -- reward shaping (§2.2) ----------------------------------------------------------------------
def overlong_penalty(lengths: torch.Tensor, *, max_len: int, cache: int, factor: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment: 0 up to max_len - cache, then linear down to -factor at max_len."""
    start = max_len - cache
    pen = (start - lengths) / cache                                             # [N]
    return (factor * pen.clamp(min=-1.0, max=0.0)).to(torch.float32)
