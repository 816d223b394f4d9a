"""Exact resume after SIGKILL, checkpoint hygiene, and the non-finite guard."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftrl.train import checkpoints
from sftrl.cli import main
from sftrl.config import build_config
from sftrl.train.fit import fit

ROOT = Path(__file__).resolve().parents[1]
RUN = ["model.tiny.hidden_size=32", "task.train_size=200", "task.test_size=8", "eval.k=2", "eval.every=3",
       "eval.max_new_tokens=16", "threads=1", "deterministic=true", "log.progress=plain",
       "rl.rollout.max_new_tokens=16", "rl.rollout.prompts_per_step=4", "rl.rollout.group_size=4",
       "sft.batch_size=8", "checkpoint.every=2", "checkpoint.keep=2", "log.samples_every=1",
       "rl.algo.preset=relift", "rl.hybrid.buffer_trigger=4",
       "rl.algo.entropy={mode: adaptive, kwargs: {target: 3.0}}",
       "phases=[{kind: sft, steps: 4}, {kind: alternate, steps: 8, rl_steps: 3, sft_steps: 1}]"]
STEPS = 12


def _train(out: Path, **kw):
    return subprocess.Popen([sys.executable, "-m", "sftrl.cli", "train", "configs/sft_arith.yaml", *RUN,
                             "--out", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _strip(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith(("time/", "perf/")) and k not in
            ("wall_time_s", "peak_rss_mb")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = _train(out)
    assert proc.wait(timeout=300) == 0, proc.stdout.read().decode()[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(tmp_path, reference, seed):
    kill_after = random.Random(seed).randint(3, STEPS - 2)        # a random step of the run
    out = tmp_path / "run"
    proc = _train(out)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= kill_after:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "DONE").exists(), "the run finished before it could be killed"
    resumed_from = checkpoints.latest(out)
    proc = _train(out)
    log = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, log[-2000:]
    assert (out / "DONE").exists()
    prov = json.loads((out / "provenance.json").read_text())
    if resumed_from is not None:
        assert prov["resumes"][-1]["step"] == int(resumed_from.name.split("-")[1])
    for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
        got, want = _lines(out / name), _lines(reference / name)
        assert [_strip(x) for x in got] == [_strip(x) for x in want], name      # no duplicated or lost line
    assert _strip(json.loads((out / "final.json").read_text())) == \
        _strip(json.loads((reference / "final.json").read_text()))
    a, b = load_file(out / "model" / "model.safetensors"), load_file(reference / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert len(checkpoints.complete(out)) <= 2


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    state = {"step": 3}
    checkpoints.save(tmp_path, 2, {"step": 2}, keep=5)
    checkpoints.save(tmp_path, 4, state, keep=5)
    (tmp_path / "checkpoints" / ".tmp-step-6").mkdir()                # a save killed midway
    (tmp_path / "checkpoints" / ".tmp-step-6" / "state.pt").write_bytes(b"torn")
    assert checkpoints.latest(tmp_path).name == "step-4"
    assert checkpoints.load(checkpoints.latest(tmp_path)) == state
    for step in (6, 8):
        checkpoints.save(tmp_path, step, {"step": step}, keep=2)
    assert sorted(p.name for p in checkpoints.complete(tmp_path)) == ["step-6", "step-8"]


def test_rerun_with_another_config_refuses_to_mix_runs(tmp_path, capsys):
    cfg = build_config({"phases": [{"kind": "sft", "steps": 4}]}, RUN[:9] + ["checkpoint.every=2"])
    checkpoints.save(tmp_path / "run", 2, {"step": 2}, keep=2)
    (tmp_path / "run" / "config.yaml").write_text("name: other\n")
    with pytest.raises(ValueError, match="different config"):
        fit(cfg, tmp_path / "run")


def _nan_model(tmp_path) -> Path:
    cfg = build_config({"phases": [{"kind": "sft", "steps": 1}]}, RUN[:9])
    fit(cfg, tmp_path / "base")
    path = tmp_path / "base" / "model"
    from safetensors.torch import save_file
    weights = load_file(path / "model.safetensors")
    key = next(k for k in weights if "mlp" in k)
    weights[key][0, 0] = float("nan")
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def test_nonfinite_gradient_stops_with_one_line_and_keeps_the_run_dir(tmp_path, capsys):
    model = _nan_model(tmp_path)
    out = tmp_path / "stop"
    code = main(["train", "configs/sft_arith.yaml", *RUN[:9], f"model.name={model}",
                 "phases=[{kind: sft, steps: 3}]", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and "\n" not in err and "non-finite loss or gradient at sft step 1" in err
    assert "guard.nonfinite=skip" in err and (out / "config.yaml").exists() and not (out / "DONE").exists()


def test_nonfinite_gradient_skip_counts_and_gives_up_after_max_skips(tmp_path, capsys):
    model = _nan_model(tmp_path)
    cfg = build_config({"phases": [{"kind": "sft", "steps": 3}]},
                       RUN[:9] + [f"model.name={model}", "guard.nonfinite=skip", "guard.max_skips=5", "eval.k=0"])
    final = fit(cfg, tmp_path / "skip")
    lines = _lines(tmp_path / "skip" / "metrics.jsonl")
    assert [x["guard/skipped_steps"] for x in lines] == [1.0, 2.0, 3.0] and final["guard/skipped_steps"] == 3
    assert all(x["grad/norm"] is None for x in lines)                 # NaN written as null
    cfg = build_config({"phases": [{"kind": "sft", "steps": 4}]},
                       RUN[:9] + [f"model.name={model}", "guard.nonfinite=skip", "guard.max_skips=2"])
    with pytest.raises(Exception, match="3 updates in a row had a non-finite loss or gradient"):
        fit(cfg, tmp_path / "giveup")
    assert len(_lines(tmp_path / "giveup" / "metrics.jsonl")) == 2
