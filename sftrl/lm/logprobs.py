"""Per-token log-probs and entropies of completion tokens, from one forward pass.

Owns: `token_logp_and_entropy` and `token_logp`. Completions start at a common column
(`completion_start` = width of the left-padded prompts), so position j-1's logits score token j.
The lm-head, log-softmax, gather and entropy run in row chunks; under autograd each chunk is
recomputed in backward (checkpointing), so at most one chunk's [n, T, V] tensor is alive at a
time instead of the full [N, T, V] plus its log-softmax copy.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from sftrl.lm import decoder as direct
from sftrl.lm.decoder import base_model
from sftrl.lm.models import AdaptersOff
from sftrl.parallel import sharding

CHUNK_ELEMENTS = 2 ** 24
"""Rows per chunk are chosen so one chunk's logits hold about this many floats (64 MiB fp32)."""


def _head(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias, temperature: float,
          with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    logits = torch.nn.functional.linear(hidden, weight, bias).float() / temperature   # [n, T, V]
    logz = torch.logsumexp(logits, -1)                                                 # [n, T]
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz                 # [n, T]
    if not with_entropy:
        return logp, torch.zeros_like(logp)
    probs = torch.softmax(logits, -1)                                                  # [n, T, V]
    ent = logz - (probs * logits).sum(-1)                                              # [n, T]
    return logp, ent


def _positions(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)                          # [N, L]


def _hidden(model, decoder, input_ids, attention_mask, pos, completion_start: int) -> torch.Tensor:
    """Hidden states after the final norm at positions completion_start-1 .. L-2 [N, T, H]. A
    sharded model is called through its root, whose hooks gather the weights (`sftrl.parallel.sharding`;
    its own lm head scores one position); a Llama-style one runs layer by layer with each distinct
    prompt once (`sftrl.lm.decoder`); any other through its decoder."""
    mask = attention_mask.long()
    if sharding.is_sharded(model):
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=pos, logits_to_keep=1,
                    output_hidden_states=True)
        return out.hidden_states[-1][:, completion_start - 1:-1]     # transformers ties it to last_hidden_state
    dec_parts = direct.training_parts(model)
    if dec_parts is not None:
        return direct.completion_hidden(dec_parts, input_ids, attention_mask, completion_start)
    return decoder(input_ids=input_ids, attention_mask=mask, position_ids=pos).last_hidden_state[:, completion_start - 1:-1]


def token_logp_and_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                           completion_start: int, *, temperature: float = 1.0,
                           with_entropy: bool = True, chunk_rows: int | None = None):
    """(logp [N, T], entropy [N, T]) of tokens input_ids[:, completion_start:], where the entropy
    is of the full temperature-scaled next-token distribution (not of the sampled token)."""
    if isinstance(model, AdaptersOff):            # a LoRA policy's reference: its own layers, adapters off
        with model.off():
            return token_logp_and_entropy(model.peft, input_ids, attention_mask, completion_start,
                                          temperature=temperature, with_entropy=with_entropy,
                                          chunk_rows=chunk_rows)
    N, L = input_ids.shape
    T = L - completion_start
    pos = _positions(attention_mask)
    targets = input_ids[:, completion_start:]                                          # [N, T]
    base = base_model(model)
    decoder, head = getattr(base, "model", None), getattr(base, "lm_head", None)
    if decoder is None or head is None:                     # other architectures: plain forward
        logits = model(input_ids=input_ids, attention_mask=attention_mask.long(),
                       position_ids=pos).logits[:, completion_start - 1:-1].float() / temperature
        logz = torch.logsumexp(logits, -1)
        logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
        ent = logz - (torch.softmax(logits, -1) * logits).sum(-1)
        return logp, ent
    hidden = _hidden(model, decoder, input_ids, attention_mask, pos, completion_start)   # [N, T, H]
    V = head.weight.shape[0]
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // max(1, T * V))
    logps, ents = [], []
    for i in range(0, N, rows):
        args = (hidden[i:i + rows], targets[i:i + rows], head.weight, head.bias, temperature, with_entropy)
        if torch.is_grad_enabled() and rows < N:
            lp, en = checkpoint(_head, *args, use_reentrant=False)
        else:
            lp, en = _head(*args)
        logps.append(lp)
        ents.append(en)
    return torch.cat(logps), torch.cat(ents)


def token_logp(model, input_ids, attention_mask, completion_start: int, *, temperature: float = 1.0):
    """Log-probs [N, T] only (no entropy work)."""
    return token_logp_and_entropy(model, input_ids, attention_mask, completion_start,
                                  temperature=temperature, with_entropy=False)[0]
