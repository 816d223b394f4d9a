"""RL presets, field-by-field overrides, micro-batch invariance of a whole step, every preset end
to end on the tiny model, and the metrics glossary."""

import copy
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from sftrl.config import ConfigError, build_config
from sftrl.registry import RegistryError
from sftrl.runlog import RunDir
from sftrl.train.fit import Session, fit
from sftrl.lm import logprobs
from sftrl.train.rl_step import rl_step
from tests.tolerances import U, summed_terms

PRESETS = ["grpo", "grpo_trl", "dr_grpo", "dapo", "rloo", "reinforce_pp"]
SMALL = ["model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=8", "eval.k=2",
         "eval.max_new_tokens=16", "log.every=1", "threads=1", "rl.rollout.max_new_tokens=16",
         "rl.rollout.prompts_per_step=4", "rl.rollout.group_size=4", "sft.batch_size=8"]


def test_preset_values_follow_the_sources():
    grpo = build_config({}, ["rl.algo.preset=grpo"]).rl
    assert (grpo.algo.advantage, grpo.algo.weighting, grpo.algo.kl.coef, grpo.algo.kl.estimator) == \
        ("grpo", "seq_mean_token_mean", 0.04, "k3")
    dr = build_config({}, ["rl.algo.preset=dr_grpo", "rl.rollout.max_new_tokens=48"]).rl
    assert (dr.algo.advantage, dr.algo.weighting_kwargs, dr.reward.truncated, dr.algo.kl.coef) == \
        ("drgrpo", {"max_len": 48}, "zero", 0.0)
    dapo = build_config({}, ["rl.algo.preset=dapo"]).rl
    assert dapo.algo.surrogate_kwargs == {"eps_low": 0.2, "eps_high": 0.28, "dual_clip": 10.0}
    assert dapo.algo.dynamic_sampling and dapo.reward.overlong_cache == 16
    assert dapo.reward.functions[0].kwargs == {"correct": 1.0, "wrong": -1.0}
    rloo = build_config({}, ["rl.algo.preset=rloo"]).rl
    assert (rloo.algo.advantage, rloo.algo.kl.placement, rloo.algo.kl.estimator) == ("rloo", "reward", "k1")


def test_overrides_win_field_by_field_and_survive_a_round_trip():
    cfg = build_config({"rl": {"algo": {"preset": "dapo", "mini_batches": 2, "kl": {"coef": 0.01}}}},
                       ["rl.algo.surrogate_kwargs={eps_low: 0.1, eps_high: 0.3}"])
    a = cfg.rl.algo
    assert a.mini_batches == 2 and a.kl.coef == 0.01 and a.kl.estimator == "k3"
    assert a.surrogate_kwargs == {"eps_low": 0.1, "eps_high": 0.3} and a.dynamic_sampling
    from sftrl.config import to_yaml
    import yaml
    assert build_config(yaml.safe_load(to_yaml(cfg))) == cfg


@pytest.mark.parametrize("override, message", [
    ("rl.algo.preset=grpoo", "unknown preset 'grpoo'; did you mean 'grpo'"),
    ("rl.algo.advantage=rlo", "unknown advantage 'rlo'; did you mean 'rloo'"),
    ("rl.algo.surrogate_kwargs={eps_lo: 0.1}", "unknown argument 'eps_lo'; did you mean 'eps_low'"),
    ("rl.algo.kl.estimator=k4", "unknown kl estimator 'k4'"),
    ("rl.rollout.group_size=1", "group_size=1: use >= 2"),
    ("rl.algo.entropy.mode=adaptiv", "did you mean 'adaptive'"),
    ("rl.reward.functions=[{name: corectness}]", "did you mean 'correctness'"),
])
def test_rl_config_errors(override, message):
    with pytest.raises((ConfigError, RegistryError, ValueError)) as info:
        build_config({}, [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def _session(tmp_path, overrides, micro=None):
    cfg = build_config({"phases": [{"kind": "rl", "steps": 1}]},
                       SMALL + overrides + [f"rl.micro_batch_size={micro if micro else 'null'}"])
    s = Session.build(cfg, RunDir(tmp_path))
    s.policy = replace(s.policy, ref=copy.deepcopy(s.model).eval().requires_grad_(False))
    return s


class Recorder:
    """An update that records the gradient of every optimiser step and leaves the weights alone,
    so every mini-batch of both runs is computed at the same weights."""

    lr = 1e-4

    def __init__(self):
        self.grads = []

    def __call__(self, model) -> float:
        grads = [p.grad.detach().clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        self.grads.append(grads)
        return float(torch.cat([g.flatten() for g in grads]).norm())


@pytest.mark.parametrize("preset, mini", [("grpo", 1), ("grpo", 2), ("dr_grpo", 1), ("reinforce_pp", 2),
                                          ("clip_cov", 2), ("kl_cov", 2)])
def test_micro_batching_does_not_change_an_rl_step(tmp_path, preset, mini):
    # a higher temperature and an entropy bonus make every term of the loss non-trivial
    extra = [f"rl.algo.preset={preset}", "rl.rollout.temperature=1.5", "rl.algo.entropy.kwargs={coef: 0.01}",
             "rl.algo.kl.coef=0.1", f"rl.algo.mini_batches={mini}", "rl.reward.functions=[{name: format}, {name: correctness}]"]
    results = []
    for micro in (None, 3):
        s = _session(tmp_path / str(micro), extra, micro)
        with torch.no_grad():                  # a perturbed policy so KL and ratios are not trivial
            for p in s.model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        rec = Recorder()
        metrics, _, g = rl_step(s.policy, rec, s.streams, s.cfg.rl, s.algo, s.state.ctls, 0, s.rngs.sample)
        results.append((metrics, rec.grads, float(g.ro.completion_mask.sum())))
    (m0, g0, tokens), (m1, g1, _) = results
    # The same gradients: micro-batches only regroup the same per-token terms, so each entry's sum
    # differs by float32 rounding, at most n * u * sum|terms| (tests/tolerances.py): n is the step's
    # tokens plus the dot products along the path; the largest entry bounds each term's share.
    n = summed_terms(s.model, tokens, g.ro.input_ids.shape[1])
    assert len(g0) == len(g1) == mini
    tol = []
    for step0, step1 in zip(g0, g1):
        tol.append([n * U * float(a.abs().max()) for a in step0])
        for a, b, t in zip(step0, step1, tol[-1]):
            assert_close(b, a, rtol=0, atol=t + 1e-30)
    # the logged sums: per-token terms of the clipped surrogate are at most (1 + eps_high) max|adv|
    # (below 2 max|adv| at these ratios), and max|adv| <= rows * mean|adv| (adv/abs_mean); KL (k3) and
    # entropy terms are non-negative; the norm moves by at most the norm of the gradients' difference
    adv = g.ro.input_ids.shape[0] * m0["adv/abs_mean"]
    ro, temp = g.ro, s.cfg.rl.rollout.temperature           # the weights did not move (Recorder): recompute
    with torch.no_grad():                                    # each KL term; the weights sum to at most 1
        lp, rp = (logprobs.token_logp(m, ro.input_ids, ro.attention_mask, ro.prompt_ids.shape[1], temperature=temp)
                  for m in (s.model, s.policy.ref))
    kl_terms = float((s.algo.kl(lp, rp).abs() * ro.completion_mask).max())
    size = {"loss/pg": 2 * adv, "policy/kl": kl_terms, "policy/entropy": m0["policy/entropy"]}
    size["loss/total"] = size["loss/pg"] + 0.1 * size["policy/kl"] + 0.01 * size["policy/entropy"]
    for key, bound in size.items():
        assert m1[key] == pytest.approx(m0[key], rel=0, abs=n * U * bound + 1e-30), key
    norm_tol = sum(t ** 2 * a.numel() for t, a in zip(tol[-1], g0[-1])) ** 0.5
    assert m1["grad/norm"] == pytest.approx(m0["grad/norm"], rel=0, abs=norm_tol + 1e-30)


def glossary_patterns() -> list[re.Pattern]:
    text = (Path(__file__).resolve().parents[1] / "docs" / "METRICS.md").read_text()
    keys = []
    for cell in re.findall(r"^\| ([^|]+) \|", text, flags=re.M):
        keys += re.findall(r"`([^`]+)`", cell)
    pats = []
    for k in keys:
        k = re.escape(k).replace(re.escape("<name>"), r"[^/]+").replace(re.escape("<task>"), r"[^/]+")
        pats.append(re.compile("^" + k.replace(re.escape("<k>"), r"\d+") + "$"))
    return pats


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_runs_and_logs_only_documented_metrics(tmp_path, preset):
    cfg = build_config({"name": preset, "phases": [{"kind": "sft", "steps": 2}, {"kind": "rl", "steps": 2}]},
                       SMALL + [f"rl.algo.preset={preset}", "rl.algo.mini_batches=2",
                                "rl.algo.max_gen_batches=2", "rl.reward.functions=[{name: format}]"])
    fit(cfg, tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines] == ["sft", "sft", "rl", "rl"]
    assert "policy/kl" in lines[-1] and "policy/entropy" in lines[-1]   # KL logged even at coef 0
    pats = glossary_patterns()
    final = json.loads((tmp_path / "r" / "final.json").read_text())
    for key in {k for line in lines for k in line} | set(final):
        assert any(p.match(key) for p in pats), f"{key} is not in docs/METRICS.md"
