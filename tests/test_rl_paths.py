"""Paths of the RL step checked from the outside, on a tiny SFT'd model with mixed groups: token
filters and KL-Cov inside the step, KL in the reward, REINFORCE++'s token advantages, the reward
stage's truncation and overlong wiring, LUFFY's mixed-group advantage, SRFT's self-weights and
CHORD-phi inside a step (recomputed from the step's own rollout), dynamic sampling's truncation
to exactly P, several passes with shuffled rows, and the adaptive KL coefficient."""

import math

import pytest
import torch
from torch.testing import assert_close

from sftrl.algos import policy
from sftrl.config import build_config
from sftrl.data.rewards import score_rollout
from sftrl.data.tasks.base import Problem
from sftrl.lm import logprobs
from sftrl.train.rl_step import rl_step
from tests.test_rl import Recorder
from tests.warm import session


def _step(s, update=None, t=0):
    update = update or Recorder()
    m, ctls, g = rl_step(s.policy, update, s.streams, s.cfg.rl, s.algo, s.state.ctls, t, s.rngs.sample)
    return m, ctls, g, update


def _logp_ent(model, ro, rows, temperature=1.0):
    with torch.no_grad():
        return logprobs.token_logp_and_entropy(model, ro.input_ids[rows], ro.attention_mask[rows],
                                               ro.prompt_ids.shape[1], temperature=temperature)


def test_top_entropy_filter_acts_inside_the_step(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=grpo_trl", "rl.algo.token_filter=top_entropy",
                                 "rl.algo.token_filter_kwargs={rho: 0.25}"])
    m, _, g, _ = _step(s)
    assert 0.6 < m["policy/filtered_frac"] < 0.85                  # about 1 - rho of the tokens lose their loss


def test_kl_cov_term_acts_once_the_policy_moved(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=kl_cov", "rl.algo.mini_batches=2", "rl.optim.lr=1e-2",
                                 "rl.algo.token_filter_kwargs={k: 0.2, coef: 1.0}"])
    m, _, g, _ = _step(s, s.optims.update("rl", s.cfg.rl.optim, what="rl step 1"))
    # loss/total - loss/pg + loss/entropy is the KL-Cov term (no KL loss in this preset): non-zero
    cov = m["loss/total"] - m["loss/pg"] + m["loss/entropy"]
    assert cov > 1e-6 and "loss/kl" not in m


def test_kl_in_the_reward_is_the_sequence_kl(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=rloo", "rl.algo.kl.coef=0.5"])
    with torch.no_grad():
        for p in s.model.parameters():                              # the policy moves away from the reference
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    s.policy = s.policy.__class__(**{**s.policy.__dict__, "ref": __import__("copy").deepcopy(s.model).eval()})
    with torch.no_grad():
        for p in s.model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel() + 1)))
    m, _, g, _ = _step(s)
    rows = torch.arange(g.ro.prompt_ids.shape[0])
    lp, _ = _logp_ent(s.model, g.ro, rows)
    lr, _ = _logp_ent(s.ref, g.ro, rows)
    kl = ((lp - lr) * g.ro.completion_mask).sum(1)                  # k1, sequence sums
    r = g.sc.r.reshape(-1) - 0.5 * kl
    assert m["reward/mean"] == pytest.approx(float(r.mean()), rel=1e-4, abs=1e-5)
    G = g.sc.r.shape[1]
    rloo = (G * r.view(-1, G) - r.view(-1, G).sum(1, keepdim=True)) / (G - 1)
    assert_close(g.adv.reshape(-1), rloo.reshape(-1), atol=1e-4, rtol=1e-4)


def test_reinforce_pp_trains_on_token_advantages(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=reinforce_pp"])
    m, _, g, rec = _step(s)
    mask = g.ro.completion_mask
    assert g.adv.shape == mask.shape and (g.adv * (1 - mask)).abs().sum() == 0
    assert float((g.adv * mask).sum() / mask.sum()) == pytest.approx(0.0, abs=1e-5)   # whitened over tokens
    assert "kl/coef" in m and m["kl/coef"] == 0.001 and rec.grads


def test_score_rollout_truncation_and_overlong():
    probs = [Problem(id=str(i), prompt=f"{i}", answer="7") for i in range(2)]
    texts = ["#### 7", "#### 7", "#### 8", "#### 7"]
    lengths, cut = torch.tensor([10.0, 20.0, 18.0, 20.0]), torch.tensor([False, True, False, True])
    base = build_config({}, ["rl.rollout.max_new_tokens=20"]).rl.reward
    zero = score_rollout(texts, probs, lengths, cut, base.model_copy(update={"truncated": "zero"}), group_size=2,
                         max_new_tokens=20)
    assert zero.r.tolist() == [[1.0, 0.0], [0.0, 0.0]] and zero.acc.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    mask = score_rollout(texts, probs, lengths, cut, base.model_copy(update={"truncated": "mask"}), group_size=2,
                         max_new_tokens=20)
    assert mask.keep.tolist() == [1.0, 0.0, 1.0, 0.0] and mask.r.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    long = score_rollout(texts, probs, lengths, cut, base.model_copy(update={"overlong_cache": 4}), group_size=2,
                         max_new_tokens=20)
    assert_close(long.r, torch.tensor([[1.0, 0.0], [-0.5, 0.0]]))        # lengths 16..20 lose up to 1
    assert long.parts["reward/overlong/mean"] == pytest.approx((-1.0 - 0.5 - 1.0) / 4)


def test_luffy_advantage_is_over_the_mixed_group(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=luffy"])
    _, _, g, _ = _step(s)
    r = g.sc.r                                                      # [P, G]: G-1 samples + the demonstration
    assert g.off.view(r.shape)[:, -1].all()
    assert_close(g.adv.view(r.shape), r - r.mean(1, keepdim=True))  # the demonstration's reward in the mean


def test_srft_self_weights_and_sft_weights_inside_a_step(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=srft", "rl.algo.mini_batches=1", "rl.micro_batch_size=null"])
    m, _, g, _ = _step(s)
    ro, n = g.ro, g.ro.prompt_ids.shape[0]
    mask = ro.completion_mask
    lp, ent = _logp_ent(s.model, ro, torch.arange(n))
    H = (ent * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True)           # [n, 1] sequence entropy
    acc, off = g.sc.acc.reshape(-1, 1), g.off[:, None]
    w = torch.where(acc > 0, 0.1 * torch.exp(H), torch.full_like(H, -1.0))      # own samples: +0.1 e^H / -1
    on_tok = -w * lp                                                            # -w log p
    p = lp.exp()
    off_tok = -g.adv * p / (p + 0.1)                                            # LUFFY's term on the demonstration
    pg = (torch.where(off, off_tok, on_tok) * mask).sum() / s.cfg.rl.rollout.max_new_tokens
    assert m["loss/pg"] == pytest.approx(float(pg), rel=1e-4)
    # SFT on each prompt's demonstration, weighted 0.5 exp(-H_demo)
    demos = s.policy.demos(g.problems)
    dlp, dent = _logp_ent(s.model, demos, torch.arange(len(g.problems)))
    dm = demos.completion_mask
    Hd = (dent * dm).sum(1, keepdim=True) / dm.sum(1, keepdim=True)
    nll = -(dlp * dm).sum(1, keepdim=True) / dm.sum()
    assert m["loss/sft"] == pytest.approx(float(nll.sum()), rel=1e-4)
    assert m["sft/weight"] == pytest.approx(float((0.5 * torch.exp(-Hd)).mean()), rel=1e-4)


def test_chord_phi_weights_the_sft_tokens(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=chord", "rl.hybrid.weight=constant", "rl.hybrid.weight_kwargs={value: 0.1}",
                                 "rl.hybrid.token_weight=phi", "rl.hybrid.mix=sum", "rl.micro_batch_size=null"])
    ahead = __import__("copy").deepcopy(s.streams.expert)
    demos = s.policy.demos(ahead.next(4))                           # P*G/4 = 4 expert demonstrations
    lp, _ = _logp_ent(s.model, demos, torch.arange(4))
    dm = demos.completion_mask
    phi = lp.exp() * (1 - lp.exp())
    expected = -(lp * phi * dm).sum() / dm.sum()                    # token mean of phi-weighted NLL
    m, _, _, _ = _step(s)
    assert m["loss/sft"] == pytest.approx(float(expected), rel=1e-4) and m["sft/weight"] == pytest.approx(0.1)


def test_dynamic_sampling_keeps_exactly_p_groups(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=dapo", "rl.algo.max_gen_batches=8", "rl.algo.mini_batches=1"])
    m, _, g, _ = _step(s)
    assert m["groups/gen_batches"] >= 1 and m["groups/kept"] == 4 == len(g.problems) == g.sc.r.shape[0]
    assert (g.sc.acc.max(1).values != g.sc.acc.min(1).values).all()   # every kept group is informative


def test_several_passes_over_shuffled_rows(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=grpo_trl", "rl.algo.epochs=2", "rl.algo.mini_batches=2",
                                 "rl.algo.shuffle=true"])
    _, _, _, rec = _step(s)
    assert len(rec.grads) == 4                                      # 2 passes x 2 mini-batches
    b_rows = []
    from sftrl.train.groups import StepBatch
    gen = torch.Generator().manual_seed(0)
    fake = StepBatch(ro=None, n_rl=8, mask=torch.ones(8, 2), sft_mask=torch.zeros(8, 2), off=torch.zeros(8, dtype=torch.bool))
    for rl, sft in fake.mini_batches(2, 2, gen):
        b_rows.append(sorted(rl.tolist()))
    assert sorted(b_rows[0] + b_rows[1]) == list(range(8)) == sorted(b_rows[2] + b_rows[3])   # each pass: every row once
    assert [x for x in fake.mini_batches(2, 1, None)[0][0].tolist()] == [0, 1, 2, 3]             # unshuffled: in order


def test_adaptive_beta_moves_towards_its_target(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=grpo", "rl.algo.kl.target=1e-6", "rl.algo.kl.horizon=10",
                                 "rl.optim.lr=1e-2"])
    s.policy = s.policy.__class__(**{**s.policy.__dict__, "ref": __import__("copy").deepcopy(s.model).eval()})
    update = s.optims.update("rl", s.cfg.rl.optim, what="rl step")
    m1, ctls, _, _ = _step(s, update)
    s.state.ctls = ctls
    m2, ctls2, _, _ = _step(s, update, t=1)
    n = 16                                                                   # sequences per step (4 x 4)
    # step 1: the policy is the reference (KL 0, below target): beta falls by 20% x n / horizon
    assert m1["kl/coef"] == 0.04 and ctls.kl.coef == pytest.approx(0.04 * (1 - 0.2 * n / 10))
    # step 2: the policy moved (lr 1e-2), KL >> 1e-6: beta rises by the same factor's mirror
    assert m2["kl/coef"] == ctls.kl.coef and ctls2.kl.coef == pytest.approx(ctls.kl.coef * (1 + 0.2 * n / 10))
    assert math.isfinite(ctls2.kl.coef)


def test_required_arguments_and_preset_arguments_of_another_function():
    cfg = build_config({}, ["rl.algo.preset=grpo", "rl.algo.weighting=const_len", "rl.rollout.max_new_tokens=40"]).rl
    assert cfg.algo.weighting_kwargs == {"max_len": 40}                 # the constant length defaults to the cap
    gspo = build_config({}, ["rl.algo.preset=grpo", "rl.algo.surrogate=gspo"]).rl.algo
    assert gspo.surrogate_kwargs == {}                                  # GSPO's own widths, not PPO's 0.2
    assert policy.SURROGATES["gspo"].__kwdefaults__ == {"eps_low": 3e-4, "eps_high": 4e-4}
    assert build_config({}, ["rl.algo.preset=grpo", "rl.algo.surrogate=reinforce"]).rl.algo.surrogate_kwargs == {}
    kept = build_config({}, ["rl.algo.preset=dapo", "rl.algo.surrogate=ppo_clip"]).rl.algo   # same function: kept
    assert kept.surrogate_kwargs["eps_high"] == 0.28
    from sftrl.registry import Registry, bind
    reg = Registry("thing")
    reg.register("f")(lambda x, *, size: x)
    with pytest.raises(ValueError, match="thing 'f' needs size"):
        bind(reg, "f", {})


@pytest.mark.parametrize("overrides, message", [
    (["rl.algo.preset=grpo", "rl.algo.token_filter=kl_cov", "rl.algo.mini_batches=2"], "set rl.algo.surrogate=no_clip"),
    (["rl.algo.preset=kl_cov", "rl.algo.mini_batches=1"], "with one optimiser step per rollout it does nothing"),
    (["rl.algo.preset=grpo", "rl.hybrid.sft_slots=1"], "needs hybrid.route=always"),
])
def test_inert_or_inconsistent_settings_are_config_errors(overrides, message):
    with pytest.raises(ValueError, match=message) as info:
        build_config({}, overrides)
    assert "\n" not in str(info.value)
