"""Entropy control: coefficient controllers (ALGORITHMS.md §7).

Owns: `ENTROPY`, frozen controllers with `.coef` and a pure `.update(entropy, step)`, and their
checkpoint state. Token filters (Clip-Cov, KL-Cov, top-entropy) are `sftrl.algos.filters`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

from sftrl.registry import Registry, did_you_mean

ENTROPY = Registry("entropy controller")


@ENTROPY.register("off")
@dataclass(frozen=True)
class Off:
    """No entropy bonus (entropy is still logged)."""

    @property
    def coef(self) -> float:
        return 0.0

    def update(self, entropy: float, step: int) -> "Off":
        return self


@ENTROPY.register("constant")
@dataclass(frozen=True)
class Constant:
    """L = L_pg - coef * H (0.001 in LUFFY/ReLIFT/HPT scripts)."""

    coef: float = 0.0

    def update(self, entropy: float, step: int) -> "Constant":
        return self


@ENTROPY.register("scheduled")
@dataclass(frozen=True)
class Scheduled:
    """Coefficient moving from `start` to `end` over `steps` RL steps, linear or cosine."""

    start: float = 1e-3
    end: float = 0.0
    steps: int = 100
    shape: str = "linear"
    t: int = 0

    def __post_init__(self):
        if self.shape not in ("linear", "cosine"):
            raise ValueError(f"entropy scheduled: shape={self.shape!r}; use 'linear' or 'cosine'")

    @property
    def coef(self) -> float:
        x = min(1.0, self.t / max(1, self.steps))
        mix = x if self.shape == "linear" else 0.5 * (1 - math.cos(math.pi * x))
        return self.start + (self.end - self.start) * mix

    def update(self, entropy: float, step: int) -> "Scheduled":
        return replace(self, t=self.t + 1)


@ENTROPY.register("adaptive")
@dataclass(frozen=True)
class Adaptive:
    """Skywork-OR1 EntController: alpha += delta while entropy < target, else -= delta, clipped to
    [min_coef, max_coef]; the bonus applies only while the last measured entropy is below target."""

    alpha: float = 0.0
    target: float = 0.2
    delta: float = 1e-4
    max_coef: float = 5e-3
    min_coef: float = 0.0
    last: float = math.inf

    @property
    def coef(self) -> float:
        return self.alpha if self.last < self.target else 0.0

    def update(self, entropy: float, step: int) -> "Adaptive":
        step_ = self.delta if entropy < self.target else -self.delta
        alpha = min(max(self.alpha + step_, self.min_coef), self.max_coef)
        return replace(self, alpha=alpha, last=entropy)


def make_controller(mode: str, kwargs: dict | None):
    """A controller from its registry name and settings, checked against its fields."""
    cls = ENTROPY[mode]
    kwargs = dict(kwargs or {})
    fields = list(cls.__dataclass_fields__)
    for key in kwargs:
        if key not in fields:
            raise ValueError(f"entropy controller {mode!r}: unknown setting {key!r}; {did_you_mean(key, fields)}")
    return cls(**kwargs)


def controller_state(ctl) -> dict:
    return {"mode": next(k for k, v in ENTROPY.items() if v is type(ctl)), "fields": asdict(ctl)}


def controller_from_state(state: dict):
    return ENTROPY[state["mode"]](**state["fields"])
