"""Hybrid SFT + RL: routing rules on hand-built reward matrices, the ReLIFT buffer, LUFFY shaping,
SRFT and CHORD weights by hand, the joint-loss gradient as the weighted sum of its parts, routing
before dynamic sampling, alternating schedules, and every hybrid method end to end."""

import copy
import json
import math

import pytest
import torch
from torch.testing import assert_close

from sftrl.algos import hybrid
from sftrl.train import relift
from sftrl.config import build_config
from sftrl.train.rl_step import rl_step
from sftrl.batch import Rollout
from sftrl.data.tasks.base import Problem
from sftrl.train.fit import buffer_step, fit, run_rl_step
from sftrl.train.optim import Update
from sftrl.train.sft_step import sft_step
from tests.warm import SMALL, session

METHODS = ["sft", "grpo", "sft_then_rl", "alternate", "joint", "relift", "superrl", "hpt", "luffy", "srft", "chord"]


# -- routing rules ------------------------------------------------------------------------------
ACC = torch.tensor([[0., 0., 0., 0.],      # all fail
                    [1., 0., 0., 0.],      # one correct
                    [1., 1., 0., 0.],      # two correct
                    [1., 1., 1., 1.]])     # all correct


@pytest.mark.parametrize("name, kwargs, expected", [
    ("none", {}, [False, False, False, False]),
    ("always", {}, [True, True, True, True]),
    ("all_fail", {}, [True, False, False, False]),            # SuperRL-v2 / ReLIFT
    ("success_le", {"gamma": 0}, [True, False, False, False]),  # HPT, Qwen-Math gate
    ("success_le", {"gamma": 2}, [True, True, True, False]),    # HPT, Llama gate
])
def test_routing_rules_on_a_hand_built_matrix(name, kwargs, expected):
    assert hybrid.ROUTES[name](ACC, **kwargs).tolist() == expected


# -- the ReLIFT buffer --------------------------------------------------------------------------
def _problems(*ids):
    return [Problem(id=i, prompt=f"{i}=", answer="0") for i in ids]


def test_buffer_is_lifo_and_fires_exactly_at_its_trigger():
    b = relift.SFTBuffer(order="lifo")
    b.push(_problems("a", "b"))
    assert b.pop(3) == [] and b.triggers == 0                  # 2 < 3: nothing fires
    b.push(_problems("c"))
    assert [p.id for p in b.pop(3)] == ["c", "a", "b"] and b.triggers == 1 and b.items == []
    b.push(_problems("d", "e"))
    b.push(_problems("f", "g"))
    assert [p.id for p in b.pop(3)] == ["f", "g", "d"] and [p.id for p in b.items] == ["e"]
    fifo = relift.SFTBuffer(order="fifo")
    fifo.push(_problems("a", "b"))
    fifo.push(_problems("c"))
    assert [p.id for p in fifo.pop(2)] == ["a", "b"]
    state = b.state()
    again = relift.SFTBuffer()
    again.load_state(state, {p.id: p for p in _problems("e")})
    assert again.state() == state


def test_relift_buffer_fires_at_its_trigger_and_trains_only_on_buffered_problems(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=relift", "rl.hybrid.buffer_trigger=3"])
    trained = []
    record = lambda problems: (trained.append([p.id for p in problems]), buffer_step(s, problems))[1]  # noqa: E731
    fired = 0
    for _ in range(4):
        waiting = list(s.state.buffer.items)
        m, _, s.last_groups = rl_step(s.policy, s.optims.update("rl", s.cfg.rl.optim, what="rl"), s.streams,
                                      s.cfg.rl, s.algo, s.state.ctls, 0, s.rngs.sample)
        m.update(s.state.buffer.step(s.last_groups.routed, record))
        waiting = s.last_groups.routed + waiting                   # LIFO: this step's first
        assert [p.id for p in s.last_groups.routed] == [p.id for p in s.last_groups.problems
                                                          if p.id in {q.id for q in s.last_groups.routed}]
        if len(waiting) >= 3:
            fired += 1
            assert trained[-1] == [p.id for p in waiting[:3]]      # exactly the 3 newest buffered problems
            assert m["sft/buffer_problems"] == 3 and m["sft/buffer_steps"] == 1
            assert [p.id for p in s.state.buffer.items] == [p.id for p in waiting[3:]]
        else:
            assert "sft/buffer_problems" not in m and [p.id for p in s.state.buffer.items] == [p.id for p in waiting]
        assert len(trained) == fired and m["sft/triggers"] == fired and m["sft/buffer_size"] == len(s.state.buffer.items)
        assert m["rl/groups"] == 4                                 # ReLIFT keeps all-fail groups in RL
    assert fired >= 1


def test_buffer_step_is_one_sft_step_on_the_popped_problems(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=relift", "rl.hybrid.buffer_lr=1e-3"])
    popped = s.train_problems[:5]
    ref_model = copy.deepcopy(s.model)
    m = buffer_step(s, popped)
    opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    out = sft_step(ref_model, Update(opt, sched, 1.0, "a test step"), s.policy.demos(popped),
                   micro_batch_size=s.cfg.rl.micro_batch_size, entropy_coef=1e-3)
    assert m["loss/sft_buffer"] == pytest.approx(out["loss/sft"], rel=1e-6)
    for a, b in zip(s.model.parameters(), ref_model.parameters()):
        assert_close(a, b, atol=1e-7, rtol=1e-6)


# -- LUFFY, SRFT, CHORD by hand -------------------------------------------------------------------
def test_luffy_shaping_value_and_gradient_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.1)]], requires_grad=True)
    adv = torch.tensor([[2.0]])
    loss = hybrid.OFFPOLICY["shaped"](logp, adv, gamma=0.1)
    # -A p/(p+g): -2*0.5/0.6 and -2*0.1/0.2
    assert_close(loss.detach(), torch.tensor([[-2 * 0.5 / 0.6, -1.0]]))
    loss.sum().backward()
    # d/dlogp of -A p/(p+g) = -A g p/(p+g)^2, largest at p = g: the push goes to unlikely tokens
    assert_close(logp.grad, torch.tensor([[-2 * 0.1 * 0.5 / 0.36, -2 * 0.1 * 0.1 / 0.04]]))
    assert logp.grad[0, 1].abs() > 1.5 * logp.grad[0, 0].abs()   # unshaped (-A p): 0.2 vs 1.0
    assert_close(hybrid.OFFPOLICY["plain"](logp.detach(), adv), torch.tensor([[-1.0, -0.2]]))


def test_srft_weights_by_hand():
    H = torch.tensor([[0.0], [math.log(2.0)]])
    assert_close(hybrid.SFT_ROW_WEIGHTS["srft"](H, scale=0.5), torch.tensor([[0.5], [0.25]]))
    acc = torch.tensor([[1.0], [0.0]])
    adv = torch.tensor([[0.3], [0.3]])
    w = hybrid.SELF_WEIGHTS["srft"](adv, acc, H, pos_scale=0.1, neg=-1.0)
    assert_close(w, torch.tensor([[0.1], [-1.0]]))
    w = hybrid.SELF_WEIGHTS["srft"](adv, torch.tensor([[1.0], [1.0]]), H)
    assert_close(w, torch.tensor([[0.1], [0.2]]))           # 0.1 * exp(ln 2)


@pytest.mark.parametrize("t, mu", [(0, 0.9), (100, 0.05 + 0.85 * 0.5), (200, 0.05), (500, 0.05)])
def test_chord_mu_schedule(t, mu):
    assert hybrid.SFT_SCHEDULES["chord_mu"](t) == pytest.approx(mu)


def test_chord_mu_warmup_and_other_schedules():
    assert hybrid.SFT_SCHEDULES["chord_mu"](50, peak=0.5, valley=0.02, warmup=200, decay=400) == \
        pytest.approx(0.125)
    assert hybrid.SFT_SCHEDULES["chord_mu"](400, peak=0.5, valley=0.02, warmup=200, decay=400) == \
        pytest.approx(0.02 + 0.48 * 0.5)
    assert hybrid.SFT_SCHEDULES["linear"](25, start=1.0, end=0.0, steps=100) == pytest.approx(0.75)
    assert hybrid.SFT_SCHEDULES["cosine"](50, start=1.0, end=0.0, steps=100) == pytest.approx(0.5)
    assert hybrid.SFT_SCHEDULES["constant"](7, value=0.3) == pytest.approx(0.3)
    p = torch.tensor([0.5, 0.9])
    assert_close(hybrid.TOKEN_WEIGHTS["phi"](p.log()), torch.tensor([0.25, 0.09]))


def test_with_demos_puts_one_demonstration_last_in_each_group():
    def ro(rows, tag):
        ids = torch.tensor([[tag * 10 + i] for i in range(rows)])
        return Rollout(prompt_ids=ids, prompt_mask=torch.ones(rows, 1), completion_ids=ids,
                       completion_mask=torch.ones(rows, 1), truncated=torch.zeros(rows, dtype=torch.bool),
                       texts=[str(x) for x in ids[:, 0].tolist()])
    merged, off = hybrid.with_demos(ro(6, 1), ro(2, 2), group_size=4, pad_id=0)
    assert merged.texts == ["10", "11", "12", "20", "13", "14", "15", "21"]
    assert off.tolist() == [False, False, False, True] * 2


# -- the joint loss -------------------------------------------------------------------------------
def _step_gradient(tmp_path, warm, overrides) -> list[torch.Tensor]:
    """The gradient an RL step applies (captured just before clipping and the optimiser step)."""
    s = session(tmp_path, warm, overrides + ["rl.optim.grad_clip=null"])
    grads = []
    update = s.optims.update("rl", s.cfg.rl.optim, what="rl step 1")

    class Capture:                          # an update that records the gradient it applies
        lr = update.lr

        def __call__(self, model):
            grads.extend(p.grad.detach().clone() for p in model.parameters())
            return update(model)
    rl_step(s.policy, Capture(), s.streams, s.cfg.rl, s.algo, s.state.ctls, 0, s.rngs.sample)
    return grads


@pytest.mark.parametrize("mix", ["sum", "convex"])
def test_joint_loss_gradient_is_the_weighted_sum_of_the_parts(tmp_path, warm, mix):
    base = ["rl.algo.preset=joint", f"rl.hybrid.mix={mix}", "rl.algo.entropy.kwargs={coef: 0.0}",
            "rl.algo.mini_batches=1"]
    g = {lam: _step_gradient(tmp_path / str(lam), warm, base + [f"rl.hybrid.weight_kwargs={{value: {lam}}}"])
         for lam in (0.0, 1.0, 0.3)}
    # same seed -> same rollout; g(0) is the RL part alone; at lambda = 1 (sum) it is RL + SFT
    for g0, g1, g3 in zip(g[0.0], g[1.0], g[0.3]):
        if mix == "sum":
            assert_close(g3, g0 + 0.3 * (g1 - g0), atol=1e-6, rtol=1e-5)
        else:                                  # (1 - mu) RL + mu SFT; g(1) is SFT alone
            assert_close(g3, 0.7 * g0 + 0.3 * g1, atol=1e-6, rtol=1e-5)
    assert any(float((a - b).abs().max()) > 1e-4 for a, b in zip(g[0.0], g[1.0]))   # both parts non-zero


# -- routing happens before dynamic sampling ---------------------------------------------------------
def test_routing_sees_groups_that_dynamic_sampling_drops(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=dapo", "rl.hybrid.route=all_fail",
                                 "rl.hybrid.replace_group=true", "rl.algo.max_gen_batches=3"])
    m = run_rl_step(s)
    g = s.last_groups
    drawn = 4 * m["groups/gen_batches"]
    assert m["sft/routed_frac"] * drawn == len(g.routed) == m["sft/rows"]
    assert len(g.routed) > 0, "the warm model should fail some group entirely"
    routed = {p.id for p in g.routed}
    assert not routed & {p.id for p in g.problems}            # replaced groups left the RL loss
    assert (g.sc.acc.max(1).values != g.sc.acc.min(1).values).all()   # the RL groups are informative


@pytest.mark.parametrize("preset", ["superrl", "hpt"])
def test_replaced_groups_become_sft_rows(tmp_path, warm, preset):
    s = session(tmp_path, warm, [f"rl.algo.preset={preset}"])
    for _ in range(8):                                          # until a step routes some group
        m = run_rl_step(s)
        g = s.last_groups
        assert m["sft/rows"] == len(g.routed) and m["rl/groups"] == 4 - len(g.routed)
        assert all(g.sc.acc.sum(1) > 0)                         # no all-fail group left in the RL loss
        if g.routed:
            break
    assert g.routed, "the warm model should fail some group entirely within 8 steps"


def test_luffy_groups_hold_one_demonstration_that_is_correct(tmp_path, warm):
    s = session(tmp_path, warm, ["rl.algo.preset=luffy"])
    m = run_rl_step(s)
    g = s.last_groups
    assert g.off.view(4, 4)[:, -1].all() and not g.off.view(4, 4)[:, :-1].any()
    assert (g.sc.acc.view(-1)[g.off] == 1).all()                # demonstrations verify as correct
    share = float(g.ro.completion_mask[g.off].sum() / g.ro.completion_mask.sum())
    assert m["policy/offpolicy_token_share"] == pytest.approx(share)


# -- schedules and methods ----------------------------------------------------------------------------
def test_alternating_phase_runs_k_rl_then_m_sft_steps(tmp_path, warm):
    cfg = build_config({"method": "alternate", "schedule": {"steps": 7, "rl_steps": 2, "sft_steps": 1}},
                       SMALL + [f"model.name={warm}"])
    fit(cfg, tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines] == ["rl", "rl", "sft", "rl", "rl", "sft", "rl"]
    assert cfg.steps_of("rl") == 5 and cfg.steps_of("sft") == 2


def test_methods_fill_phases_and_presets_but_written_values_win():
    c = build_config({"method": "sft_then_rl", "schedule": {"steps": 10, "sft_frac": 0.3}})
    assert [(p.kind, p.steps) for p in c.phases] == [("sft", 3), ("rl", 7)] and c.rl.algo.preset == "grpo"
    c = build_config({"method": "luffy", "phases": [{"kind": "sft", "steps": 2}, {"kind": "rl", "steps": 3}]},
                     ["rl.hybrid.offpolicy_kwargs={gamma: 0.2}"])
    assert [(p.kind, p.steps) for p in c.phases] == [("sft", 2), ("rl", 3)]
    assert c.rl.algo.preset == "luffy" and c.rl.hybrid.offpolicy == 1 and c.rl.hybrid.offpolicy_kwargs == {"gamma": 0.2}
    c = build_config({"method": "relift"}, ["rl.algo.preset=superrl"])
    assert c.rl.hybrid.route == "all_fail" and c.rl.hybrid.replace_group
    with pytest.raises(Exception, match="unknown method 'lufy'; did you mean 'luffy'"):
        build_config({"method": "lufy"})


@pytest.mark.parametrize("preset, values", [
    ("relift", {"route": "all_fail", "execution": "buffer", "replace_group": False, "entropy_coef": 1e-3}),
    ("superrl", {"route": "all_fail", "replace_group": True, "execution": "joint", "weight_kwargs": {"value": 1.0}}),
    ("hpt", {"route": "success_le", "route_kwargs": {"gamma": 0}, "replace_group": True}),
    ("luffy", {"offpolicy": 1, "offpolicy_loss": "shaped", "offpolicy_kwargs": {"gamma": 0.1}}),
    ("srft", {"offpolicy": 1, "route": "always", "weight": "srft", "self_weight": "srft"}),
    ("chord", {"source": "stream", "mix": "convex", "weight": "chord_mu"}),
    ("joint", {"route": "always", "weight": "constant", "mix": "sum"}),
])
def test_hybrid_presets_follow_the_sources(preset, values):
    h = build_config({}, [f"rl.algo.preset={preset}"]).rl.hybrid
    for key, value in values.items():
        assert getattr(h, key) == value, key


def test_verl_hybrids_share_the_rl_part_of_the_source_scripts():
    for preset in ("relift", "hpt", "luffy", "joint"):         # the verl scripts' RL part
        a = build_config({}, [f"rl.algo.preset={preset}", "rl.rollout.max_new_tokens=48"]).rl.algo
        assert (a.advantage, a.surrogate, a.weighting, a.weighting_kwargs, a.kl.coef, a.entropy.kwargs,
                a.mini_batches) == ("drgrpo", "no_clip", "seq_mean_token_sum_norm", {"max_len": 48}, 0.0,
                                    {"coef": 1e-3}, 2), preset


@pytest.mark.parametrize("method", METHODS)
def test_every_method_runs_end_to_end_and_logs_its_metrics(tmp_path, warm, method):
    cfg = build_config({"method": method, "schedule": {"steps": 4, "rl_steps": 1, "sft_steps": 1}},
                       SMALL + [f"model.name={warm}", "rl.hybrid.buffer_trigger=2", "log.samples_every=2"]
                       if method in ("relift",) else SMALL + [f"model.name={warm}", "log.samples_every=2"])
    final = fit(cfg, tmp_path / "r")
    lines = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and 0.0 <= final["eval/arith/acc_strict"] <= 1.0
    keys = set().union(*lines)
    expected = {"sft": {"loss/sft"}, "grpo": {"policy/kl", "reward/accuracy"},
                "sft_then_rl": {"loss/sft", "reward/accuracy"}, "alternate": {"loss/sft", "policy/entropy"},
                "joint": {"loss/sft", "sft/weight", "grad/norm_sft"}, "relift": {"sft/buffer_size", "sft/triggers"},
                "superrl": {"sft/routed_frac"}, "hpt": {"sft/routed_frac"},
                "luffy": {"policy/offpolicy_token_share"}, "srft": {"policy/offpolicy_token_share", "loss/sft"},
                "chord": {"sft/weight", "loss/sft", "grad/norm_rl"}}[method]
    assert expected <= keys
    samples = [json.loads(x) for x in (tmp_path / "r" / "samples.jsonl").read_text().splitlines()]
    if cfg.steps_of("rl"):
        rollouts = [x for x in samples if x["kind"] == "rollout"]
        assert rollouts and {"completion", "answer", "reward", "correct", "length"} <= set(rollouts[0])
