"""The KV-cached sampler against a plain, cache-free reference decoder."""

import torch

from sftrl import batch
from sftrl.lm import decoder, rollout
from sftrl.config.schema import TinyModelConfig
from sftrl.lm.models import build_char_tokenizer, tiny_model


def setup(seed=0):
    tok = build_char_tokenizer()
    model = tiny_model(TinyModelConfig(hidden_size=32, num_layers=2, num_heads=4), len(tok), seed=seed,
                       pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    return model.eval(), tok


def reference_greedy(model, tok, prompt, max_new):
    """One prompt, no padding, no cache: argmax of a full forward each step."""
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    out = []
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(input_ids=ids).logits[0, -1].argmax())
            out.append(nxt)
            if nxt == tok.eos_token_id:
                break
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    return out


def test_greedy_matches_reference_under_padding_and_row_dropping():
    model, tok = setup()
    # bias the EOS logit so that some rows stop early and are dropped from the live batch
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] += 0.3 * model.lm_head.weight.mean(0)
    prompts = ["1+2=", "12*13-4=", "7=", "3*3*3*3-1="]
    ro = rollout.sample(model, tok, prompts, greedy=True, max_new_tokens=12)
    for i, p in enumerate(prompts):
        expected = reference_greedy(model, tok, p, 12)
        n = int(ro.completion_mask[i].sum())
        assert ro.completion_ids[i, :n].tolist() == expected
        assert bool(ro.truncated[i]) == (expected[-1] != tok.eos_token_id)
        assert (ro.completion_ids[i, n:] == tok.pad_token_id).all()


def test_groups_are_prompt_major_and_seeded():
    model, tok = setup()
    prompts = ["1+2=", "5*5="]
    a = rollout.sample(model, tok, prompts, n=3, max_new_tokens=6, gen=torch.Generator().manual_seed(7))
    b = rollout.sample(model, tok, prompts, n=3, max_new_tokens=6, gen=torch.Generator().manual_seed(7))
    c = rollout.sample(model, tok, prompts, n=3, max_new_tokens=6, gen=torch.Generator().manual_seed(8))
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert a.completion_ids.shape[0] == 6
    prompt_rows = a.prompt_ids.tolist()
    assert prompt_rows[0] == prompt_rows[1] == prompt_rows[2] != prompt_rows[3] == prompt_rows[5]


def test_lengths_masks_and_decoded_texts_agree():
    model, tok = setup(1)
    ro = rollout.sample(model, tok, ["9-3="] * 4, n=2, max_new_tokens=10, gen=torch.Generator().manual_seed(0))
    for i in range(8):
        n = int(ro.lengths[i])
        ids = ro.completion_ids[i, :n].tolist()
        assert ro.texts[i] == tok.decode([t for t in ids if t not in (tok.eos_token_id, tok.pad_token_id)],
                                         skip_special_tokens=True)
        assert ro.truncated[i] == (n == 10 and ids[-1] != tok.eos_token_id)
    assert torch.equal(ro.attention_mask[:, -ro.completion_mask.shape[1]:], ro.completion_mask)


def test_top_p_tiny_keeps_only_the_argmax():
    model, tok = setup(2)
    greedy = rollout.sample(model, tok, ["4+4="], greedy=True, max_new_tokens=6)
    nucleus = rollout.sample(model, tok, ["4+4="], n=3, top_p=1e-6, max_new_tokens=6,
                             gen=torch.Generator().manual_seed(0))
    for i in range(3):
        assert nucleus.completion_ids[i].tolist() == greedy.completion_ids[0].tolist()


def test_concat_and_select_keep_rows_aligned():
    model, tok = setup()
    a = rollout.sample(model, tok, ["1="], n=2, max_new_tokens=3, gen=torch.Generator().manual_seed(0))
    b = rollout.sample(model, tok, ["123*45="], n=2, max_new_tokens=5, gen=torch.Generator().manual_seed(1))
    both = batch.concat([a, b], tok.pad_token_id)
    assert both.texts == a.texts + b.texts
    assert both.prompt_ids.shape[1] == b.prompt_ids.shape[1]
    assert tok.decode(both.prompt_ids[0][both.prompt_mask[0] > 0]) == "1="
    assert batch.group_rows(torch.tensor([1, 0]), 2).tolist() == [2, 3, 0, 1]
    picked = batch.select_rows(both, torch.tensor([2, 3]))
    assert picked.texts == b.texts


def _eos_biased(model, tok, amount=0.3):
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] += amount * model.lm_head.weight.mean(0)
    return model


def _same_rollouts(a, b):
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    assert torch.equal(a.completion_mask, b.completion_mask) and torch.equal(a.truncated, b.truncated)


def test_direct_engine_equals_the_model_call_loop():
    """The direct loop (own layers, preallocated cache, batched compaction) samples exactly what
    the `model(...)` loop samples: same distributions, same draws from the generator."""
    model, tok = setup()
    _eos_biased(model, tok)
    assert decoder.parts(model) is not None
    prompts = ["1+2=", "12*13-4=", "7=", "3*3*3*3-1="]
    for kw in ({"greedy": True}, {"temperature": 1.0}, {"temperature": 0.7, "top_p": 0.9}):
        a = rollout.sample(model, tok, prompts, n=5, max_new_tokens=20, gen=torch.Generator().manual_seed(3),
                           engine="hf", **kw)
        b = rollout.sample(model, tok, prompts, n=5, max_new_tokens=20, gen=torch.Generator().manual_seed(3),
                           engine="direct", **kw)
        _same_rollouts(a, b)
        if "temperature" in kw:                         # rows finished early: compaction was exercised
            assert 0 < int(a.truncated.sum()) < 20 and int(a.lengths.min()) < 10
    auto = rollout.sample(model, tok, prompts, n=5, max_new_tokens=20, gen=torch.Generator().manual_seed(3),
                          temperature=0.7, top_p=0.9)
    _same_rollouts(auto, b)


def test_direct_engine_handles_gqa_biases_and_lora():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    tok = build_char_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    qwen = _eos_biased(Qwen2ForCausalLM(cfg).eval(), tok, 0.5)
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None           # qkv biases, 2 KV heads
    from sftrl.config.schema import LoraConfig
    from sftrl.lm.models import add_lora
    llama, _ = setup(4)
    lora = add_lora(llama, LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"]))
    with torch.no_grad():                       # non-zero adapters, so they change the distribution
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    for model in (qwen, lora):
        assert decoder.parts(model) is not None
        a = rollout.sample(model, tok, ["1+2=", "45-6="], n=3, max_new_tokens=12,
                           gen=torch.Generator().manual_seed(1), engine="hf")
        b = rollout.sample(model, tok, ["1+2=", "45-6="], n=3, max_new_tokens=12,
                           gen=torch.Generator().manual_seed(1), engine="direct")
        _same_rollouts(a, b)


def test_engine_errors_name_the_fix():
    import pytest
    model, tok = setup()
    with pytest.raises(ValueError, match="unknown rollout engine 'fast'"):
        rollout.sample(model, tok, ["1="], engine="fast")
    from transformers import GPT2Config, GPT2LMHeadModel
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=4, n_positions=64,
                                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id))
    with pytest.raises(ValueError, match="engine='hf'"):
        rollout.sample(gpt2, tok, ["1="], engine="direct")
    ro = rollout.sample(gpt2, tok, ["1=", "22="], n=2, max_new_tokens=4, gen=torch.Generator().manual_seed(0))
    assert ro.completion_ids.shape[0] == 4        # auto falls back to the model(...) loop
