"""sftrl against transcriptions of the sources' own code (tests/reference.py), on identical tensors:
LUFFY's on/off-policy loss and its grpo/grpo_split advantages, the verl hybrids' constant
normaliser, Clip-Cov and KL-Cov (Entropy-Mechanism-of-RL, verl), verl's REINFORCE++ and loss
aggregations, the adaptive KL controller (verl, OpenRLHF), TRL's top-entropy mask and bonus, and
TRL RLOO's KL in the reward."""

import math

import numpy as np
import pytest
import torch
from torch.testing import assert_close

from sftrl.algos import filters, hybrid, policy
from sftrl.algos.kl_control import AdaptiveKL
from tests import reference as ref

G = torch.Generator().manual_seed(11)
N, T, MAXLEN = 6, 5, 8


def _tensors():
    logp = -torch.rand(N, T, generator=G) * 3                                   # [N, T]
    old = logp + 0.3 * torch.randn(N, T, generator=G)
    adv = torch.randn(N, 1, generator=G)
    lengths = torch.tensor([5, 3, 4, 1, 2, 5])
    mask = (torch.arange(T)[None] < lengths[:, None]).float()
    return logp, old, adv, mask


def _pad(x, width=MAXLEN):
    return torch.nn.functional.pad(x, (0, width - x.shape[1]))


def test_luffy_loss_equals_the_source():
    logp, old, adv, mask = _tensors()
    prefix = torch.zeros(N, T)
    prefix[2] = mask[2]                                                         # row 2 is the demonstration
    source = ref.luffy_on_off_policy_loss(_pad(logp), _pad(old), adv, _pad(mask), _pad(prefix))
    off = prefix.any(1, keepdim=True)                                           # [N, 1]
    ours_tok = torch.where(off, hybrid.OFFPOLICY["shaped"](logp, adv, gamma=0.1),
                           policy.SURROGATES["no_clip"](logp, old, adv, mask))
    ours = (ours_tok * policy.WEIGHTINGS["seq_mean_token_sum_norm"](mask, max_len=MAXLEN)).sum()
    assert_close(ours, source)                                  # our batch is only as wide as its rows


def test_the_constant_normaliser_ignores_demonstrations_that_widen_the_batch():
    _, _, _, mask = _tensors()
    wide = torch.cat([_pad(mask, 100), torch.zeros(1, 100)])                    # a 100-token SFT row joins
    w = policy.WEIGHTINGS["seq_mean_token_sum_norm"]
    assert_close(w(wide, max_len=MAXLEN)[:N, :T], w(mask, max_len=MAXLEN))
    assert float(w(mask, max_len=MAXLEN).sum()) == pytest.approx(float(mask.sum()) / MAXLEN)


def test_luffy_advantages_equal_the_source():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])            # [P=2, G=4], row 3 and 7 demos
    index = [0, 0, 0, 0, 1, 1, 1, 1]
    on = torch.tensor([1, 1, 1, 0, 1, 1, 1, 0], dtype=torch.bool)
    # train.sh (grpo, no std): the demonstration's reward is in the group mean
    assert_close(policy.ADVANTAGES["drgrpo"](scores.view(2, 4)).reshape(-1),
                 ref.grpo_outcome_advantage(scores, index, use_std=False))
    # train_rl_sft_loss.sh (grpo_split): statistics from the samples only = our group over G-1 samples
    split = ref.grpo_outcome_advantage(scores, index, use_std=False, on_policy_mask=on)
    assert_close(policy.ADVANTAGES["drgrpo"](scores.view(2, 4)[:, :3]).reshape(-1), split[on])


def test_clip_cov_equals_the_source():
    logp, old, adv, mask = _tensors()
    a = adv.expand(N, T).contiguous()
    for ratio in (0.1, 2e-4):                                                   # several tokens; at least one
        loss_src, corr = ref.em_clip_cov_loss(a, logp, old, mask, 0.2, 0.2, ratio, -1.0, 1.0,
                                              torch.Generator().manual_seed(5))
        out = filters.TOKEN_FILTERS["clip_cov"](logp, old, adv, None, mask, gen=torch.Generator().manual_seed(5),
                                                clip=(0.2, 0.2), ratio=ratio, cov_low=-1.0, cov_high=1.0)
        assert torch.equal(out.keep * mask, corr * mask)
        ours = (policy.SURROGATES["ppo_clip"](logp, old, adv, mask) * out.keep * policy.WEIGHTINGS["token_mean"](mask)).sum()
        assert_close(ours, loss_src)
        assert int((1 - out.keep).sum()) >= 1


def test_kl_cov_equals_the_source():
    logp, old, adv, mask = _tensors()
    a = adv.expand(N, T).contiguous()
    for k in (0.2, 0.002):
        out = filters.TOKEN_FILTERS["kl_cov"](logp, old, adv, None, mask, k=k, coef=1.0)
        ours_tok = policy.SURROGATES["no_clip"](logp, old, adv, mask) + (logp - old).abs() * out.penalise
        ours = (ours_tok * policy.WEIGHTINGS["token_mean"](mask)).sum()
        assert_close(ours, ref.verl_kl_cov_loss(a, logp, old, mask, k, 1.0))


def test_reinforce_pp_equals_verl():
    logp, old, _, mask = _tensors()
    ref_logp = old + 0.2 * torch.randn(N, T, generator=G)
    scores = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    beta = 0.05
    source = ref.verl_reinforce_pp_advantage(ref.verl_token_rewards(scores, mask, old, ref_logp, beta), mask, 1.0)
    ours = policy.TOKEN_ADVANTAGES["reinforce_pp"](scores, beta * policy.KL["k1"](old, ref_logp) * mask, mask)
    assert_close(ours, source)
    source_g = ref.verl_reinforce_pp_advantage(ref.verl_token_rewards(scores, mask, old, ref_logp, 0.0), mask, 0.9)
    assert_close(policy.TOKEN_ADVANTAGES["reinforce_pp"](scores, torch.zeros(N, T), mask, gamma=0.9), source_g)


@pytest.mark.parametrize("ours, mode, kw", [
    ("token_mean", "token-mean", {}), ("seq_mean_token_mean", "seq-mean-token-mean", {}),
    ("seq_mean_token_sum", "seq-mean-token-sum", {}), ("seq_mean_token_sum_norm", "seq-mean-token-sum-norm", {"max_len": MAXLEN}),
])
def test_aggregations_equal_verl(ours, mode, kw):
    logp, old, adv, mask = _tensors()
    loss_mat = policy.SURROGATES["ppo_clip"](logp, old, adv, mask)
    assert_close((loss_mat * policy.WEIGHTINGS[ours](mask, **kw)).sum(),
                 ref.verl_agg_loss(loss_mat, mask, mode, loss_scale_factor=kw.get("max_len")))


def test_adaptive_kl_equals_verl_and_openrlhf():
    ctl = AdaptiveKL(coef=0.05, target=0.1, horizon=10000)
    for kl, n in ((0.3, 512), (0.02, 512), (0.11, 64)):                         # clipped above, below, inside
        nxt = ctl.update(kl, n)
        assert nxt.coef == pytest.approx(ref.adaptive_kl_update(ctl.coef, kl, 0.1, n, 10000), rel=1e-12)
        ctl = nxt
    assert AdaptiveKL(coef=0.05, target=0.1).update(0.5, 0).coef == 0.05      # no sequences, no change


def test_top_entropy_mask_and_bonus_equal_trl():
    ent = torch.rand(N, T, generator=G) * 2
    _, _, adv, mask = _tensors()
    z = torch.zeros(N, T)
    out = filters.TOKEN_FILTERS["top_entropy"](z, z, adv, ent, mask, rho=0.2)
    trl_mask = ref.trl_high_entropy_mask(ent, mask, 1 - 0.2)
    assert torch.equal(out.keep.bool(), trl_mask)
    # TRL's bonus under its default loss ("dapo"): sum of kept tokens' entropy / all completion tokens
    trl_bonus = (ent * mask * trl_mask).sum() / mask.sum()
    assert_close((ent * out.keep_entropy * policy.WEIGHTINGS["token_mean"](mask)).sum(), trl_bonus)


def test_kl_in_the_reward_equals_trl_rloo():
    from sftrl.train.losses import advantages

    class B:                                                                    # the step batch's fields used
        n_rl, mask, off = N, _tensors()[3], torch.zeros(N, dtype=torch.bool)

    class Grp:
        class sc:
            r = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])               # [P=2, G=3]
    old = -torch.rand(N, T, generator=G)
    ref_logp = old + 0.1 * torch.randn(N, T, generator=G)

    class A:
        token_advantage, kl = False, policy.KL["k1"]
        advantage = policy.ADVANTAGES["rloo"]
    adv, r = advantages(A, Grp, B, old, ref_logp, 0.05)
    rewards = ref.trl_rloo_rewards_with_kl(Grp.sc.r.reshape(-1), old, ref_logp, B.mask, 0.05)
    assert_close(r.reshape(-1), rewards)
    grouped = rewards.view(2, 3)
    loo = grouped - (grouped.sum(1, keepdim=True) - grouped) / 2                # TRL's leave-one-out
    assert_close(adv.reshape(-1), loo.reshape(-1))


def test_adaptive_beta_tracks_a_target_over_steps():
    # KL persistently above target raises beta by at most 20% * n / horizon a step (multiplicative)
    ctl = AdaptiveKL(coef=0.01, target=0.05, horizon=100)
    for _ in range(5):
        ctl = ctl.update(1.0, 10)
    assert ctl.coef == pytest.approx(0.01 * (1 + 0.2 * 10 / 100) ** 5)
    assert math.isfinite(ctl.coef) and np.isclose(AdaptiveKL(coef=0.01, target=0.05, horizon=100).update(0.05, 10).coef, 0.01)


def test_kl_controllers_round_trip_through_checkpoint_state():
    from sftrl.algos.kl_control import FixedKL, kl_controller_from_state, kl_controller_state, make_kl_controller
    from sftrl.config import build_config
    adaptive = make_kl_controller(build_config({}, ["rl.algo.kl.target=0.05", "rl.algo.kl.horizon=500"]).rl.algo.kl)
    assert adaptive == AdaptiveKL(coef=0.04, target=0.05, horizon=500)         # grpo's beta, adapted
    moved = adaptive.update(0.2, 64)
    assert kl_controller_from_state(kl_controller_state(moved)) == moved
    assert make_kl_controller(build_config({}, []).rl.algo.kl) == FixedKL(coef=0.04)
