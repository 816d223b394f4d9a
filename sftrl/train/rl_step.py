"""One RL step of the GRPO family: rollout -> reward -> routing -> advantage -> loss -> update.

Owns: `rl_step`, the readable spine. Every method difference is a field of `Algo` bound from the
config (presets in `sftrl.config.presets`), never a branch on a name here; the stages it calls
are `groups` (1-3), `forward` (4) and `losses` (6). Deviations from the papers are listed in
docs/ALGORITHMS.md; the two that matter most: token filters and all normalisers are computed once
per optimiser mini-batch from the whole mini-batch (so micro-batching never changes the
objective), and KL placed in the reward is the sequence sum of per-token estimates subtracted from
the scalar reward before the group baseline (as TRL's RLOO and verl with use_kl_in_reward do).
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from sftrl.parallel import dist, sharding
from sftrl.train import compute, forward, groups, losses
from sftrl.train.groups import StepBatch
from sftrl.train.losses import Fixed


def rl_step(p, update, streams, cfg, algo, ctls, t: int, gen: torch.Generator) -> tuple[dict, object, groups.Groups]:
    """One rollout of this rank's problems, SFT routing, and `algo.epochs` x `algo.mini_batches`
    optimiser steps on its RL rows plus demonstration rows. `p`: the policy bundle;
    `update(model)`: one optimiser step; `streams`: problem streams; `cfg`: the RL config; `ctls`:
    the entropy and KL controllers; `t`: RL steps done before this one (SFT schedules read it);
    `gen`: the sampling generator. Mutates p.model and the optimiser only; returns (metrics, next
    controllers, groups)."""
    t0 = time.perf_counter()

    # -- 1-3. rollout, reward, routing, dynamic sampling; demonstrations become SFT rows -----
    with sharding.full_weights(p.model):        # sharded: gathered once, so ranks may decode different lengths
        g = groups.draw(p, streams.train, cfg, algo, gen)                     # r, acc [P', G]
    sft_problems = algo.sft_source(g.routed, streams.expert_batch)
    b = StepBatch.build(g, p.demos(sft_problems) if sft_problems else None, p.pad_id)   # [N] rows
    t_gen = time.perf_counter()

    # -- 4. behaviour and reference log-probs of the RL rows, once per step -------------------
    # With one optimiser step per rollout and nothing that reads them before it, the behaviour
    # log-probs equal the update's own (detached): that pass is skipped, as TRL does.
    temp, chunk = cfg.rollout.temperature, cfg.micro_batch_size or max(1, b.n_rl)
    fwd = dict(ids=b.ro.input_ids, attn=b.ro.attention_mask, Lp=b.ro.prompt_ids.shape[1],
               lengths=b.ro.lengths, chunk=chunk, temperature=temp, rows=b.rl_rows)
    with torch.no_grad():
        old_logp, old_ent = forward.forward_rows(p.model, **fwd) if algo.needs_old_logp else (None, None)
        ref_logp = forward.forward_rows(p.ref, entropy=False, **fwd)[0] if p.ref is not None else None
    t_ref = time.perf_counter()

    # -- 5. advantages (over whole groups of every rank), KL in the reward, SFT weight ----------
    beta = ctls.kl.coef
    adv, r = losses.advantages(algo, g, b, old_logp, ref_logp, beta if algo.kl_in_reward else 0.0)
    fx = Fixed.of(adv, g.sc.acc, old_logp, old_ent, ref_logp, b.mask)
    g.adv = adv[:b.n_rl]
    lam = algo.sft_lambda(t)
    rl_scale, coef, lr = algo.rl_scale(lam), ctls.entropy.coef, update.lr

    # -- 6. optimise: each mini-batch of each pass is an optimiser step; micro-batches split compute
    totals: dict[str, float] = defaultdict(float)
    mini = b.mini_batches(algo.mini_batches, algo.epochs, gen if algo.shuffle else None)
    for i, (mb_rl, mb_sft) in enumerate(mini):
        if algo.filters:                        # token filters: once per mini-batch, as it starts
            losses.filter_tokens(p.model, b, mb_rl, fx, algo, gen, moved=i > 0, temperature=temp, chunk=chunk)
        losses.rl_terms(p.model, b, mb_rl, fx, algo, totals, coef=coef, beta=beta if algo.kl_in_loss else 0.0,
                        rl_scale=rl_scale, temperature=temp, micro=cfg.micro_batch_size, n_mb=len(mini))
        losses.sft_term(p.model, b, mb_sft, algo, lam, totals, micro=cfg.micro_batch_size, n_mb=len(mini))
        totals["grad/norm"] += update(p.model) / len(mini)
    t_upd = time.perf_counter()

    # -- 7. report, and the controllers' next values -----------------------------------------------
    totals = dist.sum_scalars(totals, losses.GLOBAL_SUMS)       # losses of all ranks' rows
    kl_now, n_seq = losses.measured_kl(algo, b, old_logp, ref_logp)
    ctls = ctls.update(totals["policy/entropy"], kl_now, n_seq, t)   # entropy logged as 0 without RL rows
    out = {**totals, **g.sc.parts, **g.metrics, "entropy/coef": coef, "kl/coef": beta, "optim/lr": lr,
           "sft/rows": float(len(b.sft_rows)), "rl/groups": float(len(g.problems)),
           "time/rollout": t_gen - t0, "time/logp_ref": t_ref - t_gen, "time/update": t_upd - t_ref,
           "perf/tokens_per_s": float(g.ro.completion_mask.sum()) / max(t_upd - t0, 1e-9)}
    if algo.sft_schedule is not None and (len(b.sft_rows) or algo.lambda_scales_rl):
        out["sft/weight"] = lam
    if b.n_rl:
        out.update(losses.rollout_metrics(g, b, r, fx, algo.offpolicy))
    passes = int(old_logp is not None) + int(ref_logp is not None) + algo.filters * (len(mini) - 1)
    out.update(compute.rl_step_metrics(g, b, n_params=p.n_params, no_grad_passes=passes, epochs=algo.epochs))
    return out, ctls, g
