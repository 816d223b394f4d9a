"""Several processes (`accelerate launch` / `torchrun`): rank sharding, global normalisers, gradient sums.

Owns: joining the process group the launcher describes, and the few collectives that make a
multi-process step compute exactly the single-process objective on the same global batch:
- each rank takes a contiguous block of the step's problems (`shard`);
- token weightings are computed on the *global* mask (`global_weights`: masks are gathered,
  the weighting runs on all rows, each rank keeps its rows), so no normaliser depends on the
  number of processes; group advantages over the global reward matrix likewise;
- gradients are summed across ranks before clipping (`sum_gradients`), so every rank applies
  the same update to the same weights (replicated data parallelism; the optimiser state stays
  replicated too). With dist.strategy=fsdp the weights, gradients and optimiser state are sharded
  instead, and the gradient sum happens in backward (`sftrl.parallel.sharding`).
With one process every function here is the identity, so single-process runs are unchanged.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as tdist


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if tdist.is_available() and tdist.is_initialized():
        return tdist.get_rank(), tdist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def is_main_env() -> bool:
    """Rank 0 according to the launcher's environment (usable before the group is joined)."""
    return int(os.environ.get("RANK", "0")) == 0


def init_from_env(device: torch.device) -> None:
    """Join the process group when launched with WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and tdist.is_available() and not tdist.is_initialized():
        tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def launcher_overrides(env: dict) -> list[str]:
    """Config overrides the launcher asks for: `accelerate launch --use_fsdp` (ACCELERATE_USE_FSDP=true)
    means dist.strategy=fsdp. Accelerate's other FSDP_* settings are not read: sharding here is
    always one group per decoder layer plus the root (`sftrl.parallel.sharding`)."""
    return ["dist.strategy=fsdp"] if env.get("ACCELERATE_USE_FSDP", "").lower() in ("true", "1") else []


def shard(items: list) -> list:
    """This rank's contiguous block of `items` (blocks differ by at most one item)."""
    rank, size = world()
    if size == 1:
        return items
    bounds = [len(items) * r // size for r in range(size + 1)]
    return items[bounds[rank]:bounds[rank + 1]]


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, slice]:
    """All ranks' [n_r, T_r] tensors stacked in rank order (width padded with 0 to the largest),
    and the slice of this rank's rows."""
    rank, size = world()
    if size == 1:
        return x, slice(0, x.shape[0])
    shape = torch.tensor([x.shape[0], x.shape[1] if x.ndim > 1 else 1], dtype=torch.long)
    shapes = [torch.zeros_like(shape) for _ in range(size)]
    tdist.all_gather(shapes, shape)
    rows, width = max(int(s[0]) for s in shapes), max(int(s[1]) for s in shapes)
    x2 = x.reshape(x.shape[0], -1) if x.ndim > 1 else x[:, None]
    padded = x2.new_zeros(rows, width)
    padded[:x2.shape[0], :x2.shape[1]] = x2
    parts = [torch.zeros_like(padded) for _ in range(size)]
    tdist.all_gather(parts, padded.contiguous())
    full = torch.cat([p[:int(s[0])] for p, s in zip(parts, shapes)])
    start = sum(int(s[0]) for s in shapes[:rank])
    return (full if x.ndim > 1 else full[:, 0]), slice(start, start + x.shape[0])


def global_weights(weighting, mask: torch.Tensor) -> torch.Tensor:
    """`weighting` (mask [n, T] -> weights [n, T]) evaluated on the global mini-batch; this
    rank's rows. Equals weighting(mask) with one process."""
    full, rows = gather_rows(mask)
    return weighting(full)[rows, :mask.shape[1]]


def global_rows(fn, x: torch.Tensor) -> torch.Tensor:
    """`fn` of the global [P, G] matrix (e.g. an advantage estimator), this rank's rows."""
    full, rows = gather_rows(x)
    return fn(full)[rows]


def global_apply(fn, *xs: torch.Tensor) -> torch.Tensor:
    """`fn` of every rank's rows of `xs` (tensors with the same rows; widths padded with 0 to the
    largest), this rank's rows of the result, at the width of its last input. Equals fn(*xs) with
    one process (e.g. REINFORCE++'s whitening over the batch's tokens)."""
    parts = [gather_rows(x) for x in xs]
    rows = parts[0][1]
    out = fn(*(full for full, _ in parts))[rows]
    return out[:, :xs[-1].shape[1]] if out.ndim > 1 else out


def sum_gradients(model) -> None:
    """Sum every gradient across ranks (each rank's loss is its share of the global sum)."""
    if world()[1] == 1:
        return
    for p in model.parameters():
        if p.requires_grad:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            tdist.all_reduce(p.grad, op=tdist.ReduceOp.SUM)


def sum_scalars(values: dict, keys) -> dict:
    """Sum the named scalars across ranks (losses weighted with global weights add up to the
    global loss); other entries stay this rank's."""
    if world()[1] == 1:
        return values
    names = [k for k in sorted(values) if k in keys or k.startswith(tuple(k2 for k2 in keys if k2.endswith("/")))]
    t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return {**values, **dict(zip(names, t.tolist()))}


def any_rank(flag: bool) -> bool:
    """Whether `flag` holds on some rank (the same answer on all ranks)."""
    if world()[1] == 1:
        return flag
    t = torch.tensor([int(flag)], dtype=torch.long)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return bool(t)


def gather_objects(items: list) -> list:
    """Concatenation of every rank's list, in rank order (the same on all ranks)."""
    if world()[1] == 1:
        return items
    out = [None] * world()[1]
    tdist.all_gather_object(out, items)
    return [x for part in out for x in part]
