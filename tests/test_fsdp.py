"""FSDP2 (`dist.strategy=fsdp`) on two CPU processes (gloo) computes the single-process update on the
same global batch: SFT, an RL loss with a sharded KL reference, and LoRA, with ranks that run
different numbers of micro-batches; generation on gathered weights decodes a different number of
steps per rank; and `sftrl train` under torchrun and `accelerate launch --use_fsdp` trains, saves
and resumes."""

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch.testing import assert_close

from sftrl.algos import policy as algos
from sftrl.lm import logprobs, rollout
from sftrl.parallel import dist, sharding
from sftrl.train import forward
from sftrl.data.streams import demo_batch
from sftrl.config.schema import LoraConfig, TinyModelConfig
from sftrl.lm.models import add_lora, build_char_tokenizer, shard, tiny_model
from sftrl.train.optim import Update, clip_and_step
from sftrl.train.session import frozen_reference
from sftrl.train.sft_step import sft_step
from tests.tolerances import U, AbsGrads, summed_terms

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-4
"""AdamW eps of these tests. The first AdamW step moves a weight by lr * g / (|g| + eps): where |g| is
near the default eps (1e-8), summing the same terms in another order (two ranks) changes the
update by up to ~1e-5; at 1e-4 such components move the weights by at most ~lr * 1e-4."""
PROMPTS = [f"{i}+{i + 1}=" for i in range(5)]
TARGETS = [f"{i}+{i + 1}={2 * i + 1} #### {2 * i + 1}" + "x" * n for i, n in enumerate([5, 3, 7, 2, 6])]
REWARDS = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.5, 0.0], [0.0, 1.0]])   # [P, G]


def _policy(tok, lora: bool = False):
    model = tiny_model(TinyModelConfig(hidden_size=32, num_layers=2), len(tok), seed=3,
                       pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    if lora:
        model = add_lora(model, LoraConfig(enabled=True, r=4, alpha=8.0))
    return model


def _full(t: torch.Tensor) -> torch.Tensor:
    """A gradient as one plain CPU tensor (gathered from the ranks when it is a DTensor shard)."""
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().clone()


def _keep_grads(model, opt) -> dict:
    """The gradients the optimiser step uses (after clipping), gathered; filled at opt.step()."""
    grads = {}
    opt.register_step_pre_hook(lambda o, *a, **k: grads.update(
        {n: _full(p.grad) for n, p in model.named_parameters() if p.grad is not None}))
    return grads


def _row_scale(model, losses) -> dict:
    """sum over rows of |gradient of the row's loss|, per parameter: the scale of the row sum every
    gradient entry is (tests/tolerances.py); one process only, on its own copy of the model."""
    scale = AbsGrads(model)
    for loss in losses(model):
        loss.backward()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    return dict(zip(names, scale.now))


def _sft(tok, lora: bool, clip: float) -> dict:
    """One SFT step on this rank's block of 5 demonstrations (2 and 3 rows: 1 and 2 micro-batches)."""
    model = shard(_policy(tok, lora))
    rows = dist.shard(list(range(5)))
    batch = demo_batch(tok, [PROMPTS[i] for i in rows], [TARGETS[i] for i in rows], max_len=64, device="cpu")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, eps=EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    out = {}
    if dist.world()[1] == 1:
        def rows_nll(m):
            for i in range(len(rows)):                  # the global token mean's share of each row
                b = demo_batch(tok, [PROMPTS[i]], [TARGETS[i]], max_len=64, device="cpu")
                logp = logprobs.token_logp(m, b.input_ids, b.attention_mask, b.prompt_ids.shape[1])
                yield -(logp * b.completion_mask).sum() / batch.completion_mask.sum()
        out["scale"] = _row_scale(copy.deepcopy(model), rows_nll)
        out["tokens"] = float(batch.completion_mask.sum())
    grads = _keep_grads(model, opt)
    m = sft_step(model, Update(opt, sched, clip, "a test step"), batch, micro_batch_size=2)
    return {**out, "loss": m["loss/sft"], "norm": m["grad/norm"], "clip": clip, "grads": grads,
            "params": sharding.full_state_dict(model)}


def _rl(tok) -> dict:
    """One update of a PPO-clip + KL (k3, to a sharded frozen reference) - entropy loss on G=2
    completions per problem, with global seq-mean-token-mean weights and group z-score advantages."""
    model = shard(_policy(tok))
    ref = frozen_reference(model, lambda: _policy(tok))
    with torch.no_grad():                                   # the policy moves away from the reference
        for p in model.parameters():
            p.mul_(1.01)
    problems = dist.shard(list(range(5)))
    rows = [i for i in problems for _ in range(2)]                                   # G = 2
    batch = demo_batch(tok, [PROMPTS[i] for i in rows], [TARGETS[(i + j) % 5] for i in problems for j in range(2)],
                       max_len=64, device="cpu")
    ids, attn, Lp = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]
    mask = batch.completion_mask                                                     # [n, T]
    adv = dist.global_rows(algos.ADVANTAGES["grpo"], REWARDS[problems]).reshape(-1, 1)   # [n, 1]
    w = dist.global_weights(algos.WEIGHTINGS["seq_mean_token_mean"], mask)                      # [n, T]

    def terms(m, sel):                                                               # per-token loss [m, T]
        with torch.no_grad():
            ref_logp = logprobs.token_logp(ref, ids[sel], attn[sel], Lp)             # [m, T]
        logp, ent = logprobs.token_logp_and_entropy(m, ids[sel], attn[sel], Lp)     # [m, T]
        pg = algos.SURROGATES["ppo_clip"](logp, logp.detach() - 0.1, adv[sel], mask[sel])
        return pg, 0.1 * algos.KL["k3"](logp, ref_logp), -0.01 * ent
    out = {}
    if dist.world()[1] == 1:
        out["scale"] = _row_scale(copy.deepcopy(model), lambda m: (
            (sum(terms(m, torch.tensor([r]))) * w[r:r + 1]).sum() for r in range(len(rows))))
        out["tokens"] = float(mask.sum())
        with torch.no_grad():                         # sum over tokens of |weighted term|: the loss's scale
            out["abs_loss"] = float(sum((t.abs() * w).sum() for t in terms(model, torch.arange(len(rows)))))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, eps=EPS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    grads = _keep_grads(model, opt)
    total = 0.0
    for sel in sharding.matched(model, list(torch.arange(len(rows)).split(3))):   # 1 and 2 micro-batches
        if sel is None:
            with torch.no_grad():
                forward.idle_pass(ref)
            forward.idle_pass(model)
            continue
        loss = (sum(terms(model, sel)) * w[sel]).sum()
        loss.backward()
        total += loss.item()
    norm = clip_and_step(model, opt, sched, 0.2, what="a test step")
    return {**out, "loss": dist.sum_scalars({"loss": total}, ("loss",))["loss"], "norm": norm, "clip": 0.2,
            "grads": grads, "params": sharding.full_state_dict(model), "ref": sharding.full_state_dict(ref)}


def _sample(tok) -> dict:
    """Completions of this rank's prompts on gathered weights, both decode loops; the ranks decode
    6 and 12 steps, so any collective inside generation would hang."""
    model = shard(_policy(tok))
    rank = dist.world()[0]
    rows = dist.shard(list(range(4)))
    out = {}
    with sharding.full_weights(model):
        for engine in ("direct", "hf"):
            gen = torch.Generator().manual_seed(rank)
            ro = rollout.sample(model, tok, [PROMPTS[i] for i in rows], n=2, max_new_tokens=6 * (rank + 1),
                                gen=gen, engine=engine)
            out[engine] = ro.completion_ids
    return out


def _worker(rank: int, world: int, init: str, out: str) -> None:
    if world > 1:
        tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    results = {"sft": _sft(tok, lora=False, clip=1.0), "lora": _sft(tok, lora=True, clip=0.1), "rl": _rl(tok)}
    if world > 1:
        results["sample"] = dist.gather_objects([_sample(tok)])
    if rank == 0:
        torch.save(results, out)
    if world > 1:
        tdist.barrier()       # no rank tears gloo down while its peer is still in a collective
        tdist.destroy_process_group()


def _single_samples(tok) -> list[dict]:
    """What each rank of two samples, computed by one process."""
    model = _policy(tok)
    got = []
    for rank in range(2):
        rows = list(range(4))[2 * rank:2 * rank + 2]
        got.append({engine: rollout.sample(model, tok, [PROMPTS[i] for i in rows], n=2,
                                           max_new_tokens=6 * (rank + 1), gen=torch.Generator().manual_seed(rank),
                                           engine=engine).completion_ids for engine in ("direct", "hf")})
    return got


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fsdp")
    _worker(0, 1, "", str(tmp / "one.pt"))
    mp.spawn(_worker, args=(2, f"file://{tmp / 'store'}", str(tmp / "two.pt")), nprocs=2)
    return torch.load(tmp / "one.pt"), torch.load(tmp / "two.pt")


@pytest.mark.parametrize("kind", ["sft", "lora", "rl"])
def test_sharded_update_equals_the_single_process_update(runs, kind):
    one, two = runs[0][kind], runs[1][kind]
    # Tolerances from the computation (tests/tolerances.py): n summed terms (the global batch's
    # tokens plus the dot products along the path), the row-sum scale of one process; the loss is a
    # sum of weighted per-token terms, the norm moves by at most the norm of the gradients' difference
    n = summed_terms(_policy(build_char_tokenizer()), one["tokens"], 64)
    loss_scale = one.get("abs_loss", abs(one["loss"]))          # SFT's NLL terms are all positive
    assert two["loss"] == pytest.approx(one["loss"], rel=0, abs=n * U * loss_scale)   # the global loss
    unclipped = {k: n * U * float(v.abs().max()) for k, v in one["scale"].items()}
    norm_tol = sum(t ** 2 * one["scale"][k].numel() for k, t in unclipped.items()) ** 0.5
    assert two["norm"] == pytest.approx(one["norm"], rel=0, abs=norm_tol)   # clipping saw the global norm
    assert one["norm"] > one["clip"]                                      # (so clipping was active)
    assert list(two["params"]) == list(one["params"])                     # same names: checkpoints interchange
    # the same AdamW update: the same clipped gradients (weights after the step are not compared: the
    # first update lr * g / (|g| + eps) is steep in g where |g| is near eps)
    assert list(two["grads"]) == list(one["grads"]) and one["grads"]
    coef = one["clip"] / one["norm"]                  # clipped g_c = coef g: d g_c <= coef dg + |g_c| d|g| / |g|
    for name, g in one["grads"].items():
        atol = coef * unclipped[name] + float(g.abs().max()) * norm_tol / one["norm"]
        assert_close(two["grads"][name], g, rtol=0, atol=atol), name
    if kind == "lora":
        moved = [n for n, p in one["params"].items() if "lora_B" in n and p.abs().sum() > 0]
        assert moved                                                      # adapters trained (B starts at 0)
    if kind == "rl":
        assert_close(two["ref"], one["ref"], atol=0, rtol=0)              # the reference did not move


def test_generation_on_gathered_weights_matches_one_process(runs):
    tok = build_char_tokenizer()
    for got, want in zip(runs[1]["sample"], _single_samples(tok)):
        for engine in ("direct", "hf"):
            assert torch.equal(got[engine], want[engine]), engine


def test_one_process_leaves_the_model_unsharded():
    tok = build_char_tokenizer()
    model = shard(_policy(tok))
    assert not sharding.is_sharded(model)
    assert sharding.matched(model, [1, 2]) == [1, 2]


def test_accelerate_fsdp_flag_selects_the_fsdp_strategy():
    assert dist.launcher_overrides({"ACCELERATE_USE_FSDP": "true"}) == ["dist.strategy=fsdp"]
    assert dist.launcher_overrides({"ACCELERATE_USE_FSDP": "false"}) == []
    assert dist.launcher_overrides({}) == []


ARGS = ["configs/grpo_arith.yaml", "model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=8",
        "eval.k=0", "eval.max_new_tokens=16", "eval.every=2", "threads=1", "log.progress=off",
        "sft.batch_size=8", "sft.micro_batch_size=3", "rl.rollout.prompts_per_step=4", "rl.rollout.group_size=4",
        "rl.rollout.max_new_tokens=16", "rl.algo.kl.coef=0.05", "checkpoint.every=2",
        "phases=[{kind: sft, steps: 3}, {kind: rl, steps: 2}]"]


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _strip(record: dict) -> dict:
    """The numbers of a metrics record, without timings (pytest.approx compares numbers only)."""
    return {k: v for k, v in record.items()
            if not k.startswith(("time/", "perf/")) and isinstance(v, (int, float))}


@pytest.mark.slow
def test_torchrun_fsdp_trains_saves_and_resumes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sftrl.cli", "train",
           *ARGS, "dist.strategy=fsdp", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _lines(out / "metrics.jsonl")
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5]
    single = subprocess.run([sys.executable, "-m", "sftrl.cli", "train", *ARGS, "phases=[{kind: sft, steps: 3}]",
                             "--out", str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    ones = _lines(tmp_path / "one" / "metrics.jsonl")
    # the same global batches: the same SFT losses and gradient norms as one process
    assert [x["loss/sft"] for x in lines[:3]] == pytest.approx([x["loss/sft"] for x in ones], rel=1e-5)
    assert [x["grad/norm"] for x in lines[:3]] == pytest.approx([x["grad/norm"] for x in ones], rel=1e-5)
    # the saved policy loads in one process
    from transformers import AutoModelForCausalLM
    saved = AutoModelForCausalLM.from_pretrained(out / "model")
    state = torch.load(out / "checkpoints" / "step-4" / "state.pt", weights_only=False)
    assert state["ref"] is not None and "lm_head.weight" in state["model"]
    assert set(state["optimizers"]) == {"sft", "rl"}
    assert sum(p.numel() for p in saved.parameters()) > 0
    # resume: the finished run without its final files resumes from step 4 and recomputes step 5
    for name in ("DONE", "final.json"):
        (out / name).unlink()
    shutil.rmtree(out / "model")
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = _lines(out / "metrics.jsonl")
    assert [x["step"] for x in resumed] == [1, 2, 3, 4, 5]
    assert _strip(resumed[-1]) == pytest.approx(_strip(lines[-1]), rel=1e-6)
    assert (out / "DONE").exists() and (out / "model" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")
def test_accelerate_use_fsdp_runs_the_fsdp_strategy(tmp_path):
    # accelerate refuses --cpu together with --use_fsdp; without --cpu on a machine with no GPU
    # it starts CPU processes, and ACCELERATE_USE_FSDP=true selects dist.strategy=fsdp
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["accelerate", "launch", "--use_fsdp", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sftrl.cli", "train", *ARGS,
           "phases=[{kind: sft, steps: 2}]", "checkpoint.every=0", "--out", str(tmp_path / "acc")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "strategy: fsdp" in (tmp_path / "acc" / "config.yaml").read_text()
    assert [x["step"] for x in _lines(tmp_path / "acc" / "metrics.jsonl")] == [1, 2]


@pytest.mark.slow
def test_fsdp_and_replicate_write_the_same_rl_metrics(tmp_path):
    # 3 problems on 2 ranks (4 and 8 rows, 2 and 3 micro-batches), a reward every policy can move,
    # KL to the reference (later overrides win): the same rollouts and updates, so every logged number agrees
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*ARGS, "rl.rollout.prompts_per_step=3", "rl.micro_batch_size=3", "rl.rollout.temperature=3.0",
            'rl.reward.functions=[{name: "tests.rewards_for_tests:shorter"}]', "eval.every=0", "checkpoint.every=0",
            "phases=[{kind: sft, steps: 1}, {kind: rl, steps: 3}]"]
    runs = {}
    for strategy in ("replicate", "fsdp"):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sftrl.cli", "train",
               *args, f"dist.strategy={strategy}", "--out", str(tmp_path / strategy)]
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[strategy] = _lines(tmp_path / strategy / "metrics.jsonl")
    assert [x["phase"] for x in runs["fsdp"]] == [x["phase"] for x in runs["replicate"]]
    runs = {k: [_strip(x) for x in v] for k, v in runs.items()}
    # grad/norm_rl and grad/norm_sft are absent here (no SFT rows); with them, replicate logs
    # rank 0's own norms and fsdp the norms of the summed gradients
    assert max(x["reward/std"] for x in runs["fsdp"][1:]) > 0                # the RL steps had a signal
    for a, b in zip(runs["replicate"], runs["fsdp"]):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-7)
