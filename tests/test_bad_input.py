"""Malformed inputs to `sftrl train`, one table: each exits with code 2 and ONE stderr line that
names the key (or file:line) and says how to fix it, before any training step, and loses nothing
already written.

Errors found while validating the config come before `--out` is even looked at, so those cases
are run with `--out` pointing at a finished run and check it is byte-for-byte untouched; errors
found while loading data or the tokenizer are run into a fresh directory and check that no
metrics, model or DONE were written.
"""

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sftrl.cli import main
from sftrl.config import build_config
from sftrl.config.schema import TinyModelConfig
from sftrl.lm.models import build_char_tokenizer, load_policy, save_policy, tiny_model

ROOT = Path(__file__).resolve().parent.parent
FAST_FAIL_S = 5.0
"""Every bad input must be reported within this many seconds (measured in-process, imports warm)."""

BASE = """\
name: bad_input_base
model: {name: tiny, tiny: {hidden_size: 16, num_layers: 1, num_heads: 2, max_positions: 64}}
task: {name: arith, kwargs: {max_ops: 2, max_operand: 9}, train_size: 40, test_size: 3}
phases: [{kind: sft, steps: 1}]
sft: {batch_size: 4}
eval: {k: 0, max_new_tokens: 6}
log: {progress: "off"}
"""
JSONL = ["task.kwargs={}", "task.train_size=null", "task.test_size=null"]


def _model_dir(path: Path, *, eos: bool) -> Path:
    """A saved tiny model whose tokenizer has no pad token, and an EOS token only if `eos`."""
    tok = build_char_tokenizer(64)
    model = tiny_model(TinyModelConfig(hidden_size=16, num_layers=1, num_heads=2, max_positions=64),
                       len(tok), seed=0, pad_id=0, eos_id=1)
    tok.pad_token = None
    model.config.pad_token_id = model.generation_config.pad_token_id = None
    if not eos:
        tok.eos_token = None
        model.config.eos_token_id = model.generation_config.eos_token_id = None
    save_policy(model, tok, path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad_input")
    (d / "base.yaml").write_text(BASE)
    (d / "syntax.yaml").write_text("name: x\nphases:\n  - {kind: sft, steps: 3\n  bad: [\n")
    (d / "scalar.yaml").write_text("- just\n- a list\n")
    (d / "badrow.jsonl").write_text('{"question": "1+1?", "answer": "#### 2"}\n{"question": "2+2?", "answer": \n')
    (d / "nomarker.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "it is 2"}) + "\n")
    (d / "empty.jsonl").write_text("\n  \n")
    (d / "a_file").write_text("not a folder\n")
    (d / "no_config_model").mkdir()
    _model_dir(d / "no_pad_no_eos", eos=False)
    finished = d / "finished"
    assert main(["train", "--out", str(finished), str(d / "base.yaml")]) == 0     # the base config trains
    assert (finished / "DONE").is_file() and (finished / "metrics.jsonl").is_file()
    return d


def snapshot(folder: Path) -> dict:
    """Every file under `folder` with its bytes and modification time."""
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _readonly_out(d: Path) -> Path:
    """A run directory inside a folder without write permission; where permissions do not stop
    writes (root), a path below a regular file, which nobody can create."""
    ro = d / "readonly"
    ro.mkdir(exist_ok=True)
    ro.chmod(0o500)
    try:
        (ro / ".probe").write_text("")
    except PermissionError:
        return ro / "run"
    (ro / ".probe").unlink()
    return d / "a_file" / "run"


def _cuda_absent() -> str:
    return f"device=cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "device=cuda"


# (id, config file, overrides, where --out goes, substrings the one line must hold)
# where --out goes: "finished" = the finished run (config-time errors); "fresh" = a new folder, which
# checks made before the run directory is created must not even create ("unmade")
CASES = [
    ("key_typo", "base.yaml", ["sft.optim.lrr=1"], "finished",
     ["'sft.optim.lrr'", "did you mean 'sft.optim.lr'?"]),
    ("string_for_int", "base.yaml", ["sft.batch_size=abc"], "finished",
     ["'sft.batch_size'", "should be a valid integer", "got 'abc'"]),
    ("group_size_1", "base.yaml", ["rl.rollout.group_size=1"], "finished",
     ["'rl.rollout.group_size'", "use >= 2"]),
    ("eps_low_negative", "base.yaml", ["rl.algo.surrogate_kwargs.eps_low=-0.1"], "finished",
     ["rl.algo.surrogate_kwargs.eps_low=-0.1", "needs 0 <= eps_low <= 1"]),
    ("eps_low_above_one", "base.yaml", ["rl.algo.surrogate_kwargs.eps_low=1.5"], "finished",
     ["rl.algo.surrogate_kwargs.eps_low=1.5", "needs 0 <= eps_low <= 1"]),
    ("eps_high_negative", "base.yaml", ["rl.algo.surrogate_kwargs.eps_high=-0.2"], "finished",
     ["rl.algo.surrogate_kwargs.eps_high=-0.2", "needs eps_high >= 0"]),
    ("negative_lr", "base.yaml", ["rl.optim.lr=-1e-4"], "finished",
     ["'rl.optim.lr'", "greater than 0", "got -0.0001"]),
    ("rollout_temperature_0", "base.yaml", ["rl.rollout.temperature=0"], "finished",
     ["'rl.rollout.temperature'", "greater than 0"]),
    ("top_p_above_1", "base.yaml", ["rl.rollout.top_p=1.5"], "finished",
     ["'rl.rollout.top_p'", "less than or equal to 1"]),
    ("unknown_preset", "base.yaml", ["rl.algo.preset=grpx"], "finished",
     ["preset 'grpx'", "did you mean 'grpo'"]),
    ("unknown_method", "base.yaml", ["method=grpoo"], "finished",
     ["method 'grpoo'", "did you mean 'grpo'"]),
    ("unknown_reward", "base.yaml", ["rl.reward.functions=[{name: corectness}]"], "finished",
     ["reward 'corectness'", "did you mean 'correctness'?"]),
    ("reward_kwarg_typo", "base.yaml", ["rl.reward.functions=[{name: correctness, kwargs: {corect: 2}}]"],
     "finished", ["'rl.reward.functions.0'", "'corect'", "did you mean 'correct'?"]),
    ("unknown_advantage", "base.yaml", ["rl.algo.advantage=zscore"], "finished",
     ["advantage 'zscore'", "known: drgrpo, grpo"]),
    ("unknown_surrogate", "base.yaml", ["rl.algo.surrogate=ppo"], "finished",
     ["surrogate 'ppo'", "did you mean", "'ppo_clip'"]),
    ("unknown_weighting", "base.yaml", ["rl.algo.weighting=seqmean"], "finished",
     ["weighting 'seqmean'", "did you mean"]),
    ("unknown_kl_estimator", "base.yaml", ["rl.algo.kl.estimator=k9"], "finished",
     ["kl estimator 'k9'", "did you mean 'k3'"]),
    ("offpolicy_group_too_small", "base.yaml", ["rl.algo.preset=luffy", "rl.rollout.group_size=2"],
     "finished", ["hybrid.offpolicy=1", "needs rollout.group_size >= 3"]),
    ("unknown_task", "base.yaml", ["task.name=arithm"], "finished",
     ["task 'arithm'", "did you mean 'arith'?"]),
    ("task_kwargs_typo", "base.yaml", ["task.kwargs.max_opz=3"], "finished",
     ["'task.kwargs'", "'max_opz' is not a knob of task 'arith'", "did you mean 'max_ops'"]),
    ("task_kwargs_bad_value", "base.yaml", ["task.kwargs.max_ops=x"], "finished",
     ["'task.kwargs'", "max_ops='x' must be an integer"]),
    ("task_kwargs_reserved", "base.yaml", ["task.kwargs.seed=3"], "finished",
     ["'task.kwargs'", "'seed' is set from task.seed", "remove it"]),
    ("extra_task_kwargs_typo", "base.yaml", ["eval.extra_tasks=[{name: arith, kwargs: {maxops: 4}}]"],
     "finished", ["'eval.extra_tasks.0.kwargs'", "did you mean 'max_ops'"]),
    ("unknown_template", "base.yaml", ["task.template=plian"], "finished",
     ["prompt template 'plian'", "did you mean 'plain'?"]),
    ("missing_config_file", "nope.yaml", [], "finished",
     ["nope.yaml' not found", "ready ones are in configs/"]),
    ("yaml_syntax_error", "syntax.yaml", [], "finished", ["syntax.yaml:4: not valid YAML"]),
    ("yaml_not_a_mapping", "scalar.yaml", [], "finished",
     ["scalar.yaml: the top level must be a mapping", "got list"]),
    ("missing_jsonl", "base.yaml", ["task.name=jsonl:{d}/missing.jsonl", *JSONL], "finished",
     ["'task.name'", "missing.jsonl' not found", "check the path after 'jsonl:'"]),
    ("jsonl_malformed_row", "base.yaml", ["task.name=jsonl:{d}/badrow.jsonl", *JSONL], "fresh",
     ["badrow.jsonl:2: not valid JSON", "write one JSON object per line"]),
    ("jsonl_row_without_marker", "base.yaml", ["task.name=jsonl:{d}/nomarker.jsonl", *JSONL], "fresh",
     ["nomarker.jsonl:1: GSM8K answer has no '#### N'", "end the answer with '#### <number>'"]),
    ("jsonl_empty", "base.yaml", ["task.name=jsonl:{d}/empty.jsonl", *JSONL], "fresh",
     ["empty.jsonl' has no rows", "one JSON object per line"]),
    ("phases_empty", "base.yaml", ["phases=[]"], "finished",
     ["'phases'", "add at least one phase"]),
    ("unknown_phase_kind", "base.yaml", ["phases=[{kind: dpo, steps: 3}]"], "finished",
     ["'phases.0.kind'", "'sft', 'rl' or 'alternate'", "got 'dpo'"]),
    ("steps_negative", "base.yaml", ["phases.0.steps=-3"], "finished",
     ["'phases.0.steps'", "greater than or equal to 0"]),
    ("override_index_out_of_range", "base.yaml", ["phases.5.steps=3"], "finished",
     ["'phases.5.steps=3'", "index '5' is out of range"]),
    ("override_without_equals", "base.yaml", ["sftlr"], "finished",
     ["override 'sftlr'", "key=value (e.g. sft.optim.lr=3e-4)"]),
    ("eval_k_over_batch", "base.yaml", ["eval.k=1000", "eval.batch_size=64"], "finished",
     ["'eval'", "k=1000 is more than batch_size=64", "lower eval.k or raise eval.batch_size"]),
    ("device_unknown", "base.yaml", ["device=tpu"], "finished",
     ["'device'", "use cpu, cuda, cuda:N or auto"]),
    ("device_cuda_absent", "base.yaml", [_cuda_absent()], "unmade",
     ["device 'cuda", "use "]),
    ("model_path_missing", "base.yaml", ["model.name={d}/no_such_model"], "unmade",
     ["no_such_model' is neither", "fix model.name"]),
    ("model_dir_without_config", "base.yaml", ["model.name={d}/no_config_model"], "unmade",
     ["no_config_model' has no config.json", "saved with save_pretrained"]),
    ("tokenizer_without_pad_or_eos", "base.yaml", ["model.name={d}/no_pad_no_eos"], "fresh",
     ["no_pad_no_eos' has no EOS token", "tokenizer.eos_token = ..."]),
    ("vllm_engine_unavailable", "base.yaml", ["phases=[{kind: rl, steps: 1}]", "rl.rollout.engine=vllm"], "fresh",
     ["rl.rollout.engine=vllm needs", "use engine=auto"]),
    ("fsdp_with_vllm_engine", "base.yaml", ["dist.strategy=fsdp", "rl.rollout.engine=vllm"], "finished",
     ["'dist'", "strategy=fsdp cannot use rl.rollout.engine=vllm", "use rl.rollout.engine=auto"]),
    ("unknown_dist_strategy", "base.yaml", ["dist.strategy=ddp"], "finished",
     ["'dist.strategy'", "'replicate' or 'fsdp'", "got 'ddp'"]),
    ("out_is_a_finished_run", "base.yaml", [], "finished",
     ["already holds a finished run (DONE)", "choose another --out"]),
    ("out_not_writable", "base.yaml", [], "readonly", ["is not writable", "choose another with --out"]),
    ("out_below_a_file", "base.yaml", [], "below_file",
     ["a_file/run' is not writable (Not a directory)", "choose another with --out"]),
]


if torch.cuda.is_available() and importlib.util.find_spec("vllm"):      # there it is not bad input
    CASES = [c for c in CASES if c[0] != "vllm_engine_unavailable"]


@pytest.mark.parametrize("config, overrides, where, expected", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_fails_in_one_line_before_training(files, tmp_path, capsys, config, overrides, where,
                                                     expected):
    d = files
    out = {"finished": d / "finished", "fresh": tmp_path / "run", "unmade": tmp_path / "run",
           "readonly": _readonly_out(d) if where == "readonly" else None,
           "below_file": d / "a_file" / "run"}[where]
    before = snapshot(d / "finished")
    capsys.readouterr()
    t0 = time.perf_counter()
    code = main(["train", "--out", str(out), str(d / config), *[o.replace("{d}", str(d)) for o in overrides]])
    took = time.perf_counter() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith("sftrl train: error: ")
    for part in expected:
        assert part in err[0], err[0]
    assert took < FAST_FAIL_S
    assert snapshot(d / "finished") == before                     # nothing already written is lost
    if where == "unmade":
        assert not out.exists()
    if where == "fresh":
        assert not any((out / name).exists() for name in ("metrics.jsonl", "model", "DONE", "final.json"))


def test_table_covers_enough_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


def test_eos_without_pad_pads_with_eos(tmp_path):
    path = _model_dir(tmp_path / "eos_only", eos=True)
    model, tok = load_policy(build_config({}, [f"model.name={path}"]).model, seed=0, device=torch.device("cpu"))
    assert tok.eos_token == "<eos>" and tok.pad_token == "<eos>" and tok.pad_token_id == tok.eos_token_id == 1


def test_asymmetric_clip_either_way_is_accepted():
    # eps_high < eps_low is an unusual but valid clip range [0.7, 1.1] around 1; only widths that
    # leave 1 - eps_low < 0 or a negative eps_high are errors (eps_low = 1 is Clip-Cov's recipe)
    cfg = build_config({}, ["rl.algo.surrogate_kwargs={eps_low: 0.3, eps_high: 0.1}"])
    assert cfg.rl.algo.surrogate_kwargs == {"eps_low": 0.3, "eps_high": 0.1}
    cfg = build_config({}, ["rl.algo.preset=dapo"])
    assert cfg.rl.algo.surrogate_kwargs["eps_high"] == 0.28


@pytest.mark.parametrize("args, expected", [
    (["train", "configs/nope.yaml"], "sftrl train: error: config file 'configs/nope.yaml' not found"),
    (["train", "configs/sft_arith.yaml", "sftlr"], "sftrl train: error: override 'sftlr' is not of the form key=value"),
    (["train", "configs/sft_arith.yaml", "task.kwargs.max_opz=3"],
     "sftrl train: error: config key 'task.kwargs': 'max_opz' is not a knob of task 'arith'"),
], ids=["missing_file", "no_equals", "task_kwargs_typo"])
def test_real_process_prints_one_line_and_exits_2(tmp_path, args, expected):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SFTRL_DEBUG", None)
    proc = subprocess.run([sys.executable, "-m", "sftrl.cli", *args, "--out", str(tmp_path / "run")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(expected), proc.stderr
    assert proc.stdout == "" and not (tmp_path / "run").exists()
