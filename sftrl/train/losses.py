"""The loss terms of an RL step, accumulated micro-batch by micro-batch, and its report.

Owns: `Fixed` (what is computed once per rollout: advantages, accuracies, behaviour and reference
log-probs, the token filter's masks), `rl_terms` (policy gradient, KL-Cov, KL and entropy over one
mini-batch's RL rows), `sft_term` (the weighted NLL of its demonstration rows, with the two
gradients' norms), `rollout_metrics` and `GLOBAL_SUMS`. Every reduction goes through weights
computed from the whole mini-batch's mask, so micro-batching never changes the objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sftrl.algos import policy
from sftrl.parallel import dist
from sftrl.train import forward

GLOBAL_SUMS = ("loss/", "policy/kl", "policy/entropy", "policy/clip_", "sft/entropy")
"""Metrics that are sums of globally weighted terms: summed over ranks they are the global value."""


@dataclass(frozen=True)
class Fixed:
    """Per-row and per-token quantities fixed for the whole rollout (rows of the StepBatch)."""

    adv: torch.Tensor                       # [N, 1] advantage (0 on SFT rows)
    acc: torch.Tensor                       # [N, 1] strict accuracy of the row's sample
    old_logp: torch.Tensor | None           # [N, T] behaviour log-probs (None: the update's own, detached)
    ref_logp: torch.Tensor | None           # [N, T] reference log-probs (None: no reference)
    keep: torch.Tensor                      # [N, T] 1 where the token keeps its policy-gradient loss
    penalise: torch.Tensor                  # [N, T] KL-Cov's coefficient per token


def rl_terms(model, b, rows_mb: torch.Tensor, fx: Fixed, algo, totals: dict, *, coef: float, rl_scale: float,
             temperature: float, micro: int | None, n_mb: int) -> None:
    """Backward of the RL loss over one mini-batch's RL rows, micro-batch by micro-batch; adds
    each term's share (1/n_mb of the step's mean) to `totals`."""
    ids, attn, Lp = b.ro.input_ids, b.ro.attention_mask, b.ro.prompt_ids.shape[1]
    w_pg = dist.global_weights(algo.weighting, b.mask[rows_mb])                 # [n, T] global normalisers
    w_tok = dist.global_weights(policy.WEIGHTINGS["token_mean"], b.mask[rows_mb])   # [n, T]
    for local in forward.each(model, forward.micro_rows(b.ro.lengths[rows_mb], micro)):
        rows = rows_mb[local]
        w_p, w_t, on = w_pg[local], w_tok[local], ~b.off[rows, None]
        logp, ent = forward.forward(model, ids, attn, Lp, rows, temperature)   # [n, T]
        old = fx.old_logp[rows] if fx.old_logp is not None else logp.detach()
        a = torch.where(on, algo.self_weight(fx.adv[rows], fx.acc[rows], forward.seq_mean(ent, b.mask[rows])),
                        fx.adv[rows])                                          # [n, 1]
        pg_tok = torch.where(on, algo.surrogate(logp, old, a, b.mask[rows]), algo.offpolicy_loss(logp, a))
        loss_pg = (pg_tok * fx.keep[rows] * w_p).sum()
        loss_cov = ((logp - old).abs() * fx.penalise[rows] * w_p).sum()        # KL-Cov
        bonus = (ent * w_t).sum()
        loss_rl = loss_pg + loss_cov
        if fx.ref_logp is not None:
            kl = (algo.kl(logp, fx.ref_logp[rows]) * on * w_p).sum()
            if algo.kl_loss_coef > 0:
                loss_rl = loss_rl + algo.kl_loss_coef * kl
                totals["loss/kl"] += algo.kl_loss_coef * kl.item() / n_mb
            totals["policy/kl"] += kl.item() / n_mb
        loss = rl_scale * loss_rl - coef * bonus
        loss.backward()
        totals["loss/pg"] += loss_pg.item() / n_mb
        totals["loss/entropy"] += coef * bonus.item() / n_mb
        totals["loss/total"] += loss.item() / n_mb
        totals["policy/entropy"] += bonus.item() / n_mb
        if algo.clip_eps is not None:
            clipped = policy.clip_indicators(logp.detach(), old, a, eps_low=algo.clip_eps[0], eps_high=algo.clip_eps[1])
            for name, ind in clipped.items():
                totals[f"policy/clip_{name}"] += (ind * on * w_t).sum().item() / n_mb


def sft_term(model, b, rows_mb: torch.Tensor, algo, lam: float, totals: dict, *, micro: int | None, n_mb: int) -> None:
    """Backward of the SFT term over one mini-batch's demonstration rows: NLL with its own
    token-mean normaliser, each row weighted by `algo.sft_row_weight`; logs the norms of the RL
    and the SFT part of the mini-batch's gradient."""
    if not dist.any_rank(len(rows_mb) > 0):
        return
    ids, attn, Lp = b.ro.input_ids, b.ro.attention_mask, b.ro.prompt_ids.shape[1]
    n_sft = len(b.sft_rows)
    g_rl = _grad_snapshot(model)
    w_sft = dist.global_weights(policy.WEIGHTINGS["token_mean"], b.sft_mask[rows_mb])   # [m, T]
    for local in forward.each(model, forward.micro_rows(b.ro.lengths[rows_mb], micro)):
        rows = rows_mb[local]
        logp, ent = forward.forward(model, ids, attn, Lp, rows, 1.0)                   # [m, T]
        weight = algo.sft_row_weight(lam, forward.seq_mean(ent, b.sft_mask[rows]))     # [m, 1]
        nll = -(logp * algo.token_weight(logp) * w_sft[local]).sum(1, keepdim=True)    # [m, 1]
        bonus = (ent * w_sft[local]).sum()
        loss = (weight * nll).sum() - algo.sft_entropy_coef * bonus
        loss.backward()
        totals["loss/sft"] += nll.sum().item() / n_mb
        totals["sft/entropy"] += bonus.item() / n_mb
        totals["loss/total"] += loss.item() / n_mb
        totals["sft/weight"] += weight.sum().item() / n_sft
    norms = _grad_norms(model, g_rl)
    totals["grad/norm_rl"] += norms[0] / n_mb
    totals["grad/norm_sft"] += norms[1] / n_mb


def seq_kl(algo, b, old_logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-sequence sums of the KL estimate between behaviour and reference over the samples'
    tokens (never a demonstration's) [n_rl]."""
    n = b.n_rl
    on_mask = b.mask * ~b.off[:, None]                                          # [N, T]
    return (algo.kl(old_logp[:n], ref_logp[:n]) * on_mask[:n]).sum(1)


def _grad_snapshot(model) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in model.parameters() if p.requires_grad]


def _grad_norms(model, before: list[torch.Tensor]) -> tuple[float, float]:
    """(norm of `before`, norm of what was accumulated since): the RL and SFT terms' gradients."""
    a = b = 0.0
    for p, g0 in zip((p for p in model.parameters() if p.requires_grad), before):
        a += float(g0.pow(2).sum())
        if p.grad is not None:
            b += float((p.grad - g0).pow(2).sum())
    return a ** 0.5, b ** 0.5


def rollout_metrics(g, b, r: torch.Tensor, fx: Fixed, offpolicy: int) -> dict:
    """Reward, length, group-signal and filtering numbers of the rollout's RL rows (no gradients)."""
    ro, sc, n = g.ro, g.sc, b.n_rl
    adv, mask, keep = fx.adv[:n], b.mask[:n], fx.keep[:n]
    lengths = ro.lengths                                                        # [N]
    zero_std = (r.max(1).values == r.min(1).values).float()                      # [P]
    out = {"reward/mean": float(r.mean()), "reward/std": float(r.std()),
           "reward/accuracy": float(sc.acc.mean()),
           "groups/zero_std_frac": float(zero_std.mean()),
           "groups/solve_none_frac": float((sc.acc.max(1).values == 0).float().mean()),
           "groups/solve_all_frac": float((sc.acc.min(1).values == 1).float().mean()),
           "rollout/len_mean": float(lengths.mean()), "rollout/len_max": float(lengths.max()),
           "rollout/truncated_frac": float(ro.truncated.float().mean()),
           "adv/mean": float(adv.mean()), "adv/abs_mean": float(adv.abs().mean()),
           "policy/filtered_frac": float(((1 - keep) * mask).sum() / mask.sum().clamp(min=1.0))}
    if offpolicy:
        out["policy/offpolicy_token_share"] = float((b.mask * b.off[:, None]).sum() / b.mask.sum().clamp(min=1.0))
    return out
