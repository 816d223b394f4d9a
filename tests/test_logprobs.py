"""Chunked log-probs and entropies against a plain full-vocabulary computation."""

import math

import pytest
import torch
from torch.testing import assert_close
from transformers import LlamaConfig, LlamaForCausalLM

from sftrl.lm.logprobs import _head, token_logp, token_logp_and_entropy
from tests.tolerances import logp_tolerance


def small_llama(seed=0):
    cfg = LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                      tie_word_embeddings=True, pad_token_id=0)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(cfg)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 32, (5, 12), generator=g)
    mask = torch.ones(5, 12)
    mask[1, :3] = 0                     # left padding in the prompt part
    mask[2, :1] = 0
    mask[3, 10:] = 0                    # right padding in the completion part
    ids[mask == 0] = 0
    return ids, mask


def plain(model, ids, mask, start, temperature=1.0):
    pos = (mask.long().cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask.long(), position_ids=pos).logits.float() / temperature
    logits = logits[:, start - 1:-1]
    logprobs = torch.log_softmax(logits, -1)
    logp = logprobs.gather(-1, ids[:, start:, None]).squeeze(-1)
    ent = -(logprobs.exp() * logprobs).sum(-1)
    return logp, ent


@pytest.mark.parametrize("chunk_rows", [1, 2, 5])
def test_chunked_equals_plain(chunk_rows):
    model, (ids, mask) = small_llama(), batch()
    logp, ent = token_logp_and_entropy(model, ids, mask, 6, temperature=0.7, chunk_rows=chunk_rows)
    ref_logp, ref_ent = plain(model, ids, mask, 6, temperature=0.7)
    real = mask[:, 6:] > 0                          # padded completion positions are never scored
    assert_close(logp[real], ref_logp[real])
    assert_close(ent[real], ref_ent[real])
    assert_close(token_logp(model, ids, mask, 6, temperature=0.7)[real], ref_logp[real])
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()


def test_chunked_gradients_equal_plain():
    model, (ids, mask) = small_llama(), batch()
    w = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) * mask[:, 6:]   # losses weigh real tokens
    logp, ent = token_logp_and_entropy(model, ids, mask, 6, chunk_rows=2)
    ((logp + 0.1 * ent) * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ref_logp, ref_ent = plain(model, ids, mask, 6)
    ((ref_logp + 0.1 * ref_ent) * w).sum().backward()
    for n, p in model.named_parameters():
        assert_close(grads[n], p.grad, msg=n)


def test_entropy_by_hand():
    hidden = torch.tensor([[[1.0, 0.0]]])                        # [1, 1, H=2]
    weight = torch.tensor([[math.log(2.0), 0.0], [0.0, 0.0], [0.0, 0.0]])   # logits ln2, 0, 0
    logp, ent = _head(hidden, torch.tensor([[0]]), weight, None, 1.0, True)
    # probs 1/2, 1/4, 1/4: entropy = 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2
    assert_close(logp, torch.tensor([[math.log(0.5)]]))
    assert_close(ent, torch.tensor([[1.5 * math.log(2.0)]]))


def test_left_padding_does_not_change_a_row():
    model, (ids, mask) = small_llama(), batch()
    row_ids, row_mask = ids[2:3, 1:], mask[2:3, 1:]                # the same row without its pad column
    alone, _ = token_logp_and_entropy(model, row_ids, row_mask, 5)
    in_batch, _ = token_logp_and_entropy(model, ids, mask, 6)
    # sdpa kernels differ slightly by shape: the same arithmetic in another order (tests/tolerances.py)
    assert_close(alone[0], in_batch[2], rtol=0, atol=logp_tolerance(model, row_ids, row_mask))
