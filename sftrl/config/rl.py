"""RL settings: rollout, rewards, and the algorithm as a point in (advantage, surrogate, weighting,
KL, entropy, token filter) space, filled from a named preset.

Owns: `RLConfig` and its sections. A preset (`sftrl.config.presets.PRESETS`) supplies every
algorithm field the user leaves unset (None); anything written in the YAML or on the command line
wins, field by field. The resolved
values are what config.yaml records, so a run never depends on a preset table that may change.
Which paper each preset follows, and where it deviates, is in docs/ALGORITHMS.md.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sftrl.config.base import Frozen, OptimConfig
from sftrl.config.presets import PRESETS, fill_unset
from sftrl.registry import RegistryError, did_you_mean


class RolloutConfig(Frozen):
    group_size: int = Field(8, description="G: completions per prompt; group baselines need G >= 2.")
    prompts_per_step: int = Field(16, ge=1, description="P: distinct problems per rollout (N = P x G rows).")
    max_new_tokens: int = Field(64, ge=1, description="Completions are cut here (see reward.truncated).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; log-probs and entropy use it too.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling threshold (1 = off).")
    engine: Literal["auto", "direct", "hf", "vllm"] = Field(
        "auto", description="Decode loop: 'direct' runs a Llama-style model's layers on a preallocated "
        "KV cache, 'hf' calls model(...) each token, 'auto' = direct when the model supports it (both "
        "sample the same tokens from the same seed); 'vllm' = a colocated vLLM engine (CUDA, "
        "pip install 'sftrl[vllm]'), weights pushed before every rollout.")
    vllm_gpu_memory: float = Field(0.3, gt=0, lt=1, description="Fraction of GPU memory vLLM may take "
                                   "(engine=vllm); the rest is the learner's.")

    @field_validator("group_size")
    @classmethod
    def _group(cls, v):
        if v < 2:
            raise ValueError(f"group_size={v}: use >= 2; a group of one has no baseline, so its "
                             f"advantage is always 0")
        return v


class RewardSpec(Frozen):
    name: str = Field(description="A name in sftrl.data.rewards.REWARDS or a custom 'module:function'.")
    weight: float = Field(1.0, description="Weight of this reward in the scalar sum.")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword hyperparameters of the reward.")

    @model_validator(mode="after")
    def _resolves(self):
        from sftrl.registry import check_kwargs
        from sftrl.data.rewards import resolve_reward
        check_kwargs(resolve_reward(self.name), self.kwargs, f"reward {self.name!r}")
        return self


class RewardConfig(Frozen):
    functions: list[RewardSpec] | None = Field(None, description="Rewards summed with weights; "
                                               "None = from preset (correctness 1/0, DAPO +-1).")
    truncated: Literal["zero", "keep", "mask"] | None = Field(
        None, description="Completions cut at max_new_tokens: reward 0 (Dr. GRPO), keep their "
        "reward, or mask them out of the loss (DAPO overlong filtering). None = from preset.")
    overlong_cache: int | None = Field(None, description="DAPO soft overlong punishment: length "
                                       "buffer before max_new_tokens (0 = off). None = from preset.")
    overlong_factor: float | None = Field(None, description="Scale of the overlong penalty. None = from preset.")


class KLConfig(Frozen):
    coef: float | None = Field(None, ge=0, description="beta: weight of KL to the frozen initial policy.")
    estimator: str | None = Field(None, description="Estimator of the per-token KL (algos.policy.KL; ALGORITHMS.md 0.4).")
    placement: Literal["loss", "reward"] | None = Field(
        None, description="In the loss (GRPO), or subtracted from the reward: from each sequence's "
        "scalar reward before a group baseline (RLOO), per token before the returns (REINFORCE++).")
    target: float | None = Field(None, gt=0, description="Adaptive beta (verl kl_ctrl.type=adaptive, OpenRLHF "
                                 "kl.target): after each step beta *= 1 + clip(KL/target - 1, +-0.2) * n/horizon, "
                                 "KL the mean per-sequence token-mean KL; None = fixed beta.")
    horizon: int = Field(10000, ge=1, description="Adaptive beta: its horizon, in sequences.")
    log: bool = Field(True, description="Keep a reference copy to log KL even when coef is 0 "
                      "(set false to save its memory).")


class EntropyConfig(Frozen):
    mode: str | None = Field(None, description="Entropy controller (sftrl.algos.entropy.ENTROPY). None = from "
                             "preset.")
    kwargs: dict[str, Any] | None = Field(None, description="Controller settings, e.g. {coef: 0.001} "
                                          "or {target: 0.2, delta: 1e-4, max_coef: 5e-3}.")


class AlgoConfig(Frozen):
    preset: str = Field("grpo", description="RL preset (config.presets.PRESETS): a named method's algorithm, "
                        "reward and hybrid values, filling every field left unset.")
    advantage: str | None = Field(None, description="Advantage estimator (algos.policy.ADVANTAGES).")
    advantage_kwargs: dict[str, Any] | None = Field(None, description="Its keyword hyperparameters.")
    surrogate: str | None = Field(None, description="Per-token surrogate (algos.policy.SURROGATES).")
    surrogate_kwargs: dict[str, Any] | None = Field(None, description="e.g. {eps_low: 0.2, eps_high: 0.28, dual_clip: 10}.")
    weighting: str | None = Field(None, description="Loss aggregation (algos.policy.WEIGHTINGS).")
    weighting_kwargs: dict[str, Any] | None = Field(None, description="e.g. {max_len: 64} for const_len.")
    token_filter: str | None = Field(None, description="Tokens kept in or penalised by the policy "
                                     "loss (algos.filters.TOKEN_FILTERS).")
    token_filter_kwargs: dict[str, Any] | None = Field(None, description="Its hyperparameters.")
    kl: KLConfig = Field(default_factory=KLConfig, description="KL to the reference policy.")
    entropy: EntropyConfig = Field(default_factory=EntropyConfig, description="Entropy regularisation.")
    mini_batches: int | None = Field(None, ge=1, description="Optimiser steps per pass over the rollout "
                                     "(rows split evenly).")
    epochs: int | None = Field(None, ge=1, description="Passes over one rollout (TRL num_iterations, verl "
                               "ppo_epochs); behaviour log-probs are computed once, before the first.")
    shuffle: bool | None = Field(None, description="Permute the rollout's rows before each pass is split "
                                 "into mini-batches (oat); false keeps them in order (verl, TRL).")
    dynamic_sampling: bool | None = Field(None, description="DAPO: drop groups whose accuracy is "
                                          "all-equal and sample more until the batch is full.")
    max_gen_batches: int = Field(4, ge=1, description="Dynamic sampling gives up refilling after this many rollouts.")


class HybridConfig(Frozen):
    """Supervision inside RL steps (ALGORITHMS.md §3-6). Every field None = from preset."""

    route: str | None = Field(None, description="Which groups get SFT on their demonstration "
                              "(algos.hybrid.ROUTES).")
    route_kwargs: dict[str, Any] | None = Field(None, description="e.g. {gamma: 2} for success_le (HPT).")
    replace_group: bool | None = Field(None, description="Routed groups leave the RL loss (SuperRL, "
                                       "HPT); false keeps them (ReLIFT: zero advantage, entropy only).")
    execution: Literal["joint", "buffer"] | None = Field(
        None, description="joint: SFT term added to the RL loss each step; buffer: routed problems "
        "wait in a buffer and a separate SFT step with its own optimiser fires when it is full (ReLIFT).")
    source: Literal["routed", "stream"] | None = Field(
        None, description="routed: demonstrations of the routed prompts; stream: a separate batch "
        "of `stream_size` demonstrations every step (CHORD's expert stream).")
    stream_size: int | None = Field(None, ge=1, description="Demonstrations per step from the "
                                    "expert stream (None = prompts_per_step x group_size / 4, CHORD's 20% share).")
    weight: str | None = Field(None, description="SFT weight: a schedule lambda(t) (algos.hybrid.SFT_SCHEDULES) or "
                               "per-row weights (algos.hybrid.SFT_ROW_WEIGHTS: srft is entropy-aware, per "
                               "sequence).")
    weight_kwargs: dict[str, Any] | None = Field(None, description="e.g. {value: 0.1} or {peak: 0.9, "
                                                 "valley: 0.05, warmup: 0, decay: 200}.")
    mix: Literal["sum", "convex"] | None = Field(None, description="sum: L_RL + lambda L_SFT; convex: "
                                                 "(1 - lambda) L_RL + lambda L_SFT (CHORD).")
    token_weight: str | None = Field(None, description="SFT token weight (algos.hybrid.TOKEN_WEIGHTS; phi is CHORD-phi).")
    entropy_coef: float | None = Field(None, ge=0, description="Entropy bonus inside the SFT term "
                                       "or buffer step (ReLIFT: 0.001).")
    buffer_trigger: int | None = Field(None, ge=1, description="ReLIFT: SFT step fires when this "
                                       "many problems wait (None = prompts_per_step).")
    buffer_order: Literal["lifo", "fifo"] | None = Field(None, description="ReLIFT trains the newest first (lifo).")
    buffer_epochs: int | None = Field(None, ge=1, description="Passes over the popped problems per trigger.")
    buffer_batch: int | None = Field(None, ge=1, description="Demonstrations per optimiser step of "
                                     "the buffer step (None = the whole trigger batch).")
    buffer_lr: float | None = Field(None, gt=0, description="Learning rate of the buffer step's own "
                                    "AdamW (None = rl.optim.lr; ReLIFT uses the RL rate).")
    offpolicy: int | None = Field(None, ge=0, le=1, description="Demonstrations placed inside each "
                                  "group, replacing one sample (LUFFY, SRFT: 1).")
    offpolicy_loss: str | None = Field(None, description="Loss of demonstration tokens "
                                       "(algos.hybrid.OFFPOLICY; shaped is p/(p+gamma)).")
    offpolicy_kwargs: dict[str, Any] | None = Field(None, description="e.g. {gamma: 0.1}.")
    sft_slots: int | None = Field(None, ge=0, le=1, description="Group slots given to the demonstration of "
                                  "the SFT term: G - 1 samples per prompt, the group baseline over them only "
                                  "(LUFFY's 'RL w/ SFT loss': 7 samples + 1 demonstration); needs route=always.")
    self_weight: str | None = Field(None, description="Reweighting of the policy's own samples "
                                    "(algos.hybrid.SELF_WEIGHTS).")
    self_weight_kwargs: dict[str, Any] | None = Field(None, description="e.g. {pos_scale: 0.1, neg: -1}.")


class RLConfig(Frozen):
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Sampling settings.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward settings.")
    algo: AlgoConfig = Field(default_factory=AlgoConfig, description="The algorithm.")
    hybrid: HybridConfig = Field(default_factory=HybridConfig, description="SFT inside RL: routing, "
                                 "joint loss, buffer, off-policy demonstrations (filled from the preset).")
    micro_batch_size: int | None = Field(32, description="Rows per forward/backward, grouped by "
                                         "completion length so short rows are not padded to the longest; "
                                         "never changes the objective. None = whole mini-batch.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-4, warmup_steps=0),
                               description="Optimiser of RL steps.")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data):
        if not isinstance(data, dict):
            return data
        algo = dict(data.get("algo") or {})
        name = algo.get("preset") or "grpo"
        if name not in PRESETS:
            raise RegistryError(f"unknown preset {name!r}; {did_you_mean(name, PRESETS)}")
        max_new = int((data.get("rollout") or {}).get("max_new_tokens") or RolloutConfig().max_new_tokens)
        preset = PRESETS[name](max_new)
        out = dict(data)
        for section in ("algo", "reward", "hybrid"):
            out[section] = fill_unset(dict(data.get(section) or {}), preset[section])
        out["algo"] = _default_max_len(out["algo"], max_new)
        return out

    @model_validator(mode="after")
    def _names_resolve(self):
        from sftrl.algos import entropy, filters
        from sftrl.algos import policy as algos
        from sftrl.registry import bind
        a = self.algo
        if a.advantage in algos.TOKEN_ADVANTAGES:
            bind(algos.TOKEN_ADVANTAGES, a.advantage, a.advantage_kwargs)
        elif a.advantage not in algos.ADVANTAGES:
            raise RegistryError(f"unknown advantage {a.advantage!r}; "
                                f"{did_you_mean(a.advantage, [*algos.ADVANTAGES, *algos.TOKEN_ADVANTAGES])}")
        else:
            bind(algos.ADVANTAGES, a.advantage, a.advantage_kwargs)
        bind(algos.SURROGATES, a.surrogate, a.surrogate_kwargs)
        check_clip(a.surrogate_kwargs)
        bind(algos.WEIGHTINGS, a.weighting, a.weighting_kwargs)
        bind(filters.TOKEN_FILTERS, a.token_filter, a.token_filter_kwargs)
        algos.KL[a.kl.estimator]
        entropy.make_controller(a.entropy.mode, a.entropy.kwargs)
        from sftrl.algos import hybrid as hy
        h = self.hybrid
        bind(hy.ROUTES, h.route, h.route_kwargs)
        if h.weight in hy.SFT_ROW_WEIGHTS:
            bind(hy.SFT_ROW_WEIGHTS, h.weight, h.weight_kwargs)
            if h.mix == "convex":
                raise ValueError(f"hybrid.mix=convex weights the RL loss by 1 - lambda(t), and "
                                 f"hybrid.weight={h.weight} has no lambda(t) (its weights are per SFT row); "
                                 f"use mix=sum, or a schedule: {', '.join(hy.SFT_SCHEDULES)}")
        elif h.weight not in hy.SFT_SCHEDULES:
            raise RegistryError(f"unknown SFT weight {h.weight!r}; "
                                f"{did_you_mean(h.weight, [*hy.SFT_SCHEDULES, *hy.SFT_ROW_WEIGHTS])}")
        else:
            bind(hy.SFT_SCHEDULES, h.weight, h.weight_kwargs)
        bind(hy.TOKEN_WEIGHTS, h.token_weight)
        bind(hy.OFFPOLICY, h.offpolicy_loss, h.offpolicy_kwargs)
        bind(hy.SELF_WEIGHTS, h.self_weight, h.self_weight_kwargs)
        if (h.offpolicy or h.sft_slots) and self.rollout.group_size < 3:
            which = "hybrid.offpolicy=1" if h.offpolicy else "hybrid.sft_slots=1"
            raise ValueError(f"{which} needs rollout.group_size >= 3 (one demonstration plus at least two "
                             f"samples); got {self.rollout.group_size}")
        if h.sft_slots and (h.route != "always" or h.offpolicy):
            raise ValueError("hybrid.sft_slots=1 gives a group slot to every prompt's demonstration in the SFT "
                             "term: it needs hybrid.route=always and hybrid.offpolicy=0")
        if a.token_filter == "kl_cov":
            if a.surrogate != "no_clip":
                raise ValueError(f"token_filter=kl_cov replaces the clipped surrogate with -A r plus its penalty "
                                 f"(Entropy-Mechanism-of-RL); set rl.algo.surrogate=no_clip (got {a.surrogate}) "
                                 f"or use rl.algo.preset=kl_cov")
            if a.mini_batches * a.epochs < 2:
                raise ValueError("token_filter=kl_cov penalises |log r|, which has no gradient before the policy "
                                 "moves: with one optimiser step per rollout it does nothing; set "
                                 "rl.algo.mini_batches >= 2 (the recipe uses 8)")
        return self


def _default_max_len(algo: dict, max_new: int) -> dict:
    """A weighting with a `max_len` argument that the config leaves unset gets
    rl.rollout.max_new_tokens: the constant length Dr. GRPO and the verl hybrids divide by."""
    from sftrl.algos.policy import WEIGHTINGS
    name, kwargs = algo.get("weighting"), dict(algo.get("weighting_kwargs") or {})
    if name in WEIGHTINGS and "max_len" in inspect.signature(WEIGHTINGS[name]).parameters and "max_len" not in kwargs:
        return {**algo, "weighting_kwargs": {**kwargs, "max_len": max_new}}
    return algo


def check_clip(kwargs: dict) -> None:
    """Clip widths are numbers with 0 <= eps_low <= 1 (the ratio's lower bound 1 - eps_low stays
    non-negative; Clip-Cov's recipe uses 1) and eps_high >= 0; eps_high below eps_low is a valid
    asymmetric range, so allowed."""
    for key, top in (("eps_low", 1.0), ("eps_high", float("inf"))):
        v = kwargs.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= top:
            bound = "0 <= eps_low <= 1" if key == "eps_low" else "eps_high >= 0"
            raise ValueError(f"rl.algo.surrogate_kwargs.{key}={v!r}: a clip width needs {bound} "
                             f"(e.g. {key}=0.2)")
