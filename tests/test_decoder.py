"""The layer-by-layer training forward (`sftrl.lm.decoder.completion_hidden`) equals the model's own
forward, values and gradients, with each distinct prompt run once; Llama, Qwen2 (grouped-query
attention, q/k/v biases) and LoRA-wrapped models."""

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sftrl.lm import decoder
from sftrl.config.schema import LoraConfig
from sftrl.lm.logprobs import token_logp_and_entropy
from sftrl.lm.models import add_lora
from tests.tolerances import U, entropy_tolerance, logp_tolerance, summed_terms

V = 40


def _seeded(model_class, config, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config)


def llama(seed=0):
    return _seeded(LlamaForCausalLM, LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0), seed)


def qwen2(seed=0):
    return _seeded(Qwen2ForCausalLM, Qwen2Config(
        vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False, pad_token_id=0), seed)


def lora(seed=0):
    targets = ["q_proj", "v_proj", "up_proj"]
    model = add_lora(llama(seed), LoraConfig(enabled=True, r=4, alpha=8, target_modules=targets))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)                 # non-zero adapters: they change the output
    return model


def grpo_like_batch(seed=0, prompts=3, group=4, Lp=7, T=9):
    """prompts x group rows [left-padded prompt | right-padded completion]; rows of a group share
    their prompt; prompt 1 has 3 pad columns, prompt 2 one."""
    g = torch.Generator().manual_seed(seed)
    p_ids = torch.randint(3, V, (prompts, Lp), generator=g)
    p_mask = torch.ones(prompts, Lp)
    p_mask[1, :3] = 0
    p_mask[2, :1] = 0
    p_ids[p_mask == 0] = 0
    N = prompts * group
    c_ids = torch.randint(3, V, (N, T), generator=g)
    lengths = torch.randint(1, T + 1, (N,), generator=g)
    c_mask = (torch.arange(T)[None] < lengths[:, None]).float()
    c_ids[c_mask == 0] = 0
    ids = torch.cat([p_ids.repeat_interleave(group, 0), c_ids], 1)
    mask = torch.cat([p_mask.repeat_interleave(group, 0), c_mask], 1)
    return ids, mask, Lp


def hf_hidden(model, ids, mask, Lp):
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    base = decoder.base_model(model)
    return base.model(input_ids=ids, attention_mask=mask.long(), position_ids=pos).last_hidden_state[:, Lp - 1:-1]


@pytest.mark.parametrize("make", [llama, qwen2, lora], ids=["llama", "qwen2-gqa-bias", "llama-lora"])
def test_hidden_states_and_gradients_equal_the_model_forward(make):
    model, (ids, mask, Lp) = make(), grpo_like_batch()
    parts = decoder.parts(model)
    assert parts is not None
    real = mask[:, Lp:] > 0                                   # positions whose next token is real
    w = torch.rand(real.shape, generator=torch.Generator().manual_seed(5)) * real   # [N, T]
    ours = decoder.completion_hidden(parts, ids, mask, Lp)   # [N, T, D]
    ref = hf_hidden(model, ids, mask, Lp)
    assert ours.shape == ref.shape
    # the two paths do the same arithmetic in another order: hidden states to n u max|h| (n: the dot
    # products along the path), gradients to n u max|g| (n adds the tokens summed), tests/tolerances.py
    n = summed_terms(decoder.base_model(model), 0, ids.shape[1])
    assert_close(ours[real], ref[real], rtol=0, atol=n * U * float(ref[real].detach().abs().max()))
    probe = torch.randn(ours.shape[-1], generator=torch.Generator().manual_seed(6))
    (ours @ probe * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    (ref @ probe * w).sum().backward()
    assert set(grads) == {n for n, p in model.named_parameters() if p.grad is not None}
    n_grad = n + float(real.sum())
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert_close(grads[name], p.grad, rtol=0, atol=n_grad * U * float(p.grad.abs().max())), name


def test_each_distinct_prompt_runs_once():
    model, (ids, mask, Lp) = llama(), grpo_like_batch(prompts=3, group=4)
    seen = []
    hook = model.model.embed_tokens.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    decoder.completion_hidden(decoder.parts(model), ids, mask, Lp)
    hook.remove()
    assert seen == [(3, Lp), (12, ids.shape[1] - Lp)]        # 3 prompts once, 12 completions
    # rows in any order, with a duplicated row: the same values row by row
    order = torch.tensor([5, 0, 11, 5, 7, 2])
    a = decoder.completion_hidden(decoder.parts(model), ids[order], mask[order], Lp)
    b = decoder.completion_hidden(decoder.parts(model), ids, mask, Lp)[order]
    real = mask[order, Lp:] > 0                               # other batch shapes: other kernel blocking
    n = summed_terms(model, 0, ids.shape[1])
    assert_close(a[real], b[real], rtol=0, atol=n * U * float(b[real].abs().max()))


def test_token_logprobs_take_this_forward_and_fall_back_under_checkpointing():
    model, (ids, mask, Lp) = llama(), grpo_like_batch()
    calls = []
    hook = model.model.register_forward_hook(lambda *a: calls.append(1))     # the model's own forward
    logp, ent = token_logp_and_entropy(model, ids, mask, Lp)
    assert not calls                                          # layer-by-layer, not model.model(...)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert decoder.training_parts(model) is None and decoder.parts(model) is not None
    model.train()
    logp2, ent2 = token_logp_and_entropy(model, ids, mask, Lp)
    hook.remove()
    assert calls                                              # the model's forward recomputes in backward
    real = mask[:, Lp:] > 0
    assert_close(logp[real], logp2[real], rtol=0, atol=logp_tolerance(model, ids, mask))
    assert_close(ent[real], ent2[real], rtol=0, atol=entropy_tolerance(model, ids, mask))


def test_rope_in_pairs_equals_rotate_half():
    """Reordering q/k rows into (i, i + hd/2) pairs turns Llama's rotate-half RoPE into one complex
    multiply; undoing the order gives the rotate-half result."""
    g = torch.Generator().manual_seed(0)
    n, q, heads, hd = 2, 5, 3, 8
    x = torch.randn(n, q, heads, hd, generator=g)
    angle = torch.rand(n, q, 1, hd // 2, generator=g) * 6
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)   # Llama's layout
    expect = decoder.rotate(x, cos, sin)
    order = decoder._pairs(heads, hd)                         # [heads*hd]
    paired = x.reshape(n, q, -1)[..., order].view(n, q, heads, hd)
    got = decoder._complex_rope(paired, torch.polar(torch.ones_like(angle), angle))
    back = torch.empty_like(got.reshape(n, q, -1))
    back[..., order] = got.reshape(n, q, -1)
    assert_close(back.view(n, q, heads, hd), expect)


def test_lora_layers_run_as_summed_weights_and_the_reference_is_the_base_model_exactly():
    """A LoRA layer's projections run as one matmul with weight W + scale * B @ A (peft's own
    delta), none of peft's module forwards is called; with the adapters off (the KL reference,
    `AdaptersOff`) the weights are the base model's own tensors, so its log-probs equal the plain
    model's bit for bit, and while the adapters are still zero the policy's do too."""
    from sftrl.lm.models import AdaptersOff
    plain, (ids, mask, Lp) = llama(), grpo_like_batch()
    fresh = add_lora(llama(), LoraConfig(enabled=True, r=4, alpha=8, target_modules="all-linear"))
    want = token_logp_and_entropy(plain, ids, mask, Lp)[0]
    assert torch.equal(token_logp_and_entropy(fresh, ids, mask, Lp)[0], want)        # B = 0: W + 0 = W

    model = lora()
    calls = []
    hooks = [m.register_forward_hook(lambda *a: calls.append(1)) for n, m in model.named_modules()
             if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    lay = decoder.parts(model)[0].layers[0]
    fz = decoder.fused(lay, gate_up=False)
    q = lay.self_attn.q_proj
    expect = q.base_layer.weight + q.scaling["default"] * q.lora_B["default"].weight @ q.lora_A["default"].weight
    assert_close(fz.qkv[:q.out_features].sort(0).values, expect.detach().sort(0).values, rtol=0, atol=0)
    logp = token_logp_and_entropy(model, ids, mask, Lp)[0]
    ref = token_logp_and_entropy(AdaptersOff(model), ids, mask, Lp)[0]
    assert not calls                                          # no peft module forward on either path
    assert torch.equal(ref, want)                             # adapters off: the base weights exactly
    assert not torch.equal(logp, want)                        # adapters on: they change the output
    assert all(not m.disable_adapters for m in model.modules() if hasattr(m, "lora_A"))   # restored after
    for h in hooks:
        h.remove()


def test_lora_dropout_in_training_falls_back_to_the_modules():
    model = add_lora(llama(), LoraConfig(enabled=True, r=4, alpha=8, dropout=0.1, target_modules="all-linear"))
    lay = decoder.parts(model)[0].layers[0]
    model.train()
    assert decoder.fused(lay, gate_up=False) is None          # dropout acts on the adapter input only
    model.eval()
    assert decoder.fused(lay, gate_up=False) is not None      # inactive in eval: summed as usual
