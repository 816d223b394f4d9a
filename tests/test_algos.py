"""Hand-computed cases for every registered advantage, surrogate, weighting and KL estimator,
reference-oracle equivalence, and the invariances the step relies on."""

import math

import pytest
import torch
from torch.testing import assert_close

from sftrl.algos.policy import (ADVANTAGES, KL, SURROGATES, TOKEN_ADVANTAGES, WEIGHTINGS, clip_indicators,
                                overlong_penalty)
from tests.reference import grpo_loop, rloo_loop, token_loss_loop

R = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])   # [P=3, G=4]


def test_grpo_by_hand():
    # group 0: mean .5, unbiased std sqrt(1/3); group 1 all equal -> 0; group 2: mean .25, std .5
    s = math.sqrt(1 / 3)
    expected = torch.tensor([[.5 / s, -.5 / s, -.5 / s, .5 / s], [0.0] * 4, [1.5, -.5, -.5, -.5]])
    assert_close(ADVANTAGES["grpo"](R, eps=0.0), expected)


def test_grpo_std_scopes():
    batch_std = R.std()
    assert_close(ADVANTAGES["grpo"](R, eps=0.0, std_scope="batch"), (R - R.mean(1, keepdim=True)) / batch_std)
    assert_close(ADVANTAGES["grpo"](R, std_scope="none"), ADVANTAGES["drgrpo"](R))
    with pytest.raises(ValueError, match="std_scope"):
        ADVANTAGES["grpo"](R, std_scope="global")


def test_drgrpo_rloo_reinforce_pp_by_hand():
    assert_close(ADVANTAGES["drgrpo"](R)[2], torch.tensor([.75, -.25, -.25, -.25]))
    assert_close(ADVANTAGES["rloo"](R)[2], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    centred = R - R.mean(1, keepdim=True)
    assert_close(ADVANTAGES["reinforce_pp_baseline"](R, eps=0.0), centred / centred.std())


def test_advantages_match_loop_oracles():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 3, (7, 5), generator=g).float() + torch.rand(7, 5, generator=g)
    assert_close(ADVANTAGES["grpo"](r, eps=1e-4), torch.tensor(grpo_loop(r.tolist(), 1e-4)))
    assert_close(ADVANTAGES["rloo"](r), torch.tensor(rloo_loop(r.tolist())))


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo", "reinforce_pp_baseline"])
def test_advantages_invariant_to_reward_shift_and_permute_with_prompts(name):
    g = torch.Generator().manual_seed(1)
    r = torch.rand(6, 4, generator=g)
    fn = ADVANTAGES[name]
    assert_close(fn(r + 3.0), fn(r))
    perm = torch.randperm(6, generator=g)
    if name != "reinforce_pp_baseline":       # batch whitening mixes prompts, but only by a common scale
        assert_close(fn(r[perm]), fn(r)[perm])
    else:
        assert_close(fn(r[perm]), fn(r)[perm], atol=1e-6, rtol=1e-5)   # summation order differs


def test_ppo_clip_caps_positive_and_negative_advantages():
    logp, old = torch.tensor([[0.0]]), torch.tensor([[-1.0]])                  # ratio e ~ 2.72
    assert_close(SURROGATES["ppo_clip"](logp, old, torch.tensor([[1.0]]), None, eps_high=0.2),
                 torch.tensor([[-1.2]]))
    assert_close(SURROGATES["ppo_clip"](logp, old, torch.tensor([[1.0]]), None, eps_high=0.28),
                 torch.tensor([[-1.28]]))                                       # clip-higher
    # A<0 with ratio e: -min(-e, -1.2) = e ; dual clip c=2 caps it at 2
    assert_close(SURROGATES["ppo_clip"](logp, old, torch.tensor([[-1.0]]), None), torch.tensor([[math.e]]))
    assert_close(SURROGATES["ppo_clip"](logp, old, torch.tensor([[-1.0]]), None, dual_clip=2.0),
                 torch.tensor([[2.0]]))
    # ratio below 1 - eps_low with A<0: clipped at 0.8
    assert_close(SURROGATES["ppo_clip"](torch.tensor([[-1.0]]), torch.tensor([[0.0]]),
                                        torch.tensor([[-1.0]]), None, eps_low=0.2), torch.tensor([[0.8]]))


def test_no_clip_reinforce_gspo_by_hand():
    logp, old, adv = torch.tensor([[0.0, -1.0]]), torch.tensor([[-1.0, -1.0]]), torch.tensor([[2.0]])
    mask = torch.ones(1, 2)
    assert_close(SURROGATES["no_clip"](logp, old, adv, mask), torch.tensor([[-2 * math.e, -2.0]]))
    assert_close(SURROGATES["reinforce"](logp, old, adv, mask), torch.tensor([[0.0, 2.0]]))
    # GSPO: sequence ratio exp(mean(1, 0)) = e^0.5 clipped at 1 + 4e-4 for A>0
    assert_close(SURROGATES["gspo"](logp, old, adv, mask), torch.full((1, 2), -2 * 1.0004))


def test_gspo_gradient_is_sequence_mean_at_ratio_one():
    logp = torch.tensor([[-0.5, -1.0, -2.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss = (SURROGATES["gspo"](logp, logp.detach(), torch.tensor([[1.0]]), mask) * mask).sum()
    loss.backward()
    assert_close(logp.grad, torch.tensor([[-1.0, -1.0, 0.0]]))   # d(-s)/dlogp_t = -1 per unmasked token


def test_clip_indicators():
    logp = torch.tensor([[0.0, 0.0, -1.0, 0.0]])
    old = torch.tensor([[-1.0, -1.0, 0.0, 0.0]])
    adv = torch.tensor([[1.0, -1.0, -1.0, 1.0]]).T.reshape(1, 4)
    ind = clip_indicators(logp, old, adv, eps_low=0.2, eps_high=0.2)
    assert ind["high"].tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert ind["low"].tolist() == [[0.0, 0.0, 1.0, 0.0]]
    assert ind["region"].tolist() == [[1.0, 0.0, 1.0, 0.0]]


MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def test_weightings_by_hand():
    assert_close(WEIGHTINGS["token_mean"](MASK), MASK / 8)
    assert_close(WEIGHTINGS["seq_mean_token_mean"](MASK)[:, 0], torch.tensor([1 / 8, 1 / 4, 1 / 12, 1 / 8]))
    assert_close(WEIGHTINGS["const_len"](MASK, max_len=5), MASK / 20)
    assert_close(WEIGHTINGS["seq_mean_token_sum_norm"](MASK, max_len=5), MASK / 5)
    assert_close(WEIGHTINGS["seq_mean_token_sum"](MASK), MASK / 4)
    empty = torch.cat([MASK, torch.zeros(1, 3)])                                # a row with no tokens
    assert_close(WEIGHTINGS["seq_mean_token_sum"](empty), empty / 4)             # counts sequences with tokens


WITH_LEN = ("const_len", "seq_mean_token_sum_norm")


@pytest.mark.parametrize("weighting", ["token_mean", "seq_mean_token_mean", "const_len", "seq_mean_token_sum_norm"])
def test_weightings_match_oracle(weighting):
    g = torch.Generator().manual_seed(2)
    per_token = torch.randn(4, 3, generator=g)
    kw = {"max_len": 5} if weighting in WITH_LEN else {}
    got = (per_token * WEIGHTINGS[weighting](MASK, **kw)).sum()
    expected = token_loss_loop(per_token.tolist(), MASK.tolist(), weighting, max_len=5)
    assert_close(got, torch.tensor(expected))


@pytest.mark.parametrize("weighting", ["token_mean", "seq_mean_token_mean", "const_len", "seq_mean_token_sum",
                                       "seq_mean_token_sum_norm"])
@pytest.mark.parametrize("surrogate", ["ppo_clip", "no_clip", "reinforce", "gspo"])
def test_micro_batches_sum_to_full_batch(weighting, surrogate):
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(8, 5, generator=g)
    old = logp + 0.1 * torch.randn(8, 5, generator=g)
    adv = torch.randn(8, 1, generator=g)
    mask = (torch.rand(8, 5, generator=g) > 0.3).float()
    w = WEIGHTINGS[weighting](mask, **({"max_len": 5} if weighting in WITH_LEN else {}))

    def loss(rows):
        return (SURROGATES[surrogate](logp[rows], old[rows], adv[rows], mask[rows]) * w[rows]).sum()
    parts = sum(loss(slice(i, i + 2)) for i in range(0, 8, 2))
    assert_close(parts, loss(slice(0, 8)))


def test_reinforce_pp_by_hand():
    # two sequences of 2 and 1 tokens; scores 1 and 0; per-token KL 0.1 on every valid token
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    kl = torch.full((2, 2), 0.1) * mask
    adv = TOKEN_ADVANTAGES["reinforce_pp"](torch.tensor([1.0, 0.0]), kl, mask, gamma=1.0)
    # token rewards [-0.1, 0.9], [-0.1]; returns to go [0.8, 0.9], [-0.1]
    returns = torch.tensor([0.8, 0.9, -0.1])
    mean, std = returns.mean(), returns.std()                                   # unbiased over the 3 tokens
    expected = torch.tensor([[0.8, 0.9], [-0.1, 0.0]])
    expected[mask > 0] = (returns - mean) / torch.sqrt(std ** 2 + 1e-8)
    assert_close(adv, expected)
    # discounting: gamma 0.5 halves what flows back one token
    adv_g = TOKEN_ADVANTAGES["reinforce_pp"](torch.tensor([1.0, 0.0]), torch.zeros(2, 2), mask, gamma=0.5)
    r = torch.tensor([0.5, 1.0, 0.0])
    expected_g = torch.zeros(2, 2)
    expected_g[mask > 0] = (r - r.mean()) / torch.sqrt(r.std() ** 2 + 1e-8)
    assert_close(adv_g, expected_g)


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([[-1.0, -2.0]]), torch.tensor([[-2.0, -2.0]])     # delta = -1, 0
    assert_close(KL["k1"](logp, ref), torch.tensor([[1.0, 0.0]]))
    assert_close(KL["k2"](logp, ref), torch.tensor([[0.5, 0.0]]))
    assert_close(KL["k3"](logp, ref), torch.tensor([[math.exp(-1) + 1 - 1, 0.0]]))
    assert_close(KL["k3_plus"](logp, ref), KL["k3"](logp, ref))


def test_k3_nonnegative_and_k3_plus_has_k2_gradient():
    g = torch.Generator().manual_seed(3)
    logp = torch.randn(4, 6, generator=g, requires_grad=True)
    ref = torch.randn(4, 6, generator=g)
    assert (KL["k3"](logp, ref) >= 0).all()
    KL["k3_plus"](logp, ref).sum().backward()
    grad_plus = logp.grad.clone()
    logp.grad = None
    KL["k2"](logp, ref).sum().backward()
    assert_close(grad_plus, logp.grad)


def test_overlong_penalty_edges():
    lengths = torch.tensor([10.0, 16.0, 18.0, 20.0])
    assert_close(overlong_penalty(lengths, max_len=20, cache=4), torch.tensor([0.0, 0.0, -0.5, -1.0]))
    assert_close(overlong_penalty(lengths, max_len=20, cache=4, factor=2.0), torch.tensor([0.0, 0.0, -1.0, -2.0]))
