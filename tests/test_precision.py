"""Gradient checkpointing changes memory, not numbers; bf16 autocast keeps fp32 weights, fp32
log-softmax, and stays close to the fp32 step."""

import sys
from pathlib import Path

import pytest
import torch

from dataclasses import replace

from sftrl.lm import logprobs
from sftrl.config import ConfigError, build_config
from sftrl.runlog import RunDir
from sftrl.train.fit import Session, run_rl_step, run_sft_step
from tests.tolerances import U, assert_adamw_state_close, assert_grads_close, summed_terms

sys.path.insert(0, str(Path(__file__).parent))
BASE = ["model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=8", "threads=1", "eval.k=0",
        "eval.max_new_tokens=12", "rl.rollout.max_new_tokens=12", "rl.rollout.prompts_per_step=4",
        "rl.rollout.group_size=4", "rl.optim.lr=1e-3", "log.progress=off",
        "rl.reward.functions=[{name: 'tests.rewards_for_tests:shorter'}]"]
PHASES = {"phases": [{"kind": "sft", "steps": 1}, {"kind": "rl", "steps": 1}]}


def _grads_after_steps(tmp_path, extra):
    """Two SFT steps and one RL step; the (clipped) gradients each optimiser step used, and the
    completion tokens each step summed over, are kept by step pre-hooks."""
    s = Session.build(build_config(PHASES, BASE + extra), RunDir(tmp_path))
    grads = {"sft": [], "rl": []}

    def keep(kind):
        def hook(opt, *a, **k):
            grads[kind].append([p.grad.detach().clone() for p in s.model.parameters()])
        return hook
    s.optims.get("sft", s.cfg.sft.optim)[0].register_step_pre_hook(keep("sft"))
    out = [run_sft_step(s), run_sft_step(s)]
    s.state.kind_steps["sft"] = 2
    s.algo = replace(s.algo, needs_ref=True)
    s.optims.get("rl", s.cfg.rl.optim)[0].register_step_pre_hook(keep("rl"))
    out.append(run_rl_step(s))
    out[2]["tokens"] = float(s.last_groups.ro.completion_mask.sum())
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
    # (the tolerance: tests/tolerances.py; |g| is the scale, measured differences are 5-11 u max|g|)
    T = s_plain.cfg.sft.max_len
    tokens = {"sft": [m["sft/tokens"] for m in m_plain[:2]], "rl": [m_plain[2]["tokens"]]}
    for kind in ("sft", "rl"):
        tol = [assert_grads_close(other, step, step, summed_terms(s_plain.model, n, T))
               for step, other, n in zip(g_plain[kind], g_ckpt[kind], tokens[kind])]
        assert sum(float(g.abs().sum()) for g in g_plain[kind][-1]) > 0
        assert_adamw_state_close(s_plain.optims.made[kind][0], s_ckpt.optims.made[kind][0], g_plain[kind], tol)
    # the RL loss sums one weighted term per completion token (weights sum to 1); its policy-gradient
    # terms are bounded by max|advantage| <= (G - 1) / sqrt(G) for group z-scores, the KL and
    # entropy terms by their (non-negative) totals, so both paths agree to n * u * that sum
    G = s_plain.cfg.rl.rollout.group_size
    scale = (G - 1) / G ** 0.5 + abs(m_plain[2]["loss/kl"]) + abs(m_plain[2]["loss/entropy"])
    assert m_ckpt[2]["loss/total"] == pytest.approx(m_plain[2]["loss/total"], rel=0, abs=summed_terms(s_plain.model, m_plain[2]["tokens"], T) * U * scale)


def test_bf16_autocast_keeps_fp32_state_and_tracks_the_fp32_step(tmp_path):
    s32, g32, m32 = _grads_after_steps(tmp_path / "a", [])
    s16, g16, m16 = _grads_after_steps(tmp_path / "b", ["model.autocast=bf16"])
    assert all(p.dtype == torch.float32 for p in s16.model.parameters())
    assert all(g.dtype == torch.float32 for g in g16["rl"][0])
    st = s16.optims.made["sft"][0].state
    assert all(v["exp_avg"].dtype == torch.float32 for v in st.values())
    # the SFT loss under bf16 matmuls: within bf16's ~3 significant digits of the fp32 loss
    assert m16[0]["loss/sft"] == pytest.approx(m32[0]["loss/sft"], rel=2e-2)
    assert m16[0]["loss/sft"] != m32[0]["loss/sft"]                    # autocast did act
    cos = torch.nn.functional.cosine_similarity(torch.cat([g.flatten() for g in g16["sft"][-1]]),
                                                torch.cat([g.flatten() for g in g32["sft"][-1]]), 0)
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
