"""What a checkpoint holds: everything an exact resume needs, and putting it back.

Owns: `state_of` and `restore`. Where checkpoints live and how they are written safely is
`sftrl.train.checkpoints`.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from sftrl.algos import entropy
from sftrl.algos.algo import Controllers
from sftrl.algos.kl_control import kl_controller_from_state, kl_controller_state
from sftrl.lm.models import AdaptersOff, is_lora
from sftrl.parallel import dist, sharding
from sftrl.train.session import Session, frozen_reference


def state_of(s: Session) -> dict:
    """Weights, optimisers and schedules, every RNG stream, data positions, controllers, the SFT
    buffer and step counters (every process must call: sharded state is gathered)."""
    st = s.state
    return {"step": st.step, "kind_steps": dict(st.kind_steps),
            "model": sharding.full_state_dict(s.model),
            "ref": sharding.full_state_dict(s.ref) if isinstance(s.ref, torch.nn.Module) else None,
            "optimizers": s.optims.state(),
            "rngs": {"sample": s.rngs.sample.get_state(), "eval": s.rngs.eval.get_state(),
                     "torch": torch.get_rng_state(),
                     # each process samples its own completions: every rank's streams, in rank order
                     "by_rank": dist.gather_objects([(s.rngs.sample.get_state(), torch.get_rng_state())])},
            "stream": s.streams.train.state(), "expert_stream": s.streams.expert.state(),
            "entropy": entropy.controller_state(st.ctls.entropy), "kl": kl_controller_state(st.ctls.kl),
            "buffer": st.buffer.state(),
            "skipped": (st.skipped, st.skipped_run)}


def restore(s: Session, state: dict) -> None:
    """Inverse of `state_of` on a freshly built session of the same config (every process loads
    the full state; a sharded model keeps its own shards)."""
    st = s.state
    st.step, st.kind_steps = state["step"], dict(state["kind_steps"])
    sharding.load_full_state_dict(s.model, state["model"])
    if state["ref"] is not None:                       # a copy (LoRA: merged when its adapters had moved)
        ref = frozen_reference(s.model, s.fresh_policy)
        sharding.load_full_state_dict(ref, state["ref"])
        s.policy = replace(s.policy, ref=ref)
    elif is_lora(s.model) and st.kind_steps.get("rl"):
        s.policy = replace(s.policy, ref=AdaptersOff(s.model))
    s.optims.pending = dict(state["optimizers"])
    rank, size = dist.world()
    by_rank = state["rngs"].get("by_rank")             # absent in checkpoints of older versions
    sample, torch_rng = by_rank[rank] if by_rank and len(by_rank) == size else \
        (state["rngs"]["sample"], state["rngs"]["torch"])
    s.rngs.sample.set_state(sample)
    s.rngs.eval.set_state(state["rngs"]["eval"])
    torch.set_rng_state(torch_rng)
    s.streams.train.load_state(state["stream"])
    s.streams.expert.load_state(state["expert_stream"])
    kl = kl_controller_from_state(state["kl"]) if "kl" in state else st.ctls.kl   # older checkpoints: fixed beta
    st.ctls = Controllers(entropy.controller_from_state(state["entropy"]), kl)
    st.buffer.load_state(state["buffer"], {p.id: p for p in s.train_problems})
    st.skipped, st.skipped_run = state["skipped"]
