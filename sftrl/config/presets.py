"""Named methods and RL presets as plain data: points in the space of independent choices.

Owns: `PRESETS` (name -> fn(max_new_tokens) -> the algo, reward and hybrid fields a preset fills),
`METHODS` (name -> phases over a step budget plus the preset it implies) and `fill_unset`. Which
paper each preset follows, and where it deviates, is in docs/ALGORITHMS.md. Nothing here is a
config model: `sftrl.config.rl` and `sftrl.config.schema` read these tables when they validate.
"""

from __future__ import annotations


CHOICES = {"advantage": "advantage_kwargs", "surrogate": "surrogate_kwargs", "weighting": "weighting_kwargs",
           "token_filter": "token_filter_kwargs", "route": "route_kwargs", "weight": "weight_kwargs",
           "offpolicy_loss": "offpolicy_kwargs", "self_weight": "self_weight_kwargs", "mode": "kwargs"}
"""A registry choice and the field holding its keyword arguments: a preset's arguments belong to
the preset's own choice, so a config that picks another function without giving arguments gets
that function's defaults (GSPO's clip widths, not PPO's)."""


def fill_unset(user: dict, preset: dict) -> dict:
    """Recursively take preset values wherever the user's value is missing or None; a choice the
    user changed keeps its own defaults instead of the preset's arguments (`CHOICES`)."""
    out = dict(user)
    for choice, kwargs in CHOICES.items():
        if out.get(choice) not in (None, preset.get(choice)) and out.get(kwargs) is None and kwargs in preset:
            out[kwargs] = {}
    for key, value in preset.items():
        if isinstance(value, dict) and key in ("kl", "entropy"):
            out[key] = fill_unset(dict(out.get(key) or {}), value)
        elif out.get(key) is None:
            out[key] = value
    return out


CORRECT_01 = [{"name": "correctness", "weight": 1.0, "kwargs": {}}]


def _base() -> dict:
    """Fields every preset shares unless it says otherwise."""
    return {
        "algo": {"advantage": "grpo", "advantage_kwargs": {}, "surrogate": "ppo_clip",
                 "surrogate_kwargs": {"eps_low": 0.2, "eps_high": 0.2}, "weighting": "token_mean",
                 "weighting_kwargs": {}, "token_filter": "none", "token_filter_kwargs": {},
                 "kl": {"coef": 0.0, "estimator": "k3", "placement": "loss"},
                 "entropy": {"mode": "constant", "kwargs": {"coef": 0.0}},
                 "mini_batches": 1, "epochs": 1, "shuffle": False, "dynamic_sampling": False},
        "reward": {"functions": CORRECT_01, "truncated": "keep", "overlong_cache": 0, "overlong_factor": 1.0},
        "hybrid": {"route": "none", "route_kwargs": {}, "replace_group": False, "execution": "joint",
                   "source": "routed", "stream_size": None, "weight": "constant",
                   "weight_kwargs": {"value": 1.0}, "mix": "sum", "token_weight": "none",
                   "entropy_coef": 0.0, "buffer_trigger": None, "buffer_order": "lifo",
                   "buffer_epochs": 1, "buffer_batch": None, "buffer_lr": None, "offpolicy": 0,
                   "offpolicy_loss": "shaped", "offpolicy_kwargs": {"gamma": 0.1}, "sft_slots": 0,
                   "self_weight": "none", "self_weight_kwargs": {}},
    }


def _with(algo: dict | None = None, reward: dict | None = None, hybrid: dict | None = None) -> dict:
    base = _base()
    base["algo"].update(algo or {})
    base["reward"].update(reward or {})
    base["hybrid"].update(hybrid or {})
    return base


def _verl_mix(max_new: int) -> dict:
    """The RL part of the verl-based hybrids' scripts (LUFFY, ReLIFT, HPT, SRFT, LUFFY's "RL w/ SFT
    loss"): group-mean advantage (grpo without std), no clip, token sum over the constant
    max_response_length, entropy bonus 0.001, no KL, and two optimiser steps per rollout (train
    batch 128 prompts, mini-batch 64)."""
    return {"advantage": "drgrpo", "surrogate": "no_clip", "surrogate_kwargs": {},
            "weighting": "seq_mean_token_sum_norm", "weighting_kwargs": {"max_len": max_new},
            "entropy": {"mode": "constant", "kwargs": {"coef": 1e-3}}, "mini_batches": 2}


PRESETS = {
    # DeepSeekMath: z-score groups, symmetric clip, per-sequence mean, k3 KL 0.04 in the loss
    "grpo": lambda max_new: _with({"weighting": "seq_mean_token_mean",
                                   "kl": {"coef": 0.04, "estimator": "k3", "placement": "loss"}}),
    # TRL's current default: token-level loss, no KL
    "grpo_trl": lambda max_new: _with(),
    # Dr. GRPO (oat): mean-centred, constant length normaliser, truncated -> 0, 8 updates per rollout
    # on rows shuffled before they are split (oat permutes them every epoch)
    "dr_grpo": lambda max_new: _with({"advantage": "drgrpo", "weighting": "const_len",
                                      "weighting_kwargs": {"max_len": max_new}, "mini_batches": 8,
                                      "shuffle": True},
                                     {"truncated": "zero"}),
    # DAPO: clip-higher + dual clip, token mean, dynamic sampling, soft overlong punishment, +-1 rewards
    "dapo": lambda max_new: _with({"surrogate_kwargs": {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": 10.0},
                                   "dynamic_sampling": True, "mini_batches": 16},
                                  {"functions": [{"name": "correctness", "weight": 1.0,
                                                  "kwargs": {"correct": 1.0, "wrong": -1.0}}],
                                   "overlong_cache": max(1, max_new // 4)}),
    # RLOO: leave-one-out baseline, KL (k1) folded into the reward
    "rloo": lambda max_new: _with({"advantage": "rloo",
                                   "kl": {"coef": 0.01, "estimator": "k1", "placement": "reward"}}),
    # REINFORCE++ (verl reinforce_plus_plus, its recipe): no group baseline; the score on the last
    # token minus beta * k1 per token, returns to go, whitened over the batch's tokens; beta 0.001
    "reinforce_pp": lambda max_new: _with({"advantage": "reinforce_pp", "advantage_kwargs": {"gamma": 1.0},
                                           "kl": {"coef": 0.001, "estimator": "k1", "placement": "reward"}}),
    # REINFORCE++-baseline: group-centred then batch-whitened, k2 KL in the loss
    "reinforce_pp_baseline": lambda max_new: _with({"advantage": "reinforce_pp_baseline",
                                                    "kl": {"coef": 0.01, "estimator": "k2", "placement": "loss"}}),
    # Clip-Cov and KL-Cov (Entropy-Mechanism-of-RL 7B recipes): token mean, 8 optimiser steps per
    # rollout (256 prompts, mini-batch 32); Clip-Cov keeps PPO's clip with widths 1/1, KL-Cov has
    # no clip and penalises |log r| on the top 0.2% tokens by covariance
    "clip_cov": lambda max_new: _with({"surrogate_kwargs": {"eps_low": 1.0, "eps_high": 1.0},
                                       "token_filter": "clip_cov",
                                       "token_filter_kwargs": {"ratio": 2e-4, "cov_low": 1.0, "cov_high": 5.0},
                                       "mini_batches": 8}),
    "kl_cov": lambda max_new: _with({"surrogate": "no_clip", "surrogate_kwargs": {}, "token_filter": "kl_cov",
                                     "token_filter_kwargs": {"k": 2e-3, "coef": 1.0}, "mini_batches": 8}),
    # -- hybrids (§3-6): the RL part is a point in the same space, plus the `hybrid` section -----
    # "RL w/ SFT loss" (LUFFY train_rl_sft_loss.sh): 7 samples + the demonstration in the eighth
    # slot, which goes to the SFT term (token-mean NLL, weight 1); grpo_split = group mean over the
    # samples only, no std, no clip, token sum / max length, entropy 0.001
    "joint": lambda max_new: _with(_verl_mix(max_new), hybrid={"route": "always", "sft_slots": 1}),
    # ReLIFT (code): all-fail problems -> LIFO buffer; separate SFT step (own AdamW, entropy 1e-3)
    # when it holds a full batch; the all-fail groups stay in the RL loss
    "relift": lambda max_new: _with(_verl_mix(max_new), hybrid={"route": "all_fail", "execution": "buffer",
                                                                "entropy_coef": 1e-3}),
    # SuperRL-v2 rule: all-fail groups are replaced by SFT on their demonstration, weight 1; the RL
    # part is the shared base (z-score groups, clip 0.2, token mean, no KL)
    "superrl": lambda max_new: _with(hybrid={"route": "all_fail", "replace_group": True}),
    # HPT (switch): <= gamma correct -> SFT on the demonstration replaces the group (gamma 0 for
    # Qwen-Math-7B, 2 for Llama-8B); RL part as LUFFY's
    "hpt": lambda max_new: _with(_verl_mix(max_new), hybrid={"route": "success_le", "route_kwargs": {"gamma": 0},
                                                             "replace_group": True}),
    # LUFFY: G-1 samples + 1 demonstration per group, group-mean advantage over the mixed group,
    # on-policy -r A without clip, demonstration tokens -A p/(p+0.1), token sum / max length
    "luffy": lambda max_new: _with(_verl_mix(max_new), hybrid={"offpolicy": 1}),
    # SRFT (paper + Unify-Post-Training train_srft.sh): demonstration in the group with LUFFY's
    # off-policy term, SFT on it weighted 0.5 exp(-H); own samples: correct +0.1 exp(H), wrong -1,
    # -w log p; RL part as LUFFY's otherwise
    "srft": lambda max_new: _with({**_verl_mix(max_new), "surrogate": "reinforce", "surrogate_kwargs": {}},
                                  hybrid={"offpolicy": 1, "route": "always", "weight": "srft",
                                          "weight_kwargs": {"scale": 0.5}, "self_weight": "srft",
                                          "self_weight_kwargs": {"pos_scale": 0.1, "neg": -1.0}}),
    # CHORD-mu (Trinity-RFT mix_chord): expert stream = 20% of rows, (1-mu) L_GRPO + mu L_SFT,
    # mu 0.9 -> 0.05 by cosine over 200 steps; CHORD-phi: weight constant 0.1 + token_weight phi
    "chord": lambda max_new: _with(hybrid={"source": "stream", "mix": "convex", "weight": "chord_mu",
                                           "weight_kwargs": {"peak": 0.9, "valley": 0.05, "warmup": 0,
                                                             "decay": 200}}),
}


# -- named methods: phases over a budget (`schedule`, a ScheduleConfig) plus an RL preset -------
def _only(kind: str):
    return lambda s: [{"kind": kind, "steps": s.steps}]


def _sft_then_rl(s) -> list[dict]:
    n_sft = round(s.steps * s.sft_frac)
    return [{"kind": "sft", "steps": n_sft}, {"kind": "rl", "steps": s.steps - n_sft}]


def _alternate(s) -> list[dict]:
    return [{"kind": "alternate", "steps": s.steps, "rl_steps": s.rl_steps, "sft_steps": s.sft_steps}]


METHODS: dict[str, tuple] = {
    # name: (phases from the schedule budget, RL preset filled into rl.algo.preset)
    "sft": (_only("sft"), None),
    "sft_then_rl": (_sft_then_rl, None),
    "alternate": (_alternate, None),
    **{name: (_only("rl"), name) for name in
       ("grpo", "grpo_trl", "dr_grpo", "dapo", "rloo", "reinforce_pp", "reinforce_pp_baseline", "clip_cov",
        "kl_cov", "joint", "relift", "superrl", "hpt", "luffy", "srft", "chord")},
}
"""Named methods: a schedule of phases plus an RL preset. Written phases and an explicit
rl.algo.preset win over the method's."""
