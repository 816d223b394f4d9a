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


def test_top_entropy_keeps_the_top_fraction():
    ent = torch.tensor([[0.1, 0.9, 0.5, 9.0], [0.2, 0.8, 0.3, 0.7]])
    keep, pen = TOKEN_FILTERS["top_entropy"](torch.zeros(2, 4), torch.zeros(2, 1), ent, MASK, rho=0.3)
    # valid entropies sorted: .1 .2 .3 .5 .7 .8 .9 ; 0.7 quantile (linear) = 0.74 -> keep .8 .9
    assert keep.tolist() == [[0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]]
    assert pen.sum() == 0


def _cov_case():
    old_logp = torch.tensor([[-0.1, -3.0, -0.2, 0.0], [-4.0, -0.1, -0.3, -2.0]])
    adv = torch.tensor([[2.0], [-2.0]])
    return old_logp, adv


def test_clip_cov_detaches_floor_ratio_tokens_in_band():
    old_logp, adv = _cov_case()
    # mean logp over 7 valid tokens = -9.7/7; mean A = (3*2 - 4*2)/7 = -2/7
    g = torch.Generator().manual_seed(0)
    keep, _ = TOKEN_FILTERS["clip_cov"](old_logp, adv, None, MASK, gen=g, ratio=0.3, cov_low=0.5, cov_high=5.0)
    mean_lp, mean_a = -9.7 / 7, -2 / 7
    cov = (old_logp - mean_lp) * (adv - mean_a) * MASK
    band = ((cov > 0.5) & (cov < 5.0)).float()
    assert int((1 - keep).sum()) == min(int(0.3 * 7), int(band.sum()))
    assert ((1 - keep) <= band).all()                           # only in-band tokens are detached
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(TOKEN_FILTERS["clip_cov"](old_logp, adv, None, MASK, gen=g2, ratio=0.3,
                                                 cov_low=0.5, cov_high=5.0)[0], keep)


def test_kl_cov_penalises_top_k_covariance():
    old_logp, adv = _cov_case()
    keep, pen = TOKEN_FILTERS["kl_cov"](old_logp, adv, None, MASK, k=0.3, coef=2.0)
    mean_lp, mean_a = -9.7 / 7, -2 / 7
    cov = ((old_logp - mean_lp) * (adv - mean_a)).masked_fill(MASK == 0, -math.inf)
    top = cov.flatten().topk(2).indices
    expected = torch.zeros(8)
    expected[top] = 2.0
    assert_close(pen, expected.view(2, 4))
    assert keep.sum() == 8
