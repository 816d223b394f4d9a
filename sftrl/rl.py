"""One RL step of the GRPO family: rollout -> reward -> (dynamic sampling) -> advantage -> loss -> update.

Owns: `rl_step` (the readable spine) and `Algo`, the bound registry functions of a config.
Every method difference is a registry choice made in the config (presets in `config_rl`), never
a branch here. Deviations from the papers are listed in docs/ALGORITHMS.md; the two that
matter most: token filters and all normalisers are computed once per optimiser mini-batch from
the whole mini-batch (so micro-batching never changes the objective), and KL placed in the reward
is the sequence sum of per-token k-estimates subtracted from the scalar reward (as OpenRLHF does
for outcome rewards).
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

import torch

from sftrl import algos, entropy, logprobs, rollout
from sftrl.registry import bind
from sftrl.rewards import score_rollout


@dataclass(frozen=True)
class Algo:
    advantage: Callable
    surrogate: Callable
    weighting: Callable
    token_filter: Callable
    kl: Callable

    @classmethod
    def from_config(cls, a) -> "Algo":
        return cls(advantage=bind(algos.ADVANTAGES, a.advantage, a.advantage_kwargs),
                   surrogate=bind(algos.SURROGATES, a.surrogate, a.surrogate_kwargs),
                   weighting=bind(algos.WEIGHTINGS, a.weighting, a.weighting_kwargs),
                   token_filter=bind(entropy.TOKEN_FILTERS, a.token_filter, a.token_filter_kwargs),
                   kl=algos.KL[a.kl.estimator])


def _sample_groups(s, problems, rcfg) -> tuple:
    """Rollout + reward; with dynamic sampling (DAPO), keep drawing until P groups have mixed
    accuracy, then truncate to exactly P. Filtering reads accuracy, not the shaped reward."""
    ro_cfg = rcfg.rollout
    P, G = len(problems), ro_cfg.group_size
    parts, batches = [], 0
    while True:
        batches += 1
        prompts = [s.prompt(p, s.cfg.task.template) for p in problems]
        ro = rollout.sample(s.model, s.tokenizer, prompts, n=G, max_new_tokens=ro_cfg.max_new_tokens,
                            temperature=ro_cfg.temperature, top_p=ro_cfg.top_p, gen=s.rngs.sample)
        sc = score_rollout(ro.texts, problems, ro.lengths, ro.truncated, rcfg.reward, group_size=G,
                           max_new_tokens=ro_cfg.max_new_tokens)
        if not rcfg.algo.dynamic_sampling:
            return ro, sc, problems, {}
        informative = (sc.acc.max(1).values != sc.acc.min(1).values).nonzero().squeeze(1)   # [k]
        parts.append((ro, sc, problems, informative))
        if sum(len(x[3]) for x in parts) >= P or batches >= rcfg.algo.max_gen_batches:
            break
        problems = s.stream.next(P)
    if not any(len(x[3]) for x in parts):            # nothing informative: train on the last batch
        parts = [(ro, sc, problems, torch.arange(P))]
    ros, scs, pbs = [], [], []
    for ro, sc, pb, groups in parts:
        ros.append(rollout.select_rows(ro, rollout.group_rows(groups, G)))
        scs.append(sc.select(groups, G))
        pbs.extend(pb[i] for i in groups.tolist())
    ro = rollout.concat(ros, s.tokenizer.pad_token_id)
    sc = scs[0].concat(scs)
    n = min(P, len(pbs))
    rows = torch.arange(n * G)
    return rollout.select_rows(ro, rows), sc.select(torch.arange(n), G), pbs[:n], {
        "groups/gen_batches": float(batches), "groups/kept": float(n)}


def rl_step(s) -> dict:
    """One rollout and `mini_batches` optimiser steps on it. Mutates the model, optimiser and
    entropy controller held by the session `s`; returns metrics."""
    cfg = s.cfg.rl
    algo, G = s.algo, cfg.rollout.group_size
    t0 = time.perf_counter()

    # -- 1-2. rollout and reward: r[P, G] for advantages, acc[P, G] for filters and routing ----
    problems = s.stream.next(cfg.rollout.prompts_per_step)
    ro, sc, problems, extra = _sample_groups(s, problems, cfg)
    t_gen = time.perf_counter()
    ids, attn, Lp = ro.input_ids, ro.attention_mask, ro.prompt_ids.shape[1]
    mask = ro.completion_mask * sc.keep[:, None].to(ro.completion_mask)         # [N, T]

    # -- 3. behaviour and reference log-probs from the training forward, once per step ------
    # With one update per rollout and nothing that reads them before the update, the behaviour
    # log-probs equal the update's own (detached): skip that pass, as TRL does.
    temp, chunk = cfg.rollout.temperature, cfg.micro_batch_size or ids.shape[0]
    kl_cfg = cfg.algo.kl
    need_old = cfg.algo.mini_batches > 1 or cfg.algo.token_filter != "none" or \
        (kl_cfg.placement == "reward" and kl_cfg.coef > 0)
    with torch.no_grad():
        old_logp, old_ent = _forward_rows(s.model, ids, attn, Lp, ro.lengths, chunk, temp) \
            if need_old else (None, None)                                       # [N, T] each
        ref_logp = _forward_rows(s.ref, ids, attn, Lp, ro.lengths, chunk, temp, entropy=False)[0] \
            if s.ref is not None else None                                      # [N, T]
    t_ref = time.perf_counter()
    r = sc.r                                                                    # [P, G]
    if ref_logp is not None and kl_cfg.placement == "reward" and kl_cfg.coef > 0:
        seq_kl = (algo.kl(old_logp, ref_logp) * mask).sum(1)                    # [N]
        r = r - kl_cfg.coef * seq_kl.view(-1, G)

    # -- 4. advantages and token filter, once for the whole rollout -----------------------
    adv = algo.advantage(r).reshape(-1, 1)                                      # [N, 1]
    keep_tok, penalise = algo.token_filter(old_logp, adv, old_ent, mask, gen=s.rngs.sample) \
        if need_old else (torch.ones_like(mask), torch.zeros_like(mask))
    coef = s.entropy_ctl.coef

    # -- 5. optimise: mini-batches are optimiser steps; micro-batches only split the compute --
    opt, sched = s.optimizer("rl", cfg.optim)
    lr = sched.get_last_lr()[0]
    totals: dict[str, float] = defaultdict(float)
    mini = torch.arange(ids.shape[0]).chunk(cfg.algo.mini_batches)   # contiguous, whole groups when G divides
    n_mb = len(mini)
    for mb_rows in mini:
        w_pg = algo.weighting(mask[mb_rows])                                    # [n, T]
        w_tok = algos.WEIGHTINGS["token_mean"](mask[mb_rows])                   # [n, T]
        for local in _micro_rows(ro.lengths[mb_rows], cfg.micro_batch_size):
            rows = mb_rows[local]
            w_p, w_t = w_pg[local], w_tok[local]
            logp, ent = _forward(s.model, ids, attn, Lp, rows, temp)                   # [n, T]
            old = old_logp[rows] if old_logp is not None else logp.detach()
            pg_tok = algo.surrogate(logp, old, adv[rows], mask[rows]) * keep_tok[rows]
            loss_pg = (pg_tok * w_p).sum()
            loss_cov = ((logp - old).abs() * penalise[rows] * w_p).sum()               # KL-Cov
            bonus = (ent * w_t).sum()
            loss = loss_pg + loss_cov - coef * bonus
            if ref_logp is not None:
                kl = (algo.kl(logp, ref_logp[rows]) * w_p).sum()
                if kl_cfg.placement == "loss" and kl_cfg.coef > 0:
                    loss = loss + kl_cfg.coef * kl
                    totals["loss/kl"] += kl_cfg.coef * kl.item() / n_mb
                totals["policy/kl"] += kl.item() / n_mb
            loss.backward()
            totals["loss/pg"] += loss_pg.item() / n_mb
            totals["loss/entropy"] += coef * bonus.item() / n_mb
            totals["loss/total"] += loss.item() / n_mb
            totals["policy/entropy"] += bonus.item() / n_mb
            for name, ind in _clip_indicators(logp.detach(), old, adv[rows], cfg.algo).items():
                totals[f"policy/clip_{name}"] += (ind * w_t).sum().item() / n_mb
        totals["grad/norm"] += s.clip_and_step("rl", cfg.optim.grad_clip) / n_mb
    t_upd = time.perf_counter()

    # -- 6. controllers and report ---------------------------------------------------------
    s.entropy_ctl = s.entropy_ctl.update(totals["policy/entropy"], s.step)
    return {**totals, **sc.parts, **extra, **_rollout_metrics(ro, sc, r, adv, mask, keep_tok),
            "entropy/coef": coef, "optim/lr": lr, "time/rollout": t_gen - t0,
            "time/logp_ref": t_ref - t_gen, "time/update": t_upd - t_ref,
            "perf/tokens_per_s": float(ro.completion_mask.sum()) / max(t_upd - t0, 1e-9)}


def _clip_indicators(logp, old_logp, adv, acfg) -> dict:
    """Clip-region indicators for surrogates that have an epsilon (empty otherwise)."""
    kw = acfg.surrogate_kwargs or {}
    if "eps_low" not in kw and "eps_high" not in kw:
        return {}
    return algos.clip_indicators(logp, old_logp, adv, eps_low=kw.get("eps_low", 0.2),
                                 eps_high=kw.get("eps_high", 0.2))


def _micro_rows(lengths: torch.Tensor, size: int | None) -> list[torch.Tensor]:
    """Local row indices in micro-batches of `size`, longest completions first, so each micro-batch
    is only as wide as its own longest completion (weights make the order irrelevant)."""
    order = torch.argsort(lengths, descending=True, stable=True)               # [n]
    return list(order.split(size or len(order)))


def _forward(model, ids, attn, Lp: int, rows: torch.Tensor, temperature: float, entropy: bool = True):
    """(logp, ent) [n, T] of `rows`, computed only up to the longest completion among them."""
    T = ids.shape[1] - Lp
    width = max(1, int(attn[rows, Lp:].sum(1).max()))
    logp, ent = logprobs.token_logp_and_entropy(model, ids[rows, :Lp + width], attn[rows, :Lp + width], Lp,
                                                temperature=temperature, with_entropy=entropy)
    pad = (0, T - width)
    return torch.nn.functional.pad(logp, pad), torch.nn.functional.pad(ent, pad)


def _forward_rows(model, ids, attn, Lp: int, lengths, chunk: int, temperature: float, entropy: bool = True):
    """(logp, ent) [N, T] of every row, in length-sorted chunks (no gradients needed by callers)."""
    logp = torch.zeros(ids.shape[0], ids.shape[1] - Lp, device=ids.device)
    ent = torch.zeros_like(logp)
    for rows in _micro_rows(lengths, chunk):
        logp[rows], ent[rows] = _forward(model, ids, attn, Lp, rows, temperature, entropy)
    return logp, ent


def _rollout_metrics(ro, sc, r, adv, mask, keep_tok) -> dict:
    """Reward, length, group-signal and clipping numbers of the rollout (no gradients)."""
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
           "policy/filtered_frac": float(((1 - keep_tok) * mask).sum() / mask.sum().clamp(min=1.0))}
    return out
