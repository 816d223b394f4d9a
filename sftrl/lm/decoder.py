"""Llama-style decoders run layer by layer on an explicit key/value cache.

Owns: recognising a decoder whose layers we can call directly (`parts`), one decoder layer over
a block of positions (`layer`), and `completion_hidden`, the training forward over prompt +
completion rows in which each distinct prompt is computed once.

Used by the rollout's decode loop (sftrl.lm.rollout) and by the log-prob forward (sftrl.lm.logprobs).
Both call the model's own modules (norms, projections, MLP activation, rotary embedding), so
they compute what `model(...)` computes, for Llama, SmolLM2 and Qwen2 (grouped-query attention,
q/k/v biases), plain or LoRA-wrapped; anything else is left to `model(...)`.

Why a separate forward for training: a GRPO batch holds G completions of each prompt, and
`model(...)` runs every prompt token once per row. Here the prompt rows are deduplicated, run
once, and their keys and values are copied into every row that shares them; gradients flow
back through the copies (an index), so the loss and its gradients are those of the plain
forward. No per-call 4D mask building, position or cache objects either.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import torch
import torch.nn.functional as F


DIRECT_TYPES = ("llama", "qwen2")
"""`config.model_type`s whose decoder layers run here (pre-norm attention + MLP, RoPE)."""
DIRECT_ROPE = ("default", "linear", "llama3")
"""RoPE variants whose angle at a position does not depend on the sequence length."""


def base_model(model):
    """The transformers model under a peft wrapper (its LoRA layers stay in), else `model`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list:
    """The decoder blocks of a causal LM (peft-wrapped or not): the units that are sharded one by one."""
    decoder = getattr(base_model(model), "model", None)
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(f"dist.strategy=fsdp needs a decoder with .model.layers (Llama, Qwen2, ...); "
                         f"{type(base_model(model)).__name__} has none; use dist.strategy=replicate")
    return list(layers)



def parts(model):
    """(decoder, lm_head) of a Llama-style causal LM whose layers run here, else None."""
    base = base_model(model)                                                     # peft: adapters stay in
    cfg, decoder, head = getattr(base, "config", None), getattr(base, "model", None), getattr(base, "lm_head", None)
    if cfg is None or decoder is None or head is None or getattr(cfg, "model_type", None) not in DIRECT_TYPES:
        return None
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {}
    if rope.get("rope_type", rope.get("type", "default")) not in DIRECT_ROPE:
        return None
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if not all(hasattr(decoder, a) for a in needed):
        return None
    for lay in decoder.layers:
        a = getattr(lay, "self_attn", None)
        if a is None or getattr(a, "sliding_window", None) or hasattr(a, "q_norm") or \
                not all(hasattr(a, x) for x in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")):
            return None
    return decoder, head


def training_parts(model):
    """`parts(model)` for the training forward; None when activation checkpointing is on (that
    forward is left to the model, which recomputes its layers in backward)."""
    base = base_model(model)
    for flag in ("is_activation_checkpointing", "is_gradient_checkpointing"):   # transformers >= 5.24, before
        if hasattr(type(base), flag):
            if getattr(base, flag):
                return None
            break
    return parts(model)


def kv_heads(decoder) -> int:
    a0 = decoder.layers[0].self_attn
    return a0.k_proj.out_features // a0.head_dim if hasattr(a0.k_proj, "out_features") else \
        decoder.config.num_key_value_heads


class Rope(NamedTuple):
    """Rotary angles at given positions, in the two layouts the layers use: cos/sin [n, 1, q, hd]
    for the rotate-half form (the model's own) and cis [n, q, 1, hd/2] = cos + i sin for the
    complex form of layers whose q/k rows we reorder (`fused`)."""

    cos: torch.Tensor
    sin: torch.Tensor
    cis: torch.Tensor

    @classmethod
    def table(cls, decoder, length: int, like: torch.Tensor) -> "Rope":
        """Angles at positions 0..length-1: cos/sin [length, hd], cis [length, hd/2]."""
        cos, sin = decoder.rotary_emb(like, torch.arange(length, device=like.device)[None])   # [1, C, hd]
        cos, sin = cos[0], sin[0]
        half = cos.shape[-1] // 2
        return cls(cos, sin, torch.complex(cos[:, :half].float(), sin[:, :half].float()))

    def at(self, pos: torch.Tensor) -> "Rope":
        """This table's angles at positions pos [n, q]."""
        return Rope(self.cos[pos][:, None], self.sin[pos][:, None], self.cis[pos][:, :, None])


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE as Llama applies it: x * cos + rotate_half(x) * sin."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


@lru_cache(maxsize=None)
def _pairs(heads: int, hd: int) -> torch.Tensor:
    """Row order that puts each head's rotate-half pairs (i, i + hd/2) side by side."""
    one = torch.stack([torch.arange(hd // 2), torch.arange(hd // 2) + hd // 2], -1).reshape(-1)   # [hd]
    return (torch.arange(heads)[:, None] * hd + one[None]).reshape(-1)                          # [heads*hd]


def linear_params(mod) -> tuple | None:
    """(weight, bias) with which `mod` computes x @ weight.T + bias: an `nn.Linear`'s own, or, for a
    peft LoRA `Linear` over one, the base weight plus each active adapter's delta (peft's
    `get_delta_weight`: scale * B @ A), so the adapters cost one small matmul per forward instead
    of two thin ones per token block, and gradients reach A and B through the sum. Adapters
    disabled: the base weight itself. None for anything else (active dropout, DoRA and other
    variants, an adapter bias, merged or fan-in-fan-out layers): the module is then called."""
    lin = torch.nn.Linear
    if type(mod) is lin:
        return mod.weight, mod.bias
    base = getattr(mod, "base_layer", None)
    if type(base) is not lin or not hasattr(mod, "get_delta_weight") or getattr(mod, "merged", True) or \
            getattr(mod, "fan_in_fan_out", False):
        return None
    if mod.disable_adapters:
        return base.weight, base.bias
    weight = base.weight
    for name in mod.active_adapters:
        if name not in mod.lora_A.keys():
            continue
        drop = mod.lora_dropout[name]
        if name in getattr(mod, "lora_variant", {}) or mod.lora_B[name].bias is not None or \
                (mod.training and not isinstance(drop, torch.nn.Identity) and drop.p > 0):
            return None
        weight = weight + mod.get_delta_weight(name)
    return weight, base.bias


class Fused(NamedTuple):
    """A layer's projections as plain (weight, bias) pairs (`linear_params`): q|k|v as one matmul
    (q and k rows reordered so that RoPE is one complex multiply; q.k is unchanged because both
    are reordered alike), gate|up as one (`gate_up`) or as two (`gate`, `up`), then `o` and `down`."""

    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    sizes: list
    gate_up: torch.Tensor | None
    gate_up_bias: torch.Tensor | None
    gate: tuple | None
    up: tuple | None
    o: tuple
    down: tuple


def fused(lay, *, gate_up: bool) -> Fused | None:
    """`Fused` of a layer whose projections are `nn.Linear`s, plain or LoRA-wrapped
    (`linear_params`); None otherwise (other MLPs, adapters that cannot be summed into the
    weight): the layer's modules are then called one by one. Built from the live weights, so
    under autograd the gradients reach them through the concatenation. `gate_up`: gate and up as
    one matmul (small decode batches); else two, whose outputs stay contiguous (cheaper
    elementwise work and backward at training sizes)."""
    a, mlp = lay.self_attn, getattr(lay, "mlp", None)
    if mlp is None or not hasattr(mlp, "act_fn") or a.head_dim % 2:
        return None
    mods = [a.q_proj, a.k_proj, a.v_proj, getattr(mlp, "gate_proj", None), getattr(mlp, "up_proj", None),
            a.o_proj, getattr(mlp, "down_proj", None)]
    params = [None if m is None else linear_params(m) for m in mods]
    if any(x is None for x in params):
        return None
    (q, qb), (k, kb), (v, vb), gate, up, o, down = params
    if len({b is None for b in (qb, kb, vb)}) > 1 or (gate[1] is None) != (up[1] is None):
        return None
    hd, dev = a.head_dim, q.device
    order = [_pairs(w.shape[0] // hd, hd).to(dev) for w in (q, k)] + [None]
    pick = (lambda t, o: t if o is None else t[o])
    bias = None if qb is None else torch.cat([pick(b, o) for b, o in zip((qb, kb, vb), order)])
    gu = torch.cat([gate[0], up[0]]) if gate_up else None
    gu_bias = None if not gate_up or gate[1] is None else torch.cat([gate[1], up[1]])
    return Fused(torch.cat([pick(w, o) for w, o in zip((q, k, v), order)]), bias,
                 [w.shape[0] for w in (q, k, v)], gu, gu_bias,
                 None if gate_up else gate, None if gate_up else up, o, down)


def norm(mod, x: torch.Tensor) -> torch.Tensor:
    """An RMSNorm module of these decoders through torch's fused kernel (same formula: fp32
    statistics, weight times the normalised input), any other norm through the module."""
    if type(mod).__name__ in ("LlamaRMSNorm", "Qwen2RMSNorm") and x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), mod.weight, mod.variance_epsilon)
    return mod(x)


def _complex_rope(x: torch.Tensor, cis: torch.Tensor) -> torch.Tensor:
    """RoPE on x [n, q, heads, hd] laid out in (i, i + hd/2) pairs: one complex multiply."""
    z = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))                 # [n, q, heads, hd/2]
    return torch.view_as_real(z * cis).flatten(-2).to(x.dtype)                  # [n, q, heads, hd]


def qkv(lay, fz: Fused | None, x: torch.Tensor, rope: Rope):
    """Queries, keys, values [n, heads, q, hd] of the normalised input x [n, q, D], RoPE applied."""
    a = lay.self_attn
    n, q, _ = x.shape
    if fz is None:
        qs, ks, vs = (t.view(n, q, -1, a.head_dim).transpose(1, 2) for t in (a.q_proj(x), a.k_proj(x), a.v_proj(x)))
        return rotate(qs, rope.cos, rope.sin), rotate(ks, rope.cos, rope.sin), vs
    qs, ks, vs = F.linear(x, fz.qkv, fz.qkv_bias).split(fz.sizes, -1)
    qs, ks = (_complex_rope(t.view(n, q, -1, a.head_dim), rope.cis).transpose(1, 2) for t in (qs, ks))
    return qs, ks, vs.view(n, q, -1, a.head_dim).transpose(1, 2)


def attend(lay, qs, ks, vs, mask) -> torch.Tensor:
    """Attention output [n, q, H*hd] of queries [n, H, q, hd] over keys/values [n, KV, k, hd]."""
    o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=lay.self_attn.scaling,
                                       enable_gqa=qs.shape[1] != ks.shape[1])   # [n, H, q, hd]
    return o.transpose(1, 2).flatten(2)


def mlp(lay, fz: Fused | None, x: torch.Tensor) -> torch.Tensor:
    """The gated MLP of the normalised input x, gate and up fused as `fz` says."""
    m = lay.mlp
    if fz is None:
        return m(x)
    if fz.gate_up is not None:
        gate, up = F.linear(x, fz.gate_up, fz.gate_up_bias).chunk(2, -1)
    else:
        gate, up = F.linear(x, *fz.gate), F.linear(x, *fz.up)
    return F.linear(m.act_fn(gate) * up, *fz.down)


def out_proj(lay, fz: Fused | None, x: torch.Tensor) -> torch.Tensor:
    """The attention output projection of x [n, q, H*hd]."""
    return lay.self_attn.o_proj(x) if fz is None else F.linear(x, *fz.o)


def layer(lay, fz, h, rope: Rope, k_cache, v_cache, col: int, mask):
    """One pre-norm decoder layer on h [n, q, D] at cache columns col..col+q-1 (decoding): writes
    the new keys and values into k_cache/v_cache [n, KV, C, hd] and attends over columns :col+q
    under mask [n, 1, q, col+q] (True = attend). `fz` is `fused(lay, gate_up=True)`."""
    qs, ks, vs = qkv(lay, fz, norm(lay.input_layernorm, h), rope)
    end = col + ks.shape[2]
    k_cache[:, :, col:end] = ks
    v_cache[:, :, col:end] = vs
    h = h + out_proj(lay, fz, attend(lay, qs, k_cache[:, :, :end], v_cache[:, :, :end], mask))
    return h + mlp(lay, fz, norm(lay.post_attention_layernorm, h))


def _train_layer(lay, fz, h, rope: Rope, mask, prefix=None):
    """One decoder layer on h [n, q, D] for training (no cache, nothing in place): attends over
    `prefix` keys/values [n, KV, p, hd] (if any) then its own; returns (h, (keys, values))."""
    qs, ks, vs = qkv(lay, fz, norm(lay.input_layernorm, h), rope)
    k_all, v_all = (ks, vs) if prefix is None else (torch.cat([prefix[0], ks], 2), torch.cat([prefix[1], vs], 2))
    h = h + out_proj(lay, fz, attend(lay, qs, k_all, v_all, mask))
    return h + mlp(lay, fz, norm(lay.post_attention_layernorm, h)), (ks, vs)


def prompt_mask_4d(valid: torch.Tensor) -> torch.Tensor:
    """[P, 1, Lp, Lp] attention of left-padded prompts (valid [P, Lp] bool): causal over real
    tokens; a pad query attends to itself too, so its (unused) output stays finite."""
    Lp = valid.shape[1]
    causal = torch.ones(Lp, Lp, dtype=torch.bool, device=valid.device).tril()
    eye = torch.eye(Lp, dtype=torch.bool, device=valid.device)
    return ((causal[None] & valid[:, None, :]) | eye[None])[:, None]


def completion_hidden(dec_parts, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      completion_start: int) -> torch.Tensor:
    """Final-norm hidden states [N, T, D] at positions completion_start-1 .. L-2 (those whose
    logits score tokens completion_start .. L-1), equal to the decoder's `last_hidden_state`
    there. Rows are [left-padded prompt | right-padded completion]; identical prompts are run
    once. Differentiable in the decoder's parameters."""
    decoder, _ = dec_parts
    Lp = completion_start
    N, L = input_ids.shape
    T = L - Lp
    device = input_ids.device
    prompts = torch.cat([input_ids[:, :Lp], attention_mask[:, :Lp].long()], 1)   # [N, 2 Lp]
    uniq, inv = torch.unique(prompts, dim=0, return_inverse=True)               # [U, 2 Lp], [N]
    p_ids, valid = uniq[:, :Lp], uniq[:, Lp:] > 0                                # [U, Lp]
    p_pos = (valid.long().cumsum(1) - 1).clamp(min=0)                           # [U, Lp]
    c_pos = valid.sum(1)[inv][:, None] + torch.arange(T, device=device)[None]   # [N, T]
    hp = decoder.embed_tokens(p_ids)                                            # [U, Lp, D]
    hc = decoder.embed_tokens(input_ids[:, Lp:])                                # [N, T, D]
    table = Rope.table(decoder, L, hp)
    p_mask = prompt_mask_4d(valid)                                              # [U, 1, Lp, Lp]
    c_mask = torch.cat([valid[inv][:, None, :].expand(N, T, Lp),
                        torch.ones(T, T, dtype=torch.bool, device=device).tril()[None].expand(N, T, T)],
                       2)[:, None]                                              # [N, 1, T, L]
    rp, rc = table.at(p_pos), table.at(c_pos)
    for lay in decoder.layers:
        fz = fused(lay, gate_up=False)
        hp, (kp, vp) = _train_layer(lay, fz, hp, rp, p_mask)
        hc, _ = _train_layer(lay, fz, hc, rc, c_mask, prefix=(kp[inv], vp[inv]))   # shared prompt keys/values
    return norm(decoder.norm, torch.cat([hp[inv, -1:], hc[:, :-1]], 1))        # [N, T, D]
