"""LoRA policies: only adapters train, the KL reference is the same weights with adapters off,
and the saved policy is the merged model."""

import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from sftrl.lm import logprobs
from sftrl.config import ConfigError, build_config
from sftrl.lm.models import AdaptersOff, load_policy, save_policy
from sftrl.runlog import RunDir
from sftrl.train.fit import Session, fit, run_rl_step
from tests.tolerances import logp_tolerance

sys.path.insert(0, str(Path(__file__).parent))
LORA = ["model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=8", "threads=1", "eval.k=0",
        "eval.max_new_tokens=16", "rl.rollout.max_new_tokens=16", "rl.rollout.prompts_per_step=4",
        "rl.rollout.group_size=4", "model.lora.enabled=true", "model.lora.r=4", "rl.optim.lr=1e-2",
        "rl.reward.functions=[{name: 'tests.rewards_for_tests:shorter'}]", "log.progress=off"]


def _tol(model, s) -> float:
    ro = s.last_groups.ro
    return logp_tolerance(model, ro.input_ids, ro.attention_mask)


def _logp(model, s):
    ro = s.last_groups.ro
    with torch.no_grad():                   # scored tokens only (padding is never scored)
        return logprobs.token_logp(model, ro.input_ids, ro.attention_mask, ro.prompt_ids.shape[1])[ro.completion_mask > 0]


def test_lora_trains_adapters_only_and_the_reference_is_the_base(tmp_path):
    s = Session.build(build_config({"phases": [{"kind": "rl", "steps": 2}]}, LORA), RunDir(tmp_path))
    base = {n: p.detach().clone() for n, p in s.model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in s.model.named_parameters() if "lora_" in n}
    assert lora and all(p.requires_grad == ("lora_" in n) for n, p in s.model.named_parameters())
    m1 = run_rl_step(s)
    assert isinstance(s.ref, AdaptersOff) and m1["policy/kl"] == 0.0     # adapters start at zero
    m2 = run_rl_step(s)
    assert m2["policy/kl"] > 0 and m2["grad/norm"] > 0
    now = dict(s.model.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in base.items())          # base weights frozen
    assert any(not torch.equal(now[n], p) for n, p in lora.items())      # adapters moved
    # the reference log-probs are those of the base model without adapters
    plain, _ = load_policy(build_config({}, LORA[:1] + ["model.lora.enabled=false"]).model,
                           seed=s.rngs.init_seed, device="cpu")
    tol = _tol(plain, s)                    # the adapters-off path and the plain model's (tests/tolerances.py)
    assert_close(_logp(s.ref, s), _logp(plain, s), atol=tol, rtol=0)
    assert (_logp(s.model, s) - _logp(plain, s)).abs().max() > 10 * tol


def test_lora_run_saves_adapters_and_a_merged_policy(tmp_path):
    fit(build_config({"phases": [{"kind": "rl", "steps": 2}]}, LORA), tmp_path / "r")
    assert (tmp_path / "r" / "model" / "adapter" / "adapter_config.json").is_file()
    s = Session.build(build_config({"phases": [{"kind": "rl", "steps": 2}]}, LORA), RunDir(tmp_path / "s"))
    run_rl_step(s)
    run_rl_step(s)
    save_policy(s.model, s.policy.tokenizer, tmp_path / "saved")
    merged, _ = load_policy(build_config({}, ["model.name=" + str(tmp_path / "saved")]).model, seed=0, device="cpu")
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    tol = _tol(merged, s)                   # W + BA in one matrix against W x + B(A x)
    assert_close(_logp(merged, s), _logp(s.model, s), atol=tol, rtol=0)   # merged == policy
    assert (_logp(merged, s) - _logp(s.ref, s)).abs().max() > 10 * tol     # and it did train


@pytest.mark.parametrize("override, message", [
    ("model.lora.r=0", "model.lora.r"), ("model.lora.dropout=1.5", "model.lora.dropout")])
def test_lora_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        build_config({}, [override])


def test_adapter_initialisation_follows_the_run_seed_only():
    cfg = build_config({}, LORA).model

    def adapters(seed, global_seed):
        torch.manual_seed(global_seed)             # global state must not reach the adapters
        model, _ = load_policy(cfg, seed=seed, device=torch.device("cpu"))
        return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_A" in n}
    a, b, c = adapters(0, global_seed=1), adapters(0, global_seed=2), adapters(1, global_seed=1)
    assert a and all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)


def test_after_an_sft_phase_the_lora_reference_is_the_policy_entering_rl(tmp_path):
    """An SFT phase moves the adapters; the reference of the RL phase that follows is then the
    policy as it enters RL (adapters merged into a frozen copy), as with full fine-tuning, not the
    adapter-free base: KL 0 at the first RL step, the reference's log-probs equal the policy's
    at that moment bit for bit (the same base + delta sums), and it survives a checkpoint resume."""
    from sftrl.train.fit import run_sft_step
    from sftrl.train.state import restore, state_of
    cfg = build_config({"phases": [{"kind": "sft", "steps": 2}, {"kind": "rl", "steps": 2}]},
                       LORA + ["sft.optim.lr=1e-2", "sft.batch_size=4"])
    s = Session.build(cfg, RunDir(tmp_path / "a"))
    run_sft_step(s)
    run_sft_step(s)
    s.state.step, s.state.kind_steps = 2, {"sft": 2}
    m1 = run_rl_step(s)
    assert not isinstance(s.ref, AdaptersOff) and m1["policy/kl"] == 0.0
    assert not any("lora_" in n for n, _ in s.ref.named_parameters())
    state = state_of(s)                       # taken after one RL step: the policy has moved on
    r = Session.build(cfg, RunDir(tmp_path / "b"))
    restore(r, state)
    assert not isinstance(r.ref, AdaptersOff)
    for (n, a), (_, b) in zip(s.ref.named_parameters(), r.ref.named_parameters()):
        assert torch.equal(a, b), n
    base = AdaptersOff(s.model)               # the adapter-free base is another policy here
    assert (_logp(s.ref, s) - _logp(base, s)).abs().max() > 10 * _tol(s.ref, s)


def test_the_merged_reference_equals_the_policy_at_rl_entry_exactly():
    from sftrl.lm import decoder
    from sftrl.train.session import frozen_reference
    model, _ = load_policy(build_config({}, LORA).model, seed=0, device="cpu")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(n)))
    ref = frozen_reference(model)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [5, 6, 7, 12, 13, 14, 15]])
    mask = torch.ones_like(ids)
    assert decoder.parts(ref) is not None
    assert torch.equal(logprobs.token_logp(ref, ids, mask, 3), logprobs.token_logp(model, ids, mask, 3))
