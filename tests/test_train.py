"""SFT masking, gradient-accumulation invariance, and short end-to-end runs on the tiny model."""

import json
import math

import pytest
import torch

from sftrl.data.streams import ProblemStream, demo_batch
from sftrl.cli import main
from sftrl.config import build_config
from sftrl.config.schema import TinyModelConfig
from sftrl.lm.models import build_char_tokenizer, tiny_model
from sftrl.train.optim import make_optimizer
from sftrl.data.tasks.arith import generate
from sftrl.train.fit import fit
from sftrl.train.optim import Update
from sftrl.train.sft_step import sft_step
from tests.tolerances import U, AbsGrads, assert_adamw_state_close, assert_grads_close, summed_terms

import numpy as np


def tiny(seed=0):
    tok = build_char_tokenizer()
    model = tiny_model(TinyModelConfig(hidden_size=32, num_layers=2), len(tok), seed=seed,
                       pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    return model, tok


def test_demo_batch_masks_prompt_and_pads():
    tok = build_char_tokenizer()
    b = demo_batch(tok, ["1+2=\n", "10*10=\n"], ["3 #### 3", "100"], max_len=64, device="cpu")
    assert b.prompt_ids.shape == (2, 7) and b.completion_mask.sum(1).tolist() == [9.0, 4.0]
    assert tok.decode(b.completion_ids[1, :4]) == "100<eos>"
    assert b.prompt_mask[0].tolist() == [0, 0] + [1] * 5           # left-padded prompt
    cut = demo_batch(tok, ["1+2=\n"], ["3 #### 3"], max_len=8, device="cpu")
    assert cut.completion_mask.sum() == 3 and bool(cut.truncated[0])


def test_sft_loss_is_nll_of_completion_tokens_only():
    model, tok = tiny()
    b = demo_batch(tok, ["1+2=\n", "10*10=\n"], ["3 #### 3", "100"], max_len=64, device="cpu")
    opt, sched = make_optimizer(model.parameters(), build_config({}).sft.optim, 10)
    # reference: per-example full forward without padding, NLL of target tokens only
    total, count = 0.0, 0
    for prompt, target in [("1+2=\n", "3 #### 3"), ("10*10=\n", "100")]:
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        t = tok(target, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p + t])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0, len(p) - 1:-1], -1)
        total -= logp.gather(-1, torch.tensor(t)[:, None]).sum().item()
        count += len(t)
    out = sft_step(model, Update(opt, sched, None, "a test step"), b, micro_batch_size=None)
    assert out["loss/sft"] == pytest.approx(total / count, rel=1e-5)
    assert out["sft/tokens"] == count


def test_gradient_accumulation_does_not_change_the_update():
    problems = generate(split="train", n=8, seed=0)
    runs = {}
    for micro in (None, 3, 1):
        model, tok = tiny(3)
        b = demo_batch(tok, [p.prompt + "\n" for p in problems], [p.solution for p in problems],
                       max_len=64, device="cpu")
        opt, sched = make_optimizer(model.parameters(), build_config({}).sft.optim, 10)
        grads, scale = [], AbsGrads(model)
        opt.register_step_pre_hook(lambda o, *a, **k: grads.append([p.grad.detach().clone() for p in model.parameters()]))
        opt.register_step_pre_hook(scale.cut)
        out = sft_step(model, Update(opt, sched, 1.0, "a test step"), b, micro_batch_size=micro)
        runs[micro] = (out, grads, opt, scale.steps, b)
    out0, g0, opt0, _, b = runs[None]
    # tolerances from the computation (tests/tolerances.py): n summed terms, the row-sum scale of
    # one row per backward; the NLL's terms are positive, so the loss agrees to n u loss
    n = summed_terms(tiny(3)[0], float(b.completion_mask.sum()), b.input_ids.shape[1])
    for micro in (3, 1):
        out, grads, opt, _, _ = runs[micro]
        tol = assert_grads_close(grads[0], g0[0], runs[1][3][0], n)
        assert_adamw_state_close(opt0, opt, g0, [tol])
        assert out["loss/sft"] == pytest.approx(out0["loss/sft"], rel=n * U)
        norm_tol = sum(t ** 2 * p.numel() for t, p in zip(tol, opt0.param_groups[0]["params"])) ** 0.5
        assert out["grad/norm"] == pytest.approx(out0["grad/norm"], rel=0, abs=norm_tol)


def test_problem_stream_epochs_and_state():
    items = list(range(5))
    s = ProblemStream(items, np.random.default_rng(0))
    first = s.next(7)
    assert sorted(first[:5]) == items and s.epoch == 1
    state = s.state()
    rest = s.next(6)
    t = ProblemStream(items, np.random.default_rng(99))
    t.load_state(json.loads(json.dumps(state)))
    assert t.next(6) == rest


SMALL = ["model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=20", "eval.k=2",
         "eval.max_new_tokens=24", "log.every=1", "sft.batch_size=8", "threads=1"]


def test_sft_run_writes_the_run_directory_and_eval_reproduces(tmp_path, capsys):
    cfg = build_config({"name": "t", "phases": [{"kind": "sft", "steps": 6}]},
                       SMALL + ["eval.every=3", "eval.extra_tasks=[{name: arith, kwargs: {min_ops: 4, max_ops: 4}, label: hard, test_size: 5}]"])
    final = fit(cfg, tmp_path / "run")
    run = tmp_path / "run"
    names = sorted(p.name for p in run.iterdir())
    assert names == ["DONE", "config.yaml", "eval.jsonl", "final.json", "metrics.jsonl", "model",
                     "provenance.json", "samples.jsonl"]
    assert build_config(__import__("yaml").safe_load((run / "config.yaml").read_text())) == cfg
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6] and all(math.isfinite(m["loss/sft"]) for m in metrics)
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 6] and "eval/hard/acc_strict" in evals[-1]
    assert json.loads((run / "final.json").read_text())["eval/arith/n"] == 20.0
    samples = [json.loads(x) for x in (run / "samples.jsonl").read_text().splitlines()]
    assert [x["step"] for x in samples] == [3] * 25 + [6] * 25               # every evaluation's answers
    assert {"greedy", "greedy_answer", "sampled_answers"} <= set(samples[0])
    capsys.readouterr()
    assert main(["eval", str(run), "eval.k=0"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["eval/arith/acc_strict"] == round(final["eval/arith/acc_strict"], 4)
    # pass@k on a subset: greedy over all 20 problems, k samples only for the first k_n
    assert main(["eval", str(run), "eval.k=2", "eval.k_n=5"]) == 0
    sub = json.loads(capsys.readouterr().out)
    assert sub["eval/arith/n"] == 20 and sub["eval/arith/k_n"] == 5
    assert sub["eval/arith/acc_strict"] == again["eval/arith/acc_strict"]
    assert round(sub["eval/arith/pass@2"] * 5, 6).is_integer()
    assert round(sub["eval/arith/pass@1_sampled"] * 10, 6).is_integer()
    assert main(["eval", str(run), "eval.k=2", "eval.k_n=50"]) == 0          # more than n: all of them
    assert json.loads(capsys.readouterr().out)["eval/arith/k_n"] == 20


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "configs/sft_arith.yaml", "sft.optim.lrr=1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "sftrl train: error: unknown config key 'sft.optim.lrr'; did you mean 'sft.optim.lr'?"
    assert not (tmp_path / "x").exists()
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_config_command_prints_resolved_yaml_and_explain(capsys):
    assert main(["config", "configs/sft_arith.yaml", "seed=4"]) == 0
    out = capsys.readouterr().out
    assert "seed: 4" in out and "hidden_size: 64" in out and "eps_low: 0.2" in out
    assert main(["config", "--explain"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("rl.algo.kl.coef") for line in lines)
