"""Sampling completions: G per prompt, prompt-major rows, with an explicit torch.Generator.

Owns: `sample` (a KV-cached decode loop over a Hugging Face causal LM), returning a
`sftrl.batch.Rollout`. It does not score, and it does not compute the log-probs used in the loss:
those are recomputed by the training forward (`sftrl.lm.logprobs`) so sampler and learner never
disagree numerically.

Why not `model.generate`: it cannot take a generator (seeds would not pin sampling), and three
things here make sampling cheaper: the prompt is prefilled once per prompt and its cache is
repeated G times; rows that have finished leave the batch (in batches of rows, so the cache is
not copied at every step); and for Llama-style decoders (Llama, SmolLM2, Qwen2, with or without
LoRA) the loop calls the model's own layers (`sftrl.lm.decoder`) on a key/value cache allocated once, without the
per-step mask, position and cache rebuilding of a full `model(...)` call. Other architectures
take the same loop through `model(...)` with a `DynamicCache`. Both loops compute the same
next-token distributions and draw from the generator in the same order.
"""

from __future__ import annotations

import inspect
from functools import partial

import torch
from transformers import DynamicCache

from sftrl.batch import Rollout, encode_prompts
from sftrl.lm import decoder as direct

ENGINES = ("auto", "direct", "hf")
COMPACT_FRACTION = 0.125
"""Finished rows stay in the batch until they are this fraction of it; then the batch is compacted."""


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
           gen: torch.Generator | None = None, engine: str = "auto") -> Rollout:
    """Sample `n` completions for each prompt (greedy or temperature/top-p), stopping at EOS.

    `engine`: "direct" runs the decoder layers on a preallocated cache (Llama-style models only),
    "hf" calls `model(...)` each step, "auto" picks "direct" when the model supports it."""
    if engine not in ENGINES:
        raise ValueError(f"unknown rollout engine {engine!r}; use one of {', '.join(ENGINES)}")
    parts = direct.parts(model)
    if engine == "direct" and parts is None:
        raise ValueError(f"rollout engine 'direct' needs a Llama-style model ({', '.join(direct.DIRECT_TYPES)}); "
                         f"use engine='hf' or 'auto' for {type(model).__name__}")
    device = next(model.parameters()).device
    pad_id, eos_id = tokenizer.pad_token_id, tokenizer.eos_token_id
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)        # [P, Lp]
    N = prompt_ids.shape[0] * n
    pick = partial(_pick, greedy=greedy, temperature=temperature, top_p=top_p, gen=gen)
    was_training = model.training
    model.eval()
    try:
        if parts is not None and engine != "hf":
            tokens, lengths, finished = _decode_direct(parts, prompt_ids, prompt_mask, n, max_new_tokens,
                                                       pad_id, eos_id, pick)
        else:
            tokens, lengths, finished = _decode_hf(model, prompt_ids, prompt_mask, n, max_new_tokens,
                                                   pad_id, eos_id, pick)
    finally:
        model.train(was_training)

    T = int(lengths.max().item()) if N else 0
    steps = torch.arange(T, device=device)
    completion_mask = (steps[None, :] < lengths[:, None]).float()               # [N, T]
    completion_ids = tokens[:, :T].masked_fill(completion_mask == 0, pad_id)    # [N, T]
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Rollout(prompt_ids=prompt_ids.repeat_interleave(n, 0), prompt_mask=prompt_mask.repeat_interleave(n, 0),
                   completion_ids=completion_ids, completion_mask=completion_mask,
                   truncated=~finished, texts=texts)


def make_sampler(engine: str, tokenizer, *, max_new_tokens: int, temperature: float, top_p: float,
                 vllm_memory: float = 0.3, seed: int = 0):
    """The rollout engine `engine` bound once: `fn(model, prompts, n, gen) -> Rollout` sampling n
    completions per prompt. auto, direct and hf are `sample`'s loops; vllm a colocated engine
    (`sftrl.lm.rollout_vllm`), started on first use."""
    if engine == "vllm":
        from sftrl.lm.rollout_vllm import LazyVLLM
        return LazyVLLM(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                        gpu_memory_utilization=vllm_memory, seed=seed)
    if engine not in ENGINES:
        raise ValueError(f"unknown rollout engine {engine!r}; use one of {', '.join(ENGINES + ('vllm',))}")

    def draw(model, prompts: list[str], n: int, gen: torch.Generator | None) -> Rollout:
        return sample(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature,
                      top_p=top_p, gen=gen, engine=engine)
    return draw


def _cache_keyword(model) -> str:
    """The name under which this transformers version passes and returns the KV cache
    (`cache` from 5.24, `past_key_values` before)."""
    base = direct.base_model(model)
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _decode_hf(model, prompt_ids, prompt_mask, n: int, max_new_tokens: int, pad_id: int, eos_id: int, pick):
    """(tokens [N, max_new], lengths [N], finished [N]) through `model(...)` and a DynamicCache."""
    device = prompt_ids.device
    N = prompt_ids.shape[0] * n

    # -- prefill once per prompt, then repeat the cache for the G samples -----------------
    positions = (prompt_mask.cumsum(1) - 1).clamp(min=0).long()                  # [P, Lp]
    key = _cache_keyword(model)
    out = model(input_ids=prompt_ids, attention_mask=prompt_mask.long(), position_ids=positions,
                use_cache=True, logits_to_keep=1, **{key: DynamicCache()})
    cache = out[key]
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
        tok = pick(logits)
        done = _record(tokens, lengths, finished, rows, tok, t, eos_id)         # [n_live]
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):                                                    # drop finished rows
            keep = (~done).nonzero().squeeze(1)                                 # [n_keep]
            cache.batch_select_indices(keep)
            rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
        attn = torch.cat([attn, attn.new_ones(len(rows), 1)], 1)                # [n_live, L+1]
        out = model(input_ids=tok[:, None], attention_mask=attn.long(), position_ids=next_pos[:, None],
                    use_cache=True, **{key: cache})
        cache = out[key]
        logits = out.logits[:, -1]                                              # [n_live, V]
        next_pos = next_pos + 1
    return tokens, lengths, finished


# -- the direct loop: the model's own layers on a cache allocated once --------------------------
def _decode_direct(parts, prompt_ids, prompt_mask, n: int, max_new_tokens: int, pad_id: int, eos_id: int, pick):
    """(tokens [N, max_new], lengths [N], finished [N]) from the decoder's layers on a cache of
    Lp + max_new_tokens columns, allocated once. Finished rows are computed on (and ignored) until
    they are COMPACT_FRACTION of the batch; sampling always sees the live rows in output order."""
    decoder, head = parts
    device = prompt_ids.device
    P, Lp = prompt_ids.shape
    N, C = P * n, Lp + max_new_tokens
    layers = list(decoder.layers)
    fused = [direct.fused(layer, gate_up=True) for layer in layers]
    kv_heads = direct.kv_heads(decoder)
    h = decoder.embed_tokens(prompt_ids)                                        # [P, Lp, D]
    table = direct.Rope.table(decoder, C, h)                                    # angles at 0..C-1

    # -- prefill the P prompts, then repeat their keys/values into the N-row cache ---------
    valid = prompt_mask > 0                                                     # [P, Lp]
    pos = (prompt_mask.cumsum(1) - 1).clamp(min=0).long()                       # [P, Lp]
    mask = direct.prompt_mask_4d(valid)                                         # [P, 1, Lp, Lp]
    caches = []
    for layer, f in zip(layers, fused):
        kc = h.new_empty(P, kv_heads, Lp, layer.self_attn.head_dim)
        vc = torch.empty_like(kc)
        h = direct.layer(layer, f, h, table.at(pos), kc, vc, 0, mask)
        big_k = h.new_empty(N, kv_heads, C, layer.self_attn.head_dim)
        big_v = torch.empty_like(big_k)
        big_k[:, :, :Lp] = kc.repeat_interleave(n, 0)
        big_v[:, :, :Lp] = vc.repeat_interleave(n, 0)
        caches.append((big_k, big_v))
    logits = head(direct.norm(decoder.norm, h[:, -1:]))[:, 0].repeat_interleave(n, 0)   # [N, V]

    # -- decode: batch row i is output row rows[i]; `live` indexes the unfinished batch rows --
    attend = torch.zeros(N, C, dtype=torch.bool, device=device)                 # [n_b, C]
    attend[:, :Lp] = valid.repeat_interleave(n, 0)
    next_pos = attend.sum(1)                                                    # [n_b]
    tokens = torch.full((N, max_new_tokens), pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    finished = torch.zeros(N, dtype=torch.bool, device=device)
    rows = torch.arange(N, device=device)                                       # [n_b]
    live = None                                                                 # None: every batch row
    feed = torch.full((N,), pad_id, dtype=torch.long, device=device)            # [n_b]
    for t in range(max_new_tokens):
        tok = pick(logits if live is None else logits[live])                    # [n_live]
        done = _record(tokens, lengths, finished, rows if live is None else rows[live], tok, t, eos_id)
        if t == max_new_tokens - 1 or bool(done.all()):
            break
        if live is None:
            feed = tok
        else:
            feed[live] = tok
        if bool(done.any()):
            live = (torch.arange(len(rows), device=device) if live is None else live)[~done]
            if len(rows) - len(live) >= COMPACT_FRACTION * len(rows):        # drop finished rows
                col = Lp + t                                                    # columns written so far
                caches = [(_keep(k, live, col), _keep(v, live, col)) for k, v in caches]
                rows, attend, next_pos, feed = rows[live], attend[live], next_pos[live], feed[live]
                live = None
        col = Lp + t
        attend[:, col] = True
        h = decoder.embed_tokens(feed)[:, None]                                 # [n_b, 1, D]
        rope = table.at(next_pos[:, None])                                      # at [n_b, 1]
        mask = attend[:, None, None, :col + 1]                                  # [n_b, 1, 1, col+1]
        for layer, f, (kc, vc) in zip(layers, fused, caches):
            h = direct.layer(layer, f, h, rope, kc, vc, col, mask)
        logits = head(direct.norm(decoder.norm, h))[:, 0]                       # [n_b, V]
        next_pos = next_pos + 1
    return tokens, lengths, finished


def _record(tokens, lengths, finished, out_rows, tok, t: int, eos_id: int) -> torch.Tensor:
    """Write step t's tokens of output rows `out_rows` [n]; returns which of them ended (EOS) [n]."""
    tokens[out_rows, t] = tok
    lengths[out_rows] = t + 1
    done = tok == eos_id
    finished[out_rows[done]] = True
    return done


def _keep(cache: torch.Tensor, rows: torch.Tensor, width: int) -> torch.Tensor:
    """A cache [n, KV, C, hd] with only `rows`, of which only the first `width` columns are copied."""
    out = cache.new_empty(len(rows), *cache.shape[1:])
    out[:, :, :width] = cache[rows, :, :width]
    return out
