"""Sampling completions: G per prompt, prompt-major rows, with an explicit torch.Generator.

Owns: `sample` (a KV-cached decode loop over a Hugging Face causal LM) and the `Rollout` record.
It does not score, and it does not compute the log-probs used in the loss: those are recomputed
by the training forward (`sftrl.logprobs`) so sampler and learner never disagree numerically.

Why not `model.generate`: it cannot take a generator (seeds would not pin sampling), and two
things here make sampling cheaper: the prompt is prefilled once per prompt and its cache is
repeated G times, and rows that have finished are dropped from the batch as they finish.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache


@dataclass
class Rollout:
    """Token tensors of N = P*G completions; rows p*G .. p*G+G-1 belong to prompt p."""

    prompt_ids: torch.Tensor        # [N, Lp] left-padded
    prompt_mask: torch.Tensor       # [N, Lp] float
    completion_ids: torch.Tensor    # [N, T] right-padded with pad id
    completion_mask: torch.Tensor   # [N, T] float: 1 on generated tokens, EOS included
    truncated: torch.Tensor         # [N] bool: reached max_new_tokens without EOS
    texts: list[str]                # decoded completions, special tokens removed

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], 1)             # [N, Lp+T]

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], 1)           # [N, Lp+T]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(1)                                      # [N]


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [P, Lp] and float mask, without adding special tokens (templates add them)."""
    enc = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False,
                    return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device).float()


def _pick(logits: torch.Tensor, *, greedy: bool, temperature: float, top_p: float,
          gen: torch.Generator | None) -> torch.Tensor:
    """Next token per row from logits [n, V]."""
    if greedy:
        return logits.argmax(-1)                                                # [n]
    probs = torch.softmax(logits.float() / temperature, -1)                     # [n, V]
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)                       # [n, V]
        drop = sorted_p.cumsum(-1) - sorted_p > top_p                           # keep the smallest set reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)           # [n, V]
    return torch.multinomial(probs, 1, generator=gen).squeeze(1)                # [n]


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, n: int = 1, max_new_tokens: int = 64,
           temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False,
           gen: torch.Generator | None = None) -> Rollout:
    """Sample `n` completions for each prompt (greedy or temperature/top-p), stopping at EOS."""
    device = next(model.parameters()).device
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)        # [P, Lp]
    P, Lp = prompt_ids.shape
    N = P * n
    was_training = model.training
    model.eval()

    # -- prefill once per prompt, then repeat the cache for the G samples -----------------
    positions = (prompt_mask.cumsum(1) - 1).clamp(min=0).long()                  # [P, Lp]
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask.long(), position_ids=positions,
                past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)
    cache = out.past_key_values
    if n > 1:
        cache.batch_repeat_interleave(n)
    logits = out.logits[:, -1].repeat_interleave(n, 0)                          # [N, V]
    attn = prompt_mask.repeat_interleave(n, 0)                                  # [N, Lp]
    next_pos = attn.sum(1).long()                                               # [N]

    # -- decode: `rows` maps the live batch back to output rows ---------------------------
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    rows = torch.arange(N, device=device)                                       # [n_live]
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        tok = _pick(logits, greedy=greedy, temperature=temperature, top_p=top_p, gen=gen)
        tokens[rows, t] = tok
        lengths[rows] = t + 1
        done = tok == eos_id                                                    # [n_live]
        finished[rows[done]] = True
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):                                                    # drop finished rows
            keep = (~done).nonzero().squeeze(1)                                 # [n_keep]
            cache.batch_select_indices(keep)
            rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(len(rows), 1)], 1)                # [n_live, L+1]
        out = model(input_ids=tok[:, None], attention_mask=attn.long(), position_ids=next_pos[:, None],
                    past_key_values=cache, use_cache=True)
        cache = out.past_key_values
        logits = out.logits[:, -1]                                              # [n_live, V]
        next_pos = next_pos + 1
    model.train(was_training)

    T = int(lengths.max().item()) if N else 0
    steps = torch.arange(T, device=device)
    completion_mask = (steps[None, :] < lengths[:, None]).float()               # [N, T]
    completion_ids = tokens[:, :T].masked_fill(completion_mask == 0, pad_id)    # [N, T]
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(prompt_ids=prompt_ids.repeat_interleave(n, 0), prompt_mask=prompt_mask.repeat_interleave(n, 0),
                   completion_ids=completion_ids, completion_mask=completion_mask,
                   truncated=~finished, texts=texts)


# -- group bookkeeping for dynamic sampling: rows stay prompt-major ----------------------------
def _pad_to(x: torch.Tensor, width: int, value, *, left: bool) -> torch.Tensor:
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = x.new_full((x.shape[0], extra), value)
    return torch.cat([pad, x] if left else [x, pad], 1)


def select_rows(ro: Rollout, rows: torch.Tensor) -> Rollout:
    """The rollout restricted to `rows` (index tensor), in that order."""
    return Rollout(prompt_ids=ro.prompt_ids[rows], prompt_mask=ro.prompt_mask[rows],
                   completion_ids=ro.completion_ids[rows], completion_mask=ro.completion_mask[rows],
                   truncated=ro.truncated[rows], texts=[ro.texts[i] for i in rows.tolist()])


def concat(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts with different prompt/completion widths (prompts stay left-padded)."""
    Lp = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.completion_ids.shape[1] for p in parts)
    return Rollout(
        prompt_ids=torch.cat([_pad_to(p.prompt_ids, Lp, pad_id, left=True) for p in parts]),
        prompt_mask=torch.cat([_pad_to(p.prompt_mask, Lp, 0.0, left=True) for p in parts]),
        completion_ids=torch.cat([_pad_to(p.completion_ids, T, pad_id, left=False) for p in parts]),
        completion_mask=torch.cat([_pad_to(p.completion_mask, T, 0.0, left=False) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        texts=[t for p in parts for t in p.texts])


def group_rows(groups: torch.Tensor, G: int) -> torch.Tensor:
    """Row indices [len(groups) * G] of the given group indices, prompt-major."""
    return (groups[:, None] * G + torch.arange(G)[None, :]).reshape(-1)
