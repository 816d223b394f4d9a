"""Forward passes of a training step over selected rows: micro-batching, length-sorted rows, and
the idle passes that keep sharded ranks in step.

Owns: `micro_rows` (rows in micro-batches, longest completions first), `forward` and
`forward_rows` (log-probs and entropies of rows, computed only as wide as their longest
completion), `each` and `idle_pass` (a sharded model runs one collective per forward, so every
rank must run as many: the shorter lists are padded with zero-loss passes), and `seq_mean`.
"""

from __future__ import annotations

import torch

from sftrl.lm import logprobs
from sftrl.parallel.sharding import matched


def seq_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row mean of x over mask, detached: [n, T] -> [n, 1]."""
    return ((x.detach() * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1.0))


def micro_rows(lengths: torch.Tensor, size: int | None) -> list[torch.Tensor]:
    """Local row indices in micro-batches of `size`, longest completions first, so each micro-batch
    is only as wide as its own longest completion (weights make the order irrelevant)."""
    if not len(lengths):
        return []
    order = torch.argsort(lengths, descending=True, stable=True)               # [n]
    return list(order.split(size or len(order)))


def forward(model, ids, attn, Lp: int, rows: torch.Tensor, temperature: float, entropy: bool = True):
    """(logp, ent) [n, T] of `rows`, computed only up to the longest completion among them."""
    T = ids.shape[1] - Lp
    width = max(1, int(attn[rows, Lp:].sum(1).max()))
    logp, ent = logprobs.token_logp_and_entropy(model, ids[rows, :Lp + width], attn[rows, :Lp + width], Lp,
                                                temperature=temperature, with_entropy=entropy)
    pad = (0, T - width)
    return torch.nn.functional.pad(logp, pad), torch.nn.functional.pad(ent, pad)


def forward_rows(model, ids, attn, Lp: int, lengths, chunk: int, temperature: float, entropy: bool = True,
                 rows: torch.Tensor | None = None):
    """(logp, ent) [N, T] of `rows` (default: every row; the others stay 0), in length-sorted
    chunks (no gradients needed by callers)."""
    logp = torch.zeros(ids.shape[0], ids.shape[1] - Lp, device=ids.device)
    ent = torch.zeros_like(logp)
    rows = torch.arange(ids.shape[0]) if rows is None else rows
    for local in each(model, micro_rows(lengths[rows], chunk)):
        sel = rows[local]
        logp[sel], ent[sel] = forward(model, ids, attn, Lp, sel, temperature, entropy)
    return logp, ent


def each(model, parts: list):
    """This rank's `parts`, then (sharded) the idle passes `matched` asks for, run here: for a
    loop with one forward (and backward) of `model` per part."""
    for part in matched(model, parts):
        if part is None:
            idle_pass(model)
        else:
            yield part


def idle_pass(model) -> None:
    """One forward (and a backward when gradients are enabled) of a one-token row with zero loss:
    the collectives of a micro-batch without changing any gradient."""
    device = next(model.parameters()).device
    ids = torch.zeros(1, 2, dtype=torch.long, device=device)                  # [1, 2]
    logp = logprobs.token_logp(model, ids, torch.ones_like(ids), 1)                      # [1, 1]
    if torch.is_grad_enabled():
        (logp.sum() * 0.0).backward()
