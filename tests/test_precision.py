"""Gradient checkpointing changes memory, not numbers; bf16 autocast keeps fp32 weights, fp32
log-softmax, and stays close to the fp32 step."""

import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from dataclasses import replace

from sftrl.lm import logprobs
from sftrl.config import ConfigError, build_config
from sftrl.runlog import RunDir
from sftrl.train.fit import Session, run_rl_step, run_sft_step

sys.path.insert(0, str(Path(__file__).parent))
BASE = ["model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=8", "threads=1", "eval.k=0",
        "eval.max_new_tokens=12", "rl.rollout.max_new_tokens=12", "rl.rollout.prompts_per_step=4",
        "rl.rollout.group_size=4", "rl.optim.lr=1e-3", "log.progress=off",
        "rl.reward.functions=[{name: 'tests.rewards_for_tests:shorter'}]"]
PHASES = {"phases": [{"kind": "sft", "steps": 1}, {"kind": "rl", "steps": 1}]}


def _grads_after_steps(tmp_path, extra):
    """Gradients of one SFT and one RL step (the optimiser is stepped; grads kept by a hook)."""
    s = Session.build(build_config(PHASES, BASE + extra), RunDir(tmp_path))
    grads = {}

    def keep(kind):
        def hook(opt, *a, **k):
            grads[kind] = [p.grad.detach().clone() for p in s.model.parameters()]
        return hook
    out = [run_sft_step(s)]
    s.optims.made["sft"][0].register_step_pre_hook(keep("sft"))  # registered after the first step...
    out.append(run_sft_step(s))                                  # ...so this one is recorded
    s.state.kind_steps["sft"] = 2
    s.algo = replace(s.algo, needs_ref=True)
    s.optims.get("rl", s.cfg.rl.optim)[0].register_step_pre_hook(keep("rl"))
    out.append(run_rl_step(s))
    return s, grads, out


def test_gradient_checkpointing_gives_the_same_gradients(tmp_path):
    s_plain, g_plain, m_plain = _grads_after_steps(tmp_path / "a", [])
    s_ckpt, g_ckpt, m_ckpt = _grads_after_steps(tmp_path / "b", ["model.gradient_checkpointing=true"])
    flag = "is_activation_checkpointing" if hasattr(s_plain.model, "is_activation_checkpointing") \
        else "is_gradient_checkpointing"
    assert [getattr(m, flag) for m in (s_ckpt.model, s_plain.model)] == [True, False]
    saved = []                  # activations kept for backward by one training forward
    for s in (s_plain, s_ckpt):
        ro, n = s.last_groups.ro, [0]

        def pack(t):
            n[0] += t.numel()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            logprobs.token_logp(s.model, ro.input_ids, ro.attention_mask, ro.prompt_ids.shape[1])
        saved.append(n[0])
    assert saved[1] < 0.5 * saved[0]
    # the checkpointed forward is the model's own, the plain one runs the layers directly
    # (sftrl.lm.decoder): the same numbers up to float32 rounding
    for kind in ("sft", "rl"):
        for a, b in zip(g_plain[kind], g_ckpt[kind]):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
        assert sum(float(g.abs().sum()) for g in g_plain[kind]) > 0
    assert m_plain[2]["loss/total"] == pytest.approx(m_ckpt[2]["loss/total"], rel=1e-5, abs=1e-6)
    for p, q in zip(s_plain.model.parameters(), s_ckpt.model.parameters()):
        assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_keeps_fp32_state_and_tracks_the_fp32_step(tmp_path):
    s32, g32, m32 = _grads_after_steps(tmp_path / "a", [])
    s16, g16, m16 = _grads_after_steps(tmp_path / "b", ["model.autocast=bf16"])
    assert all(p.dtype == torch.float32 for p in s16.model.parameters())
    assert all(g.dtype == torch.float32 for g in g16["rl"])
    st = s16.optims.made["sft"][0].state
    assert all(v["exp_avg"].dtype == torch.float32 for v in st.values())
    # the SFT loss under bf16 matmuls: within bf16's ~3 significant digits of the fp32 loss
    assert m16[0]["loss/sft"] == pytest.approx(m32[0]["loss/sft"], rel=2e-2)
    assert m16[0]["loss/sft"] != m32[0]["loss/sft"]                    # autocast did act
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in g16["sft"]]),
                                                torch.cat([g.flatten() for g in g32["sft"]]), 0)
    assert cos > 0.99
    # inside the context the matmuls run in bf16, but log-probs and entropy come out in fp32
    ro = s16.last_groups.ro
    with s16.policy.precision():
        logp, ent = logprobs.token_logp_and_entropy(s16.model, ro.input_ids, ro.attention_mask,
                                                    ro.prompt_ids.shape[1])
        h = s16.model.model.embed_tokens(ro.input_ids[:1])
        assert s16.model.model.layers[0].self_attn.q_proj(h).dtype == torch.bfloat16
    assert logp.dtype == ent.dtype == torch.float32
    with torch.no_grad():
        lp32 = logprobs.token_logp(s16.model, ro.input_ids, ro.attention_mask, ro.prompt_ids.shape[1])
    mask = ro.completion_mask > 0
    assert (logp.detach() - lp32)[mask].abs().max() < 0.1


def test_autocast_setting_is_checked():
    with pytest.raises(ConfigError, match="model.autocast"):
        build_config({}, ["model.autocast=fp8"])
