"""Fully sharded data parallelism (FSDP2, `dist.strategy=fsdp`): each rank keeps 1/world of every
parameter, gradient and AdamW moment instead of a full copy.

Owns: sharding a policy (`shard_model`), full weights for generation (`full_weights`), full state
dicts for checkpoints and the saved model, and `matched`, which keeps every rank's number of
forward/backward passes equal. The objective is the replicated one (`sftrl.parallel.dist`): each rank's
loss is its share of the global sum, so gradients are *summed* over ranks (FSDP2 averages by
default; the divide factor is set to 1 here) and clipping sees the global norm of the shards.

Rules a sharded model imposes on its callers, and how this module meets them:
- every forward and backward through a sharded module is a collective (all-gather of the layer's
  weights, reduce-scatter of its gradients), so all ranks must run the same number of them:
  loops over a rank's own micro-batches go through `matched`, which pads the shorter ones with
  idle passes (zero loss), or `sftrl.train.forward.each`, which runs those passes itself;
- generation runs a different number of decode steps on each rank, so it must run no collective
  at all: `full_weights` gathers every layer once, on every rank, and generation then uses plain
  tensors (the direct loop reads the layers' weights; the hf loop's forwards find them gathered);
- the root group (embeddings, final norm, lm head) stays gathered from forward to backward,
  because `logprobs` applies the lm head to the hidden states outside the model's forward.
With one process nothing is sharded and every function here is the identity.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.distributed as tdist

from sftrl.parallel import dist


def _fsdp_modules(model) -> list:
    from torch.distributed.fsdp import FSDPModule
    inner = getattr(model, "peft", model)                      # models.AdaptersOff holds its model
    return [m for m in inner.modules() if isinstance(m, FSDPModule)] if isinstance(inner, torch.nn.Module) else []


def is_sharded(model) -> bool:
    """Whether `model` (or the model an `AdaptersOff` reference wraps) was sharded by `shard_model`."""
    return bool(_fsdp_modules(model))


def shard_model(model, layers: list):
    """Shard `model` in place with FSDP2 over every rank: one group per decoder layer in `layers`
    (`sftrl.lm.models.shard` finds them), and the root (embeddings, final norm, lm head, tied or
    not). Gradients are summed over ranks, not averaged. Returns `model`. With one process,
    returns it untouched."""
    if dist.world()[1] == 1:
        return model
    from torch.distributed.fsdp import fully_shard
    for layer in layers:
        fully_shard(layer, reshard_after_forward=True)
    fully_shard(model, reshard_after_forward=False)   # see the module docstring: the head is used after forward
    for m in _fsdp_modules(model):
        m.set_force_sum_reduction_for_comms(True)    # plain SUM collectives (gloo has no AVG/PREMUL_SUM) ...
        m.set_gradient_divide_factor(1.0)            # ... and no division: the global gradient is a sum
    # The root's outputs (logits, hidden states) are views; nothing here changes them in place.
    warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")
    return model


def _set_resharding(model, *, training: bool) -> None:
    """Training: layers free their gathered weights after forward, the root keeps them (module
    docstring). Generation: nothing is freed, so forwards run no collective."""
    mods = _fsdp_modules(model)
    for m in mods:
        m.set_reshard_after_forward(training and m is not mods[0], recurse=False)   # mods[0] is the root


@contextmanager
def full_weights(model):
    """Every rank gathers all of `model`'s weights once on entry and frees them on exit, so code
    inside may run any number of forwards (or read the weights) without collectives. Every rank
    must enter together. No-op for a model that is not sharded."""
    mods = _fsdp_modules(model)
    if not mods:
        yield model
        return
    for m in mods:
        m.unshard()
    _set_resharding(model, training=False)
    try:
        yield model
    finally:
        for m in mods:
            m.reshard()
        _set_resharding(model, training=True)


def matched(model, parts: list) -> list:
    """`parts` padded with None to the longest list of any rank, when `model` is sharded: a loop
    that runs one forward (and backward) per entry then runs as many collectives on every rank,
    with `idle_pass` for the None entries. Unchanged otherwise."""
    if not is_sharded(model):
        return list(parts)
    n = torch.tensor([len(parts)], dtype=torch.long)
    tdist.all_reduce(n, op=tdist.ReduceOp.MAX)
    return list(parts) + [None] * (int(n) - len(parts))


def full_state_dict(model) -> dict:
    """The model's full (gathered) state dict on CPU: on rank 0 for a sharded model (other ranks
    get {}; every rank must call), else `model.state_dict()`."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_full_state_dict(model, state: dict) -> None:
    """Inverse of `full_state_dict`; every rank passes the full dict and keeps its own shards."""
    if not is_sharded(model):
        model.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))


def optimizer_state(model, opt) -> dict:
    """The optimiser's state dict, gathered to rank 0 (keyed by parameter name) when `model` is
    sharded, else `opt.state_dict()`."""
    if not is_sharded(model):
        return opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
    return get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model, opt, state: dict) -> None:
    """Inverse of `optimizer_state`; every rank passes the full dict."""
    if not is_sharded(model):
        opt.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    set_optimizer_state_dict(model, opt, state, options=StateDictOptions(full_state_dict=True))


def global_norm(norm) -> float:
    """`clip_grad_norm_`'s result as a float; over sharded gradients it is a replicated DTensor
    that already holds the norm of all shards."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
