"""Learning-rate schedule by hand."""

import math

import pytest

from sftrl.train.optim import lr_multiplier


@pytest.mark.parametrize("step, schedule, expected", [
    (0, "cosine", 0.25), (3, "cosine", 1.0),            # warm-up (s+1)/4
    (4, "cosine", 1.0),                                  # progress 0 after warm-up
    (9, "cosine", 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 5 / 10))),
    (14, "cosine", 0.1), (20, "cosine", 0.1),            # floor at min_ratio, clamped past the end
    (9, "linear", 0.1 + 0.9 * 0.5), (9, "constant", 1.0),
])
def test_warmup_then_decay(step, schedule, expected):
    got = lr_multiplier(step, total=14, warmup=4, schedule=schedule, min_ratio=0.1)
    assert got == pytest.approx(expected, abs=1e-12)
