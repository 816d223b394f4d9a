"""Entropy controllers and token filters by hand."""

import math

import pytest
import torch
from torch.testing import assert_close

from sftrl.algos.entropy import ENTROPY, controller_from_state, controller_state, make_controller
from sftrl.algos.filters import TOKEN_FILTERS


def test_off_and_constant():
    assert make_controller("off", {}).coef == 0.0
    c = make_controller("constant", {"coef": 1e-3})
    assert c.coef == 1e-3 and c.update(5.0, 1).coef == 1e-3


@pytest.mark.parametrize("shape, t, expected", [
    ("linear", 0, 1e-2), ("linear", 5, 5.5e-3), ("linear", 10, 1e-3), ("linear", 20, 1e-3),
    ("cosine", 5, 1e-2 + (1e-3 - 1e-2) * 0.5), ("cosine", 10, 1e-3),
])
def test_scheduled(shape, t, expected):
    c = make_controller("scheduled", {"start": 1e-2, "end": 1e-3, "steps": 10, "shape": shape})
    for step in range(t):
        c = c.update(0.0, step)
    assert c.coef == pytest.approx(expected, abs=1e-12)


def test_skywork_adaptive_sequence():
    c = make_controller("adaptive", {"target": 0.2, "delta": 1e-4, "max_coef": 2.5e-4})
    assert c.coef == 0.0                                  # nothing measured yet: gated off
    seen = []
    for e in [0.1, 0.1, 0.1, 0.1, 0.3, 0.1]:
        c = c.update(e, 0)
        seen.append((round(c.alpha, 10), c.coef))
    assert seen == [(1e-4, 1e-4), (2e-4, 2e-4), (2.5e-4, 2.5e-4), (2.5e-4, 2.5e-4),
                    (1.5e-4, 0.0), (2.5e-4, 2.5e-4)]      # capped at max; gated while above target


def test_controller_state_round_trip_and_errors():
    c = make_controller("adaptive", {"target": 0.5}).update(0.1, 0)
    assert controller_from_state(controller_state(c)) == c
    with pytest.raises(ValueError, match="did you mean 'target'"):
        make_controller("adaptive", {"targt": 0.5})
    with pytest.raises(KeyError, match="did you mean 'adaptive'"):
        make_controller("adaptiv", {})
    assert sorted(ENTROPY) == ["adaptive", "constant", "off", "scheduled"]


MASK = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])


def test_top_entropy_keeps_the_top_fraction_for_the_loss_and_the_bonus():
    ent = torch.tensor([[0.1, 0.9, 0.5, 9.0], [0.2, 0.8, 0.3, 0.7]])
    z = torch.zeros(2, 4)
    keep, keep_ent, pen = TOKEN_FILTERS["top_entropy"](z, z, torch.zeros(2, 1), ent, MASK, rho=0.3)
    # valid entropies sorted: .1 .2 .3 .5 .7 .8 .9 ; 0.7 quantile (linear) = 0.74 -> keep .8 .9
    assert keep.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert torch.equal(keep_ent, keep) and pen.sum() == 0                  # the bonus is restricted too


def _cov_case():
    logp = torch.tensor([[-0.1, -3.0, -0.2, 0.0], [-4.0, -0.1, -0.3, -2.0]])
    adv = torch.tensor([[2.0], [-2.0]])
    return logp, adv


def test_clip_cov_detaches_at_least_one_token_in_band():
    logp, adv = _cov_case()
    # mean logp over 7 valid tokens = -9.7/7; mean A = (3*2 - 4*2)/7 = -2/7
    cov = (logp - (-9.7 / 7)) * (adv - (-2 / 7)) * MASK
    band = ((cov > 0.5) & (cov < 5.0)).float() * MASK
    for ratio, n in ((0.3, 2), (1e-4, 1)):                     # floor(ratio * 7), at least 1
        keep, keep_ent, pen = TOKEN_FILTERS["clip_cov"](logp, logp, adv, None, MASK, gen=torch.Generator().manual_seed(0),
                                                        clip=(0.2, 0.2), ratio=ratio, cov_low=0.5, cov_high=5.0)
        assert int((1 - keep).sum()) == min(n, int(band.sum())) and ((1 - keep) <= band).all()
        assert keep_ent.sum() == 8 and pen.sum() == 0
    # a token PPO already clips is never a candidate: move every in-band token's ratio out of range
    old = logp - 1.0 * band * torch.sign(adv)                  # ratio e on A>0 in-band tokens, e^-1 on A<0
    keep, _, _ = TOKEN_FILTERS["clip_cov"](logp, old, adv, None, MASK, gen=torch.Generator().manual_seed(0),
                                           clip=(0.2, 0.2), ratio=0.3, cov_low=0.5, cov_high=5.0)
    assert keep.sum() == 8


def test_kl_cov_penalises_the_top_k_covariance_tokens():
    logp, adv = _cov_case()
    keep, keep_ent, pen = TOKEN_FILTERS["kl_cov"](logp, logp, adv, None, MASK, k=0.3, coef=2.0)
    cov = ((logp - (-9.7 / 7)) * (adv - (-2 / 7))).masked_fill(MASK == 0, -math.inf)
    expected = torch.zeros(8)
    expected[cov.flatten().topk(2).indices] = 2.0                           # floor(0.3 * 7) = 2
    assert_close(pen, expected.view(2, 4))
    assert keep.sum() == 8 and keep_ent.sum() == 8
    _, _, pen = TOKEN_FILTERS["kl_cov"](logp, logp, adv, None, MASK, k=1e-4, coef=2.0)
    assert pen.sum() == 2.0                                                 # at least one token
