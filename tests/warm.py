"""A tiny model SFT'd on 1-operation sums (groups then have mixed accuracy) and sessions on it,
shared by the hybrid and RL-path tests (the fixture is in conftest.py)."""

from sftrl.config import build_config
from sftrl.runlog import RunDir
from sftrl.train.fit import Session, fit

EASY = ["task.kwargs={min_ops: 1, max_ops: 1, max_operand: 9, operators: '+'}", "task.train_size=60",
        "task.test_size=4"]
SMALL = ["model.tiny.hidden_size=32", "eval.k=0", "eval.max_new_tokens=16", "log.every=1", "threads=1",
         "rl.rollout.max_new_tokens=16", "rl.rollout.prompts_per_step=4", "rl.rollout.group_size=4",
         "sft.batch_size=16", "log.progress=off"] + EASY


def train_warm(out) -> str:
    fit(build_config({"phases": [{"kind": "sft", "steps": 150}]}, SMALL + ["sft.optim.lr=3e-3"]), out)
    return str(out / "model")


def session(tmp_path, warm, overrides):
    cfg = build_config({"phases": [{"kind": "rl", "steps": 4}]}, SMALL + [f"model.name={warm}"] + overrides)
    return Session.build(cfg, RunDir(tmp_path))
