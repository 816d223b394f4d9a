"""Two CPU processes (gloo) compute exactly the single-process objective on the same global batch:
global normalisers, advantages over every rank's groups, summed gradients, one SFT update; and
`accelerate launch` runs `sftrl train` end to end with one writer."""

import inspect
import json
import os
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch.testing import assert_close

from sftrl.algos import policy as algos
from sftrl.parallel import dist
from sftrl.data.streams import demo_batch
from sftrl.config.schema import TinyModelConfig
from sftrl.lm.models import build_char_tokenizer, tiny_model
from sftrl.train.optim import Update
from sftrl.train.sft_step import sft_step

ROOT = Path(__file__).resolve().parents[1]
LENGTHS = [5, 3, 7, 2, 6, 4]


def _mask(lengths, width):
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).float()


def _sft_update(rank: int, world: int, init: str, out: str) -> None:
    if world > 1:
        tdist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    torch.manual_seed(0)
    tok = build_char_tokenizer()
    model = tiny_model(TinyModelConfig(hidden_size=32, num_layers=1), len(tok), seed=3,
                       pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    prompts = [f"{i}+{i + 1}=" for i in range(6)]
    targets = [f"{i}+{i + 1}={2 * i + 1} #### {2 * i + 1}" + "x" * n for i, n in enumerate(LENGTHS)]
    rows = dist.shard(list(range(6)))
    batch = demo_batch(tok, [prompts[i] for i in rows], [targets[i] for i in rows], max_len=64, device="cpu")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    m = sft_step(model, Update(opt, sched, 1.0, "a test step"), batch, micro_batch_size=2)
    # the collectives of the RL step, on hand-built tensors
    local_rows = torch.tensor(rows)
    full_mask = _mask(LENGTHS, 8)
    local_mask = full_mask[local_rows][:, :int(full_mask[local_rows].sum(1).max())]
    weights = {name: dist.global_weights(partial(fn, max_len=8) if "max_len" in inspect.signature(fn).parameters else fn,
                                         local_mask)
               for name, fn in algos.WEIGHTINGS.items()}
    r = torch.arange(12.0).view(6, 2) ** 1.5
    adv = dist.global_rows(lambda x: algos.ADVANTAGES["grpo"](x, std_scope="batch"), r[local_rows])
    # AdamW's moments after one step are (1 - b1) g and (1 - b2) g^2 of the clipped global
    # gradient g: smooth in g, unlike the first update lr * g / (|g| + eps), which turns the
    # rounding of any |g| near eps into a change of up to lr
    state = {"moments": [(opt.state[p]["exp_avg"].clone(), opt.state[p]["exp_avg_sq"].clone())
                         for p in model.parameters()], "loss": m["loss/sft"], "norm": m["grad/norm"],
             "tokens": float(batch.completion_mask.sum())}
    if rank == 0:
        torch.save({**state, "weights": weights, "adv": adv}, out)
    if world > 1:
        got = [None] * world
        tdist.all_gather_object(got, {"weights": weights, "adv": adv, "rows": rows})
        if rank == 0:
            torch.save({**state, "parts": got}, out)
        tdist.barrier()       # no rank tears gloo down while its peer is still in a collective
        tdist.destroy_process_group()


def test_two_processes_compute_the_single_process_update_and_normalisers(tmp_path):
    _sft_update(0, 1, "", str(tmp_path / "one.pt"))
    one = torch.load(tmp_path / "one.pt")
    mp.spawn(_sft_update, args=(2, f"file://{tmp_path / 'store'}", str(tmp_path / "two.pt")), nprocs=2)
    two = torch.load(tmp_path / "two.pt")
    assert two["loss"] == pytest.approx(one["loss"], rel=1e-6)             # global token-mean NLL
    assert two["norm"] == pytest.approx(one["norm"], rel=1e-5)
    # The same global gradient: both runs add the same per-token terms, in different orders (3
    # micro-batches; 2 ranks x 2 micro-batches and an all-reduce). A float32 sum of n terms errs
    # by at most n * u * sum|terms| (u = 2^-24); n is at most the batch's token count, and the
    # terms of an entry are bounded by the tensor's largest value, so the bound per tensor is
    # tokens * u * max|x| (measured: 8 u * max|x| on an AVX-512 machine, with 1 and with 2 threads).
    u = torch.finfo(torch.float32).eps / 2
    for a, b in zip(one["moments"], two["moments"]):
        for x, y in zip(a, b):                                             # (1 - b1) g, (1 - b2) g^2
            assert_close(y, x, rtol=0, atol=one["tokens"] * u * float(x.abs().max()))
    rows = [r for part in two["parts"] for r in part["rows"]]
    assert rows == list(range(6))
    for name, w in one["weights"].items():
        stacked = torch.cat([torch.nn.functional.pad(p["weights"][name], (0, 8 - p["weights"][name].shape[1]))
                             for p in two["parts"]])
        single = torch.nn.functional.pad(w, (0, 8 - w.shape[1]))
        assert_close(stacked, single), name                                # normalisers ignore world size
    assert_close(torch.cat([p["adv"] for p in two["parts"]]), one["adv"])   # batch-std advantage


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None, reason="accelerate's launcher is not on PATH")
def test_accelerate_launch_trains_with_one_writer(tmp_path):
    args = ["configs/grpo_arith.yaml", "model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=8",
            "eval.k=0", "eval.max_new_tokens=16", "threads=1", "log.progress=off",
            "phases=[{kind: sft, steps: 3}, {kind: rl, steps: 2}]", "sft.batch_size=8",
            "rl.rollout.prompts_per_step=4", "rl.rollout.group_size=4", "rl.rollout.max_new_tokens=16"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = ["accelerate", "launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sftrl.cli", "train", *args,
           "--out", str(tmp_path / "two")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5]                   # one writer, no duplicates
    single = subprocess.run([sys.executable, "-m", "sftrl.cli", "train", *args, "phases=[{kind: sft, steps: 3}]",
                             "--out", str(tmp_path / "one")], cwd=ROOT, env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr[-2000:]
    ones = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    # SFT steps see the same global batch: the same losses as one process
    assert [x["loss/sft"] for x in lines[:3]] == pytest.approx([x["loss/sft"] for x in ones], rel=1e-5)
    assert (tmp_path / "two" / "DONE").exists()
