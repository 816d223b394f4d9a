"""The loss terms of an RL step, accumulated micro-batch by micro-batch, and its report.

Owns: `advantages` (group-relative from the scalar rewards, or per token for REINFORCE++, with KL
in the reward where configured), `Fixed` (what is computed once per rollout: advantages,
accuracies, behaviour and reference log-probs; and the token filter's masks, filled per
mini-batch by `filter_tokens`), `rl_terms` (policy gradient, KL-Cov, KL and entropy over one
mini-batch's RL rows), `sft_term` (the weighted NLL of its demonstration rows, with the two
gradients' norms), `measured_kl`, `rollout_metrics` (with `gain_vs_ref`) and `GLOBAL_SUMS`.
Every reduction goes through weights computed from the whole mini-batch's mask, so
micro-batching never changes the objective.
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
    old_ent: torch.Tensor | None            # [N, T] entropies of the behaviour pass
    ref_logp: torch.Tensor | None           # [N, T] reference log-probs (None: no reference)
    keep: torch.Tensor                      # [N, T] 1 where the token keeps its policy-gradient loss
    keep_entropy: torch.Tensor              # [N, T] 1 where the token counts in the entropy bonus
    penalise: torch.Tensor                  # [N, T] KL-Cov's coefficient per token

    @classmethod
    def of(cls, adv, acc, old_logp, old_ent, ref_logp, mask) -> "Fixed":
        """From the groups' accuracy acc [P', G] (rows after it are SFT rows, accuracy 0); no token
        filtered yet (`filter_tokens` fills the masks per mini-batch)."""
        acc_rows = torch.zeros(mask.shape[0], 1)                                # [N, 1]
        acc_rows[:acc.numel()] = acc.reshape(-1, 1)
        return cls(adv, acc_rows, old_logp, old_ent, ref_logp, torch.ones_like(mask), torch.ones_like(mask),
                   torch.zeros_like(mask))


def advantages(algo, g, b, old_logp, ref_logp, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(adv [N, 1], or [N, T] for token-level estimators; 0 on SFT rows) and the rewards r [P', G]
    they come from. KL in the reward (beta > 0) is, for group estimators, each sequence's KL sum
    subtracted from its scalar reward before the baseline (TRL RLOO, verl use_kl_in_reward); for
    token-level ones, beta * KL per token before the returns (verl REINFORCE++)."""
    n, (N, T) = b.n_rl, b.mask.shape
    r = g.sc.r                                                                  # [P', G]
    on = (b.mask * ~b.off[:, None])[:n]                                         # [n, T] samples' tokens
    kl = algo.kl(old_logp[:n], ref_logp[:n]) * on if beta > 0 and ref_logp is not None \
        else torch.zeros_like(on)                                               # [n, T]
    if algo.token_advantage:
        adv = torch.zeros(N, T)
        if n:
            adv[:n] = dist.global_apply(algo.advantage, r.reshape(-1), beta * kl, b.mask[:n])
        return adv, r
    r = r - beta * kl.sum(1).view(r.shape) if beta > 0 else r
    adv = torch.zeros(N, 1)
    if n:
        adv[:n] = dist.global_rows(algo.advantage, r).reshape(-1, 1)
    return adv, r


def filter_tokens(model, b, rows_mb: torch.Tensor, fx: Fixed, algo, gen, *, moved: bool, temperature: float,
                  chunk: int) -> None:
    """Run the token filter on one mini-batch's RL rows and write its masks into `fx`: from the
    policy's log-probs and entropies as the mini-batch starts (a no-grad pass once the policy has
    moved; before that they are the behaviour pass's)."""
    logp, ent = fx.old_logp, fx.old_ent                                         # [N, T] each
    if moved:
        with torch.no_grad():
            logp, ent = forward.forward_rows(model, b.ro.input_ids, b.ro.attention_mask, b.ro.prompt_ids.shape[1],
                                             b.ro.lengths, chunk, temperature, rows=rows_mb)
    logp, ent = logp[rows_mb], ent[rows_mb]                                     # [n, T] each
    out = algo.token_filter(logp, fx.old_logp[rows_mb], fx.adv[rows_mb], ent, b.mask[rows_mb], gen=gen,
                            clip=algo.clip_eps)
    fx.keep[rows_mb], fx.keep_entropy[rows_mb], fx.penalise[rows_mb] = out


def rl_terms(model, b, rows_mb: torch.Tensor, fx: Fixed, algo, totals: dict, *, coef: float, beta: float,
             rl_scale: float, temperature: float, micro: int | None, n_mb: int) -> None:
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
        bonus = (ent * fx.keep_entropy[rows] * w_t).sum()
        loss_rl = loss_pg + loss_cov
        if fx.ref_logp is not None:
            kl = (algo.kl(logp, fx.ref_logp[rows]) * on * w_p).sum()
            if beta > 0:                                                        # KL as a loss term
                loss_rl = loss_rl + beta * kl
                totals["loss/kl"] += beta * kl.item() / n_mb
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


def measured_kl(algo, b, old_logp, ref_logp) -> tuple[float, int]:
    """(mean over every rank's sampled sequences of each one's token-mean KL between behaviour and
    reference, their number): what an adaptive beta tracks (verl apply_kl_penalty's current_kl)."""
    n = b.n_rl
    on = (b.mask * ~b.off[:, None])[:n]                                         # [n, T]
    if old_logp is None or ref_logp is None:
        return 0.0, 0
    per_seq = (algo.kl(old_logp[:n], ref_logp[:n]) * on).sum(1) / (on.sum(1) + 1e-8)   # [n]
    has = (on.sum(1) > 0).float()
    tot = dist.sum_scalars({"kl": float((per_seq * has).sum()), "n": float(has.sum())}, ("kl", "n"))
    return tot["kl"] / max(tot["n"], 1.0), int(tot["n"])


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
    """Reward, length, group-signal and filtering numbers of the rollout's RL rows (no gradients).
    Token-level advantages are averaged over valid tokens, group ones over rows."""
    ro, sc, n = g.ro, g.sc, b.n_rl
    adv, mask, keep = fx.adv[:n], b.mask[:n], fx.keep[:n]
    if adv.shape[1] > 1:
        adv = (adv * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0)
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
    elif fx.old_logp is not None and fx.ref_logp is not None and r.numel() == n:
        out["reward/gain_vs_ref"] = gain_vs_ref(r, fx.old_logp[:n], fx.ref_logp[:n], mask)
    return out


def gain_vs_ref(r: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> float:
    """The step's mean reward minus an importance-sampling estimate, from the same samples, of the
    reference policy's mean reward on the same prompts: mean_i r_i (1 - w_i), with w_i =
    exp(sum_t mask (ref_logp - old_logp)) the likelihood ratio of sample i. Rewards r [P, G] (rows
    prompt-major), log-probs and mask [P*G, T]. Unbiased for J(behaviour) - J(reference) on the
    step's prompts, so its slope is the expected reward's slope without the difference in difficulty
    between one step's prompts and the next's (a control variate); 0 when the policies agree. Not
    self-normalised: normalising the weights within a group shrinks the estimate towards 0 (all-equal
    groups give exactly 0 whatever the policies' odds), by more than half on the default study's
    testbed (docs/LOG.md)."""
    log_ratio = ((ref_logp - old_logp) * mask).sum(1).double().view_as(r)      # [P, G]
    r = r.double()
    terms = torch.where(r != 0, r * (1.0 - log_ratio.exp()), torch.zeros_like(r))   # 0 * inf is 0 here
    return float(terms.mean())
