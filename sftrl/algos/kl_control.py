"""The KL coefficient beta as a controller: fixed, or adapted towards a target KL (ALGORITHMS.md §0.4).

Owns: `KL_CONTROLLERS` (frozen values with `.coef` and a pure `.update(kl, n)`), `make_kl_controller`
and their checkpoint state, mirroring the entropy controllers (`sftrl.algos.entropy`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from sftrl.registry import Registry

KL_CONTROLLERS = Registry("KL controller")


@KL_CONTROLLERS.register("fixed")
@dataclass(frozen=True)
class FixedKL:
    """beta stays at `coef`."""

    coef: float = 0.0

    def update(self, kl: float, n: int) -> "FixedKL":
        return self


@KL_CONTROLLERS.register("adaptive")
@dataclass(frozen=True)
class AdaptiveKL:
    """verl AdaptiveKLController / OpenRLHF kl.target (Ziegler et al. 2019): after each step,
    beta *= 1 + clip(kl / target - 1, -0.2, 0.2) * n / horizon, where kl is the step's mean over
    sequences of each sequence's token-mean KL and n the number of sequences; the new beta
    applies from the next step."""

    coef: float = 0.0
    target: float = 0.1
    horizon: int = 10000

    def update(self, kl: float, n: int) -> "AdaptiveKL":
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        return replace(self, coef=self.coef * (1.0 + error * n / self.horizon))


def make_kl_controller(kcfg):
    """The controller of a KLConfig: adaptive when `target` is set (as OpenRLHF), else fixed."""
    if kcfg.target is not None:
        return AdaptiveKL(coef=kcfg.coef, target=kcfg.target, horizon=kcfg.horizon)
    return FixedKL(coef=kcfg.coef)


def kl_controller_state(ctl) -> dict:
    return {"mode": next(k for k, v in KL_CONTROLLERS.items() if v is type(ctl)), "fields": asdict(ctl)}


def kl_controller_from_state(state: dict):
    return KL_CONTROLLERS[state["mode"]](**state["fields"])
