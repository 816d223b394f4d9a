"""`rl_step` driven from its arguments alone (a tiny model, a tokenizer, an optimiser, a problem
stream; no session, run directory or patching), and `Algo`'s bound fields, one per choice the step
would otherwise make by comparing config strings."""

import contextlib
import math

import numpy as np
import pytest
import torch

from sftrl.algos import entropy
from sftrl.algos.algo import Algo, Controllers
from sftrl.algos.kl_control import FixedKL
from sftrl.config import build_config
from sftrl.config.schema import TinyModelConfig
from sftrl.data.streams import ProblemStream
from sftrl.data.tasks.arith import generate
from sftrl.lm import logprobs, rollout
from sftrl.lm.models import build_char_tokenizer, tiny_model
from sftrl.train.optim import Update, make_optimizer
from sftrl.train.rl_step import rl_step
from sftrl.train.session import Policy, Streams

P, G = 4, 4


def _parts(overrides, seed=0):
    """Everything rl_step takes, built by hand."""
    cfg = build_config({}, ["rl.rollout.max_new_tokens=12", f"rl.rollout.prompts_per_step={P}",
                            f"rl.rollout.group_size={G}", "rl.rollout.temperature=1.5", *overrides]).rl
    tok = build_char_tokenizer()
    model = tiny_model(TinyModelConfig(hidden_size=32, num_layers=1), len(tok), seed=seed,
                       pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    sample = rollout.make_sampler("auto", tok, max_new_tokens=12, temperature=1.5, top_p=1.0)
    render = lambda problem, template: f"{problem.prompt}\n"  # noqa: E731
    p = Policy(model=model, tokenizer=tok, ref=None, sample=sample, render=render, template="plain",
               max_len=64, precision=contextlib.nullcontext)
    problems = generate(split="train", n=64, seed=1, min_ops=1, max_ops=1, max_operand=9, operators="+")
    streams = Streams(ProblemStream(problems, np.random.default_rng(seed)),
                      ProblemStream(problems, np.random.default_rng(seed + 1)))
    opt, sched = make_optimizer(model.parameters(), cfg.optim, 10)
    return p, Update(opt, sched, cfg.optim.grad_clip, "a test step"), streams, cfg, opt


def test_one_step_from_its_arguments_alone():
    p, update, streams, cfg, opt = _parts(["rl.algo.preset=grpo_trl", "rl.algo.mini_batches=2",
                                          "rl.algo.entropy={mode: scheduled, kwargs: {start: 0.01, steps: 4}}"])
    algo = Algo.from_config(cfg)
    ctl = Controllers(entropy.make_controller(cfg.algo.entropy.mode, cfg.algo.entropy.kwargs), FixedKL(0.0))
    before = [w.detach().clone() for w in p.model.parameters()]
    metrics, ctl2, g = rl_step(p, update, streams, cfg, algo, ctl, 0, torch.Generator().manual_seed(0))
    assert g.ro.prompt_ids.shape[0] == P * G and len(g.problems) == P and g.sc.r.shape == (P, G)
    assert metrics["rl/groups"] == P and metrics["optim/lr"] == cfg.optim.lr
    assert math.isfinite(metrics["loss/total"]) and metrics["policy/entropy"] > 0
    assert all(opt.state[w]["step"] == 2 for w in p.model.parameters())          # one step per mini-batch
    assert any(not torch.equal(a, b) for a, b in zip(before, p.model.parameters()))
    assert ctl2.entropy == ctl.entropy.update(metrics["policy/entropy"], 0) and ctl2 != ctl   # the next controllers
    assert metrics["entropy/coef"] == ctl.entropy.coef == 0.01


def test_the_same_arguments_give_the_same_step():
    runs = []
    for _ in range(2):
        p, update, streams, cfg, _ = _parts(["rl.algo.preset=grpo_trl"])
        ctl = Controllers(entropy.make_controller("off", {}), FixedKL(0.0))
        m, _, g = rl_step(p, update, streams, cfg, Algo.from_config(cfg), ctl, 0, torch.Generator().manual_seed(3))
        runs.append((m["loss/total"], g.ro.texts, [w.detach().clone() for w in p.model.parameters()]))
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert all(torch.equal(a, b) for a, b in zip(runs[0][2], runs[1][2]))


def test_demonstrations_join_the_step_as_sft_rows():
    p, update, streams, cfg, _ = _parts(["rl.algo.preset=joint", "rl.algo.mini_batches=1"])
    ahead = ProblemStream(streams.train.problems, np.random.default_rng(0))      # the same draws
    demos = p.demos(ahead.next(P))
    with torch.no_grad():                                   # token-mean NLL of the demonstrations, before the update
        logp = logprobs.token_logp(p.model, demos.input_ids, demos.attention_mask, demos.prompt_ids.shape[1])
    nll = float(-(logp * demos.completion_mask).sum() / demos.completion_mask.sum())
    m, _, g = rl_step(p, update, streams, cfg, Algo.from_config(cfg), Controllers(entropy.make_controller("off", {}), FixedKL(0.0)), 0,
                      torch.Generator().manual_seed(0))
    assert m["sft/rows"] == P and m["sft/weight"] == 1.0 and g.routed == g.problems
    assert m["loss/sft"] == pytest.approx(nll, rel=1e-5)


# -- Algo: each choice the step reads, bound from the config ----------------------------------------
def _algo(*overrides):
    return Algo.from_config(build_config({}, [f"rl.rollout.prompts_per_step={P}", f"rl.rollout.group_size={G}",
                                             *overrides]).rl)


def test_kl_goes_to_the_loss_or_to_the_reward():
    grpo = _algo("rl.algo.preset=grpo")
    assert (grpo.kl_in_loss, grpo.kl_in_reward, grpo.needs_ref, grpo.needs_old_logp) == (True, False, True, False)
    rloo = _algo("rl.algo.preset=rloo")                     # KL in the reward needs the behaviour log-probs
    assert (rloo.kl_in_loss, rloo.kl_in_reward, rloo.needs_old_logp) == (False, True, True)
    off = _algo("rl.algo.preset=grpo_trl", "rl.algo.kl.log=false")
    assert (off.kl_in_loss, off.kl_in_reward, off.needs_ref) == (False, False, False)
    assert _algo("rl.algo.preset=grpo_trl").needs_ref      # KL logged at coef 0
    adaptive = _algo("rl.algo.preset=grpo", "rl.algo.kl.target=0.05")      # measured from behaviour vs reference
    assert adaptive.needs_old_logp and adaptive.kl_in_loss
    pp = _algo("rl.algo.preset=reinforce_pp")
    assert pp.token_advantage and pp.kl_in_reward and not _algo("rl.algo.preset=rloo").token_advantage


@pytest.mark.parametrize("overrides, needed", [
    (["rl.algo.preset=grpo_trl"], False),
    (["rl.algo.preset=grpo_trl", "rl.algo.mini_batches=2"], True),         # later mini-batches are off-policy
    (["rl.algo.preset=grpo_trl", "rl.algo.token_filter=top_entropy"], True),   # filters read them
    (["rl.algo.preset=dr_grpo"], True),                                        # 8 updates per rollout
    (["rl.algo.preset=grpo_trl", "rl.algo.epochs=2"], True),                   # the second pass is off-policy
])
def test_behaviour_log_probs_are_computed_only_when_read(overrides, needed):
    assert _algo(*overrides).needs_old_logp is needed


def test_passes_and_shuffling():
    dr = _algo("rl.algo.preset=dr_grpo")
    assert (dr.mini_batches, dr.epochs, dr.shuffle) == (8, 1, True)                 # oat permutes rows
    luffy = _algo("rl.algo.preset=luffy")
    assert (luffy.mini_batches, luffy.epochs, luffy.shuffle) == (2, 1, False)       # train 128 / mini 64


def test_clip_range_comes_from_the_surrogate():
    assert _algo("rl.algo.preset=dapo").clip_eps == (0.2, 0.28)
    assert _algo("rl.algo.surrogate=gspo", "rl.algo.surrogate_kwargs={eps_low: 0.0003, eps_high: 0.0004}").clip_eps \
        == (0.0003, 0.0004)
    assert _algo("rl.algo.preset=luffy").clip_eps is None                  # no_clip has no range


def test_sft_sources_schedules_and_mixes():
    expert = lambda k: [f"e{i}" for i in range(k)]  # noqa: E731
    joint = _algo("rl.algo.preset=joint", "rl.hybrid.weight_kwargs={value: 0.3}")
    assert joint.sft_source(["a"], expert) == ["a"] and not joint.buffered
    assert joint.sft_lambda(5) == pytest.approx(0.3) and joint.rl_scale(0.3) == 1.0 and not joint.lambda_scales_rl
    assert joint.sft_lambda(5) == float(torch.tensor(0.3))                 # the float32 value applied and logged
    relift = _algo("rl.algo.preset=relift")
    assert relift.buffered and relift.sft_source(["a"], expert) == [] and relift.sft_entropy_coef == 1e-3
    chord = _algo("rl.algo.preset=chord")                                   # expert stream of P*G/4 rows
    assert chord.sft_source(["a"], expert) == ["e0", "e1", "e2", "e3"] and chord.lambda_scales_rl
    assert chord.sft_lambda(0) == pytest.approx(0.9) and chord.rl_scale(0.9) == pytest.approx(0.1)
    srft = _algo("rl.algo.preset=srft")                                     # per-row weights, no schedule
    H = torch.tensor([[0.0], [math.log(2.0)]])
    assert srft.sft_schedule is None and srft.rl_scale(srft.sft_lambda(0)) == 1.0
    torch.testing.assert_close(srft.sft_row_weight(srft.sft_lambda(0), H), torch.tensor([[0.5], [0.25]]))
    torch.testing.assert_close(joint.sft_row_weight(0.3, H), torch.full((2, 1), 0.3))


def test_a_per_row_weight_cannot_be_mixed_convexly():
    with pytest.raises(ValueError, match="mix=convex .* has no lambda"):
        build_config({}, ["rl.algo.preset=srft", "rl.hybrid.mix=convex"])
    with pytest.raises(KeyError, match="did you mean 'chord_mu'"):
        build_config({}, ["rl.algo.preset=chord", "rl.hybrid.weight=chord_m"])


def test_compute_accounting_of_a_step():
    p, update, streams, cfg, _ = _parts(["rl.algo.preset=grpo_trl", "rl.algo.mini_batches=1"])
    N = sum(w.numel() for w in p.model.parameters())                           # tied embeddings once
    assert p.n_params == N
    m, _, g = rl_step(p, update, streams, cfg, Algo.from_config(cfg), Controllers(entropy.make_controller("off", {}),
                      FixedKL(0.0)), 0, torch.Generator().manual_seed(0))
    prompts = float(sum(len(p.prompt(q)) for q in g.problems))                 # one character per token
    generated = float(g.ro.completion_mask.sum())
    assert m["compute/prompt_tokens"] == prompts and m["compute/generated_tokens"] == generated
    assert m["compute/trained_tokens"] == generated                           # one pass, no SFT rows
    # decode 2N(prompts + generated); no behaviour pass (one step per rollout); the KL reference is
    # off here (no ref given); one training pass 6N over each distinct prompt once and every completion
    assert m["compute/flops"] == 2 * N * (prompts + generated) + 6 * N * (prompts + generated)


def test_gain_over_the_reference_worked_by_hand_and_zero_where_the_policies_agree():
    from sftrl.train.losses import gain_vs_ref
    # one group of 2 samples, rewards 1 and 0; summed log ratio reference/behaviour log 2 and 0 (the
    # second row's only valid token carries no ratio, its padded token is masked): weights 2 and 1, so
    # the reference's estimated reward is (2 * 1 + 1 * 0) / 2 = 1 and the gain 1/2 - 1 = -1/2
    r = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[-1.0, -2.0], [-0.5, -9.0]], dtype=torch.float64)      # double: exact to 1e-12
    ref_ = torch.tensor([[-1.0 + math.log(2), -2.0], [-0.5, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    assert math.isclose(gain_vs_ref(r, old, ref_, mask), 0.5 - 1.0, rel_tol=1e-12)
    # a zero reward contributes 0 even where the ratio overflows
    assert gain_vs_ref(torch.tensor([[0.0]]), torch.tensor([[-900.0]]), torch.tensor([[0.0]]), torch.ones(1, 1)) == 0.0
    # a real step: the reference is a copy of the policy, so before the first update the two passes
    # compute the same log-probs and the gain is the group mean minus itself (double-precision rounding
    # of a mean of G terms: at most G * 2^-53 of the largest reward, 1)
    ctl = Controllers(entropy.make_controller("constant", {"coef": 0.0}), FixedKL(0.04))
    for mini_batches in (2, 1):
        p, update, streams, cfg, _ = _parts(["rl.algo.preset=grpo", f"rl.algo.mini_batches={mini_batches}"])
        twin = tiny_model(TinyModelConfig(hidden_size=32, num_layers=1), len(p.tokenizer), seed=0,
                          pad_id=p.tokenizer.pad_token_id, eos_id=p.tokenizer.eos_token_id)
        p = Policy(model=p.model, tokenizer=p.tokenizer, ref=twin, sample=p.sample, render=p.render,
                   template=p.template, max_len=p.max_len, precision=p.precision)
        metrics, *_ = rl_step(p, update, streams, cfg, Algo.from_config(cfg), ctl, 0, torch.Generator().manual_seed(0))
        assert "policy/kl" in metrics                       # the reference pass ran in both
        if mini_batches == 2:                               # ratios exactly 1: every term exactly 0
            assert metrics["reward/gain_vs_ref"] == 0.0
        else:                                               # one optimiser step: no behaviour pass to read
            assert "reward/gain_vs_ref" not in metrics


def test_gain_over_the_reference_is_unbiased_by_exact_enumeration():
    """E over the behaviour policy pi of the estimate equals J(pi) - J(ref) exactly: enumerate every
    completion of two tokens from a 3-token vocabulary under two per-position distributions (ref
    differs from pi), reward 1 on three of the nine, and weight each one-sample estimate by pi's
    probability of that completion. A group-normalised ratio would give 0 for every one-sample group."""
    import itertools

    from sftrl.train.losses import gain_vs_ref
    pi = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]).double()            # [position, token]
    ref = torch.tensor([[0.2, 0.3, 0.5], [0.4, 0.4, 0.2]]).double()
    rewarded = {(0, 1), (1, 1), (2, 0)}
    expect, j_pi, j_ref = 0.0, 0.0, 0.0
    for y in itertools.product(range(3), repeat=2):
        p_pi, p_ref = float(pi[0, y[0]] * pi[1, y[1]]), float(ref[0, y[0]] * ref[1, y[1]])
        r = float(y in rewarded)
        old = torch.stack([pi[t, y[t]].log() for t in range(2)])[None]          # [1, 2]
        refl = torch.stack([ref[t, y[t]].log() for t in range(2)])[None]
        expect += p_pi * gain_vs_ref(torch.tensor([[r]]), old, refl, torch.ones(1, 2))
        j_pi, j_ref = j_pi + p_pi * r, j_ref + p_ref * r
    assert math.isclose(expect, j_pi - j_ref, rel_tol=1e-12)
