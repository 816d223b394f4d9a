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

from sftrl import batch as rollout_rows
from sftrl.algos import filters, hybrid
from sftrl.algos import policy as algos
from sftrl.data.rewards import Scored, score_rollout
from sftrl.lm import rollout
from sftrl.parallel import dist, sharding
from sftrl.registry import bind
from sftrl.train import forward


GLOBAL_SUMS = ("loss/", "policy/kl", "policy/entropy", "policy/clip_", "sft/entropy")
"""Metrics that are sums of globally weighted terms: summed over ranks they are the global value."""


@dataclass(frozen=True)
class Algo:
    """The registry functions of an RL config, bound to their hyperparameters once."""

    advantage: Callable
    surrogate: Callable
    weighting: Callable
    token_filter: Callable
    kl: Callable
    route: Callable             # hybrid.ROUTES
    sft_weight: Callable        # hybrid.SFT_WEIGHTS
    token_weight: Callable      # hybrid.TOKEN_WEIGHTS
    offpolicy_loss: Callable    # hybrid.OFFPOLICY
    self_weight: Callable       # hybrid.SELF_WEIGHTS

    @classmethod
    def from_config(cls, rl) -> "Algo":
        a, h = rl.algo, rl.hybrid
        return cls(advantage=bind(algos.ADVANTAGES, a.advantage, a.advantage_kwargs),
                   surrogate=bind(algos.SURROGATES, a.surrogate, a.surrogate_kwargs),
                   weighting=bind(algos.WEIGHTINGS, a.weighting, a.weighting_kwargs),
                   token_filter=bind(filters.TOKEN_FILTERS, a.token_filter, a.token_filter_kwargs),
                   kl=algos.KL[a.kl.estimator],
                   route=bind(hybrid.ROUTES, h.route, h.route_kwargs),
                   sft_weight=bind(hybrid.SFT_WEIGHTS, h.weight, h.weight_kwargs),
                   token_weight=bind(hybrid.TOKEN_WEIGHTS, h.token_weight),
                   offpolicy_loss=bind(hybrid.OFFPOLICY, h.offpolicy_loss, h.offpolicy_kwargs),
                   self_weight=bind(hybrid.SELF_WEIGHTS, h.self_weight, h.self_weight_kwargs))


@dataclass
class Groups:
    """What an RL step trains on: rows of groups kept for the RL loss, and the routed problems."""

    ro: rollout_rows.Rollout             # N = P' x G rows, prompt-major
    sc: Scored                      # r, acc [P', G]; keep [N]
    off: torch.Tensor               # [N] bool: row is a demonstration placed in the group (LUFFY)
    problems: list                  # P' problems of the RL groups
    routed: list                    # problems routed to SFT, from every rollout drawn this step
    metrics: dict


def _draw(s, problems, rcfg) -> tuple:
    """Rollout of G samples per problem (G-1 and the demonstration with off-policy groups) and scores."""
    ro_cfg, hy = rcfg.rollout, rcfg.hybrid
    G = ro_cfg.group_size
    prompts = [s.prompt(p, s.cfg.task.template) for p in problems]
    if ro_cfg.engine == "vllm":
        ro = s.vllm().sample(s.model, prompts, n=G - hy.offpolicy, max_new_tokens=ro_cfg.max_new_tokens,
                             temperature=ro_cfg.temperature, top_p=ro_cfg.top_p, greedy=False, gen=s.rngs.sample)
    else:
        ro = rollout.sample(s.model, s.tokenizer, prompts, n=G - hy.offpolicy, max_new_tokens=ro_cfg.max_new_tokens,
                            temperature=ro_cfg.temperature, top_p=ro_cfg.top_p, gen=s.rngs.sample,
                            engine=ro_cfg.engine)
    off = torch.zeros(len(problems) * G, dtype=torch.bool)
    if hy.offpolicy:
        ro, off = hybrid.with_demos(ro, s.demos(problems), G, s.tokenizer.pad_token_id)
    sc = score_rollout(ro.texts, problems, ro.lengths, ro.truncated, rcfg.reward, group_size=G,
                       max_new_tokens=ro_cfg.max_new_tokens)
    return ro, off, sc


def _sample_groups(s, problems, rcfg) -> Groups:
    """Rollout + reward + routing. Routing reads the samples' accuracy *before* any group is
    dropped, so the all-fail groups SFT needs survive dynamic sampling (DAPO), which then keeps
    drawing until P groups have mixed accuracy and truncates to exactly P."""
    hy, G, P = rcfg.hybrid, rcfg.rollout.group_size, len(problems)
    dynamic = rcfg.algo.dynamic_sampling
    parts, routed, drawn, batches = [], [], 0, 0
    while True:
        batches += 1
        ro, off, sc = _draw(s, problems, rcfg)
        on_acc = sc.acc[:, ~off[:G]]                                            # [P, G - offpolicy]
        route = s.algo.route(on_acc)                                                 # [P] bool
        routed += [p for p, r in zip(problems, route.tolist()) if r]
        drawn += len(problems)
        keep = ~route if hy.replace_group else torch.ones_like(route)           # [P] bool
        if dynamic:
            keep &= sc.acc.max(1).values != sc.acc.min(1).values
        parts.append((ro, off, sc, problems, keep.nonzero().squeeze(1)))
        if not dynamic or sum(len(x[4]) for x in parts) >= P or batches >= rcfg.algo.max_gen_batches:
            break
        problems = s.stream.next(P)
    if dynamic and not any(len(x[4]) for x in parts):   # nothing informative: keep the last batch
        ro, off, sc, pb, _ = parts[-1]
        keep = ~route if hy.replace_group else torch.ones_like(route)
        parts = [(ro, off, sc, pb, keep.nonzero().squeeze(1))]
    ros, offs, scs, pbs = [], [], [], []
    for ro, off, sc, pb, groups in parts:
        rows = rollout_rows.group_rows(groups, G)
        ros.append(rollout_rows.select_rows(ro, rows))
        offs.append(off[rows])
        scs.append(sc.select(groups, G))
        pbs.extend(pb[i] for i in groups.tolist())
    n = min(P, len(pbs)) if dynamic else len(pbs)
    rows = torch.arange(n * G)
    metrics = {"sft/routed_frac": len(routed) / drawn}
    if dynamic:
        metrics.update({"groups/gen_batches": float(batches), "groups/kept": float(n)})
    return Groups(ro=rollout_rows.select_rows(rollout_rows.concat(ros, s.tokenizer.pad_token_id), rows),
                  sc=scs[0].concat(scs).select(torch.arange(n), G), off=torch.cat(offs)[rows],
                  problems=pbs[:n], routed=routed, metrics=metrics)


def rl_step(s) -> dict:
    """One rollout, SFT routing, and `mini_batches` optimiser steps on RL rows plus demonstration
    rows. Mutates the model, optimisers, entropy controller and SFT buffer held by the session
    `s`; returns metrics."""
    cfg = s.cfg.rl
    algo, hy, G = s.algo, cfg.hybrid, cfg.rollout.group_size
    t0 = time.perf_counter()

    # -- 1-2. rollout and reward: r[P, G] for advantages, acc[P, G] for filters and routing ----
    # -- 3. routing: demonstrations of routed problems (or an expert stream) become SFT rows ----
    with sharding.full_weights(s.model):        # sharded: gathered once, so ranks may decode different lengths
        g = _sample_groups(s, dist.shard(s.stream.next(cfg.rollout.prompts_per_step)), cfg)   # this rank's block
    if hy.execution == "buffer":
        s.buffer.push(dist.gather_objects(g.routed))       # every rank holds the same buffer
        sft_problems = []
    else:
        sft_problems = dist.shard(s.expert_stream.next(s.stream_size)) if hy.source == "stream" else g.routed
    ro = rollout_rows.concat([g.ro, s.demos(sft_problems)], s.tokenizer.pad_token_id) if sft_problems else g.ro
    n_rl = g.ro.prompt_ids.shape[0]
    t_gen = time.perf_counter()
    ids, attn, Lp = ro.input_ids, ro.attention_mask, ro.prompt_ids.shape[1]
    is_rl = torch.arange(ids.shape[0]) < n_rl                                   # [N]
    mask = ro.completion_mask * is_rl[:, None]                                  # [N, T] RL tokens
    mask[:n_rl] *= g.sc.keep[:, None].to(mask)
    sft_mask = ro.completion_mask * ~is_rl[:, None]                             # [N, T] SFT tokens
    off = torch.cat([g.off, torch.zeros(ids.shape[0] - n_rl, dtype=torch.bool)])  # [N]

    # -- 4. behaviour and reference log-probs of the RL rows, once per step -------------------
    # With one update per rollout and nothing that reads them before the update, the behaviour
    # log-probs equal the update's own (detached): skip that pass, as TRL does.
    temp, chunk = cfg.rollout.temperature, cfg.micro_batch_size or max(1, n_rl)
    kl_cfg = cfg.algo.kl
    need_old = cfg.algo.mini_batches > 1 or cfg.algo.token_filter != "none" or \
        (kl_cfg.placement == "reward" and kl_cfg.coef > 0)
    rl_rows = torch.arange(n_rl)
    with torch.no_grad():
        old_logp, old_ent = forward.forward_rows(s.model, ids, attn, Lp, ro.lengths, chunk, temp, rows=rl_rows) \
            if need_old else (None, None)                                       # [N, T] each
        ref_logp = forward.forward_rows(s.ref, ids, attn, Lp, ro.lengths, chunk, temp, entropy=False, rows=rl_rows)[0] \
            if s.ref is not None else None                                      # [N, T]
    t_ref = time.perf_counter()
    r = g.sc.r                                                                  # [P, G]
    on_mask = mask * ~off[:, None]                                              # KL only on samples
    if ref_logp is not None and kl_cfg.placement == "reward" and kl_cfg.coef > 0:
        seq_kl = (algo.kl(old_logp[:n_rl], ref_logp[:n_rl]) * on_mask[:n_rl]).sum(1)   # [N_rl]
        r = r - kl_cfg.coef * seq_kl.view(-1, G)

    # -- 5. advantages (over mixed groups) and token filter, once for the whole rollout ----------
    adv = torch.zeros(ids.shape[0], 1)                                          # [N, 1]
    acc = torch.zeros(ids.shape[0], 1)
    if n_rl:
        adv[:n_rl] = dist.global_rows(algo.advantage, r).reshape(-1, 1)   # groups of every rank
        acc[:n_rl] = g.sc.acc.reshape(-1, 1)
    keep_tok, penalise = algo.token_filter(old_logp, adv, old_ent, mask, gen=s.rngs.sample) \
        if need_old else (torch.ones_like(mask), torch.zeros_like(mask))
    coef = s.entropy_ctl.coef
    t_rl = s.kind_steps.get("rl", 0)
    lam = float(algo.sft_weight(t_rl, torch.zeros(1)))      # lambda(t); srft weights rows below
    rl_scale = 1.0 - lam if hy.mix == "convex" else 1.0

    # -- 6. optimise: mini-batches are optimiser steps; micro-batches only split the compute --
    opt, sched = s.optimizer("rl", cfg.optim)
    lr = sched.get_last_lr()[0]
    totals: dict[str, float] = defaultdict(float)
    sft_rows = torch.arange(n_rl, ids.shape[0])
    rl_mini = list(rl_rows.chunk(cfg.algo.mini_batches)) if n_rl else [rl_rows]   # whole groups when G divides
    mini = list(zip(rl_mini, sft_rows.tensor_split(len(rl_mini))))
    n_mb = len(mini)
    for mb_rl, mb_sft in mini:
        w_pg = dist.global_weights(algo.weighting, mask[mb_rl])                 # [n, T] global normalisers
        w_tok = dist.global_weights(algos.WEIGHTINGS["token_mean"], mask[mb_rl])   # [n, T]
        for local in forward.each(s.model, forward.micro_rows(ro.lengths[mb_rl], cfg.micro_batch_size)):
            rows = mb_rl[local]
            w_p, w_t, on = w_pg[local], w_tok[local], ~off[rows, None]
            logp, ent = forward.forward(s.model, ids, attn, Lp, rows, temp)                   # [n, T]
            old = old_logp[rows] if old_logp is not None else logp.detach()
            a = torch.where(on, algo.self_weight(adv[rows], acc[rows], forward.seq_mean(ent, mask[rows])), adv[rows])
            pg_tok = torch.where(on, algo.surrogate(logp, old, a, mask[rows]), algo.offpolicy_loss(logp, a))
            loss_pg = (pg_tok * keep_tok[rows] * w_p).sum()
            loss_cov = ((logp - old).abs() * penalise[rows] * w_p).sum()               # KL-Cov
            bonus = (ent * w_t).sum()
            loss_rl = loss_pg + loss_cov
            if ref_logp is not None:
                kl = (algo.kl(logp, ref_logp[rows]) * on * w_p).sum()
                if kl_cfg.placement == "loss" and kl_cfg.coef > 0:
                    loss_rl = loss_rl + kl_cfg.coef * kl
                    totals["loss/kl"] += kl_cfg.coef * kl.item() / n_mb
                totals["policy/kl"] += kl.item() / n_mb
            loss = rl_scale * loss_rl - coef * bonus
            loss.backward()
            totals["loss/pg"] += loss_pg.item() / n_mb
            totals["loss/entropy"] += coef * bonus.item() / n_mb
            totals["loss/total"] += loss.item() / n_mb
            totals["policy/entropy"] += bonus.item() / n_mb
            for name, ind in _clip_indicators(logp.detach(), old, a, cfg.algo).items():
                totals[f"policy/clip_{name}"] += (ind * on * w_t).sum().item() / n_mb
        if dist.any_rank(len(mb_sft) > 0):   # joint SFT term: its own token-mean normaliser, weight lambda(t)
            g_rl = _grad_snapshot(s.model)
            w_sft = dist.global_weights(algos.WEIGHTINGS["token_mean"], sft_mask[mb_sft])   # [m, T]
            for local in forward.each(s.model, forward.micro_rows(ro.lengths[mb_sft], cfg.micro_batch_size)):
                rows = mb_sft[local]
                logp, ent = forward.forward(s.model, ids, attn, Lp, rows, 1.0)                 # [m, T]
                weight = algo.sft_weight(t_rl, forward.seq_mean(ent, sft_mask[rows]))          # [m, 1]
                nll = -(logp * algo.token_weight(logp) * w_sft[local]).sum(1, keepdim=True)  # [m, 1]
                bonus = (ent * w_sft[local]).sum()
                loss = (weight * nll).sum() - hy.entropy_coef * bonus
                loss.backward()
                totals["loss/sft"] += nll.sum().item() / n_mb
                totals["sft/entropy"] += bonus.item() / n_mb
                totals["loss/total"] += loss.item() / n_mb
                totals["sft/weight"] += weight.sum().item() / len(sft_rows)
            norms = _grad_norms(s.model, g_rl)
            totals["grad/norm_rl"] += norms[0] / n_mb
            totals["grad/norm_sft"] += norms[1] / n_mb
        totals["grad/norm"] += s.clip_and_step("rl", cfg.optim.grad_clip) / n_mb
    t_upd = time.perf_counter()

    # -- 7. ReLIFT: a separate SFT step, own optimiser, when the buffer holds a full batch -------
    if hy.execution == "buffer":
        popped = s.buffer.pop(s.buffer_trigger)
        if popped:
            totals.update(s.run_buffer_step(dist.shard(popped)))
        totals.update({"sft/buffer_size": float(len(s.buffer.items)), "sft/triggers": float(s.buffer.triggers)})

    # -- 8. controllers and report ---------------------------------------------------------
    totals = dist.sum_scalars(totals, GLOBAL_SUMS)       # losses of all ranks' rows
    s.entropy_ctl = s.entropy_ctl.update(totals["policy/entropy"], s.step)
    s.last_groups = g
    out = {**totals, **g.sc.parts, **g.metrics, "entropy/coef": coef, "optim/lr": lr,
           "sft/rows": float(len(sft_rows)), "rl/groups": float(len(g.problems)),
           "time/rollout": t_gen - t0, "time/logp_ref": t_ref - t_gen, "time/update": t_upd - t_ref,
           "perf/tokens_per_s": float(g.ro.completion_mask.sum()) / max(t_upd - t0, 1e-9)}
    if hy.weight != "srft" and (len(sft_rows) or hy.mix == "convex"):
        out["sft/weight"] = lam
    if n_rl:
        out.update(_rollout_metrics(g.ro, g.sc, r, adv[:n_rl], mask[:n_rl], keep_tok[:n_rl]))
        if hy.offpolicy:
            out["policy/offpolicy_token_share"] = float((mask * off[:, None]).sum() / mask.sum().clamp(min=1.0))
    return out


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


def _clip_indicators(logp, old_logp, adv, acfg) -> dict:
    """Clip-region indicators for surrogates that have an epsilon (empty otherwise)."""
    kw = acfg.surrogate_kwargs or {}
    if "eps_low" not in kw and "eps_high" not in kw:
        return {}
    return algos.clip_indicators(logp, old_logp, adv, eps_low=kw.get("eps_low", 0.2),
                                 eps_high=kw.get("eps_high", 0.2))


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
