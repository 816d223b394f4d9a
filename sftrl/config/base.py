"""Base pieces shared by every config section: the frozen model base, the error type, optimiser settings.

Kept apart from the sections so both `sftrl.config.schema` and `sftrl.config.rl` can use them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ConfigError(ValueError):
    """A config problem, stated in one line with the key and how to fix it."""


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class OptimConfig(Frozen):
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(0, ge=0, description="Linear warm-up from 0 to lr over these optimiser steps.")
    schedule: Literal["constant", "linear", "cosine"] = Field(
        "constant", description="Decay after warm-up, over the rest of the phase.")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Floor of the decay as a fraction of lr.")
    grad_clip: float | None = Field(1.0, description="Clip the global gradient norm to this; None = off.")


