"""Experiment trackers (`log.report_to`): config-time errors, and one short run whose metrics,
config and final numbers are read back through each tracker's own reader, with no network."""

import glob
import importlib.util
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sftrl.config import ConfigError, build_config
from sftrl.trackers import TRACKERS, check, missing

ROOT = Path(__file__).resolve().parents[1]
INSTALLED = [n for n in TRACKERS if not missing(n)]
CONFIG = """name: tracked
threads: 1
model: {tiny: {hidden_size: 32}}
task: {train_size: 200, test_size: 8}
phases: [{kind: sft, steps: 2}, {kind: rl, steps: 2}]
sft: {batch_size: 8}
rl: {rollout: {group_size: 2, prompts_per_step: 2, max_new_tokens: 8}}
eval: {every: 2, k: 2, max_new_tokens: 8}
log: {progress: plain}
"""


def needs(name):
    return pytest.mark.skipif(name not in INSTALLED, reason=f"{name} is not installed: pip install 'sftrl[{name}]'")


# -- config time ---------------------------------------------------------------------------------------
def test_unknown_tracker_fails_at_config_time_with_a_suggestion():
    with pytest.raises(KeyError) as e:
        build_config({}, ["log.report_to=[wandbb]"])
    assert str(e.value) == "log.report_to: unknown tracker 'wandbb'; did you mean 'wandb'?"


def test_missing_package_is_one_line_naming_the_extra(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError) as e:
        build_config({}, ["log.report_to=[tensorboard, wandb]"])
    assert str(e.value) == ("config key 'log.report_to': tracker 'wandb' needs wandb, which is not "
                            "installed: pip install 'sftrl[wandb]'")


def test_report_to_takes_one_name_or_a_list_and_defaults_to_none():
    assert build_config({}).log.report_to == []
    if INSTALLED:
        name = INSTALLED[0]
        assert build_config({"log": {"report_to": name}}).log.report_to == [name]
        assert build_config({"log": {"report_to": [name, name]}}).log.report_to == [name]
    check([])


# -- one run, read back --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    if not INSTALLED:
        pytest.skip("no tracker package is installed (pip install 'sftrl[trackers]')")
    tmp = tmp_path_factory.mktemp("tracked")
    (tmp / "c.yaml").write_text(CONFIG)
    env = {**os.environ, "TRACKIO_DIR": str(tmp / "trackio"), "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
           "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_DATA_DIR": str(tmp / "wandb-data"),
           "PYTHONPATH": str(ROOT)}
    for var in ("WANDB_MODE", "WANDB_DIR", "MLFLOW_TRACKING_URI"):       # the defaults: offline, under the run
        env.pop(var, None)
    run = tmp / "run"
    proc = subprocess.run([sys.executable, "-m", "sftrl.cli", "train", str(tmp / "c.yaml"),
                           f"log.report_to=[{', '.join(INSTALLED)}]", "--out", str(run)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected: dict[int, dict] = {}                     # step -> every finite number of metrics and eval lines
    for name in ("metrics.jsonl", "eval.jsonl"):
        for line in (run / name).read_text().splitlines():
            rec = json.loads(line)
            expected.setdefault(rec["step"], {}).update(
                {k: v for k, v in rec.items() if k != "step" and isinstance(v, (int, float)) and math.isfinite(v)})
    final = json.loads((run / "final.json").read_text())
    assert any("eval/arith/pass@2" in v for v in expected.values()) and "loss/sft" in expected[1]
    return run, tmp, expected, {f"final/{k}": v for k, v in final.items() if k != "step"}


def _by_step(rows) -> dict[int, dict]:
    out: dict[int, dict] = {}
    for step, key, value in rows:
        out.setdefault(int(step), {})[key] = value
    return out


def _assert_same(got: dict[int, dict], expected: dict[int, dict], rel: float = 0.0) -> None:
    assert sorted(got) == sorted(expected)
    for step, values in expected.items():
        assert sorted(got[step]) == sorted(values), step
        for key, v in values.items():
            assert got[step][key] == pytest.approx(v, rel=rel, abs=0), (step, key)


@needs("tensorboard")
def test_tensorboard_event_files(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    run, _, expected, final = tracked
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()["scalars"]
    rows = [(e.step, tag, e.value) for tag in tags if not tag.startswith("final/") for e in acc.Scalars(tag)]
    _assert_same(_by_step(rows), expected, rel=6e-8)   # simple_value is float32: half an ulp, 2**-24
    last = max(expected)
    assert {t: acc.Scalars(t)[-1].value for t in tags if t.startswith("final/")} == pytest.approx(final, rel=6e-8)
    assert all(acc.Scalars(t)[-1].step == last for t in tags if t.startswith("final/"))
    config = json.loads(acc.Tensors("config")[0].tensor_proto.string_val[0].decode().split("\n", 1)[1].rsplit("```", 1)[0])
    assert config["name"] == "tracked" and config["log"]["report_to"] == INSTALLED


def _wandb_records(path: Path) -> list:
    """The records of a W&B transaction log (.wandb): LevelDB-log framing (32 KiB blocks of
    [crc32c u32, length u16, type u8] chunks; 1 full, 2 first, 3 middle, 4 last) after a 7-byte
    ':W&B' header, each record a wandb_internal_pb2.Record."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, parts, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:                                  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts + chunk if kind == 4 else chunk)
            out.append(record)
            parts = b""
        elif kind in (2, 3):
            parts += chunk
        elif kind == 0 and length == 0:               # zero padding up to the block's end
            pos += left - 7
    return out


@needs("wandb")
def test_wandb_offline_run(tracked):
    run, _, expected, final = tracked
    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    records = _wandb_records(Path(files[0]))
    rows, summary, config = [], {}, {}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "history":
            items = [(i.key or "/".join(i.nested_key), i.value_json) for i in r.history.item]
            rows += [(r.history.step.num, k, json.loads(v)) for k, v in items if not k.startswith("_")]
        elif kind == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in r.summary.update if i.key.startswith("final/")})
        elif kind == "run":
            config = {i.key: json.loads(i.value_json) for i in r.run.config.update}
    _assert_same(_by_step(rows), expected)
    assert summary == pytest.approx(final)
    assert config["name"] == "tracked" and config["rl"]["algo"]["preset"] == "grpo"


@needs("trackio")
def test_trackio_local_store(tracked):
    run, tmp, expected, final = tracked
    code = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
            "print(json.dumps({'runs': S.get_runs('tracked'), 'logs': S.get_logs('tracked', 'run'),"
            " 'config': S.get_run_config('tracked', 'run')}, default=str))")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TRACKIO_DIR": str(tmp / "trackio")},
                          capture_output=True, text=True, timeout=300)     # TRACKIO_DIR is read at import
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["runs"] == ["run"]
    rows = [(log["step"], k, v) for log in got["logs"] for k, v in log.items()
            if "/" in k and not k.startswith("final/")]
    _assert_same(_by_step(rows), expected)
    finals = {k: v for log in got["logs"] for k, v in log.items() if k.startswith("final/")}
    assert finals == pytest.approx(final)
    assert got["config"]["name"] == "tracked" and got["config"]["rl"]["algo"]["preset"] == "grpo"


@needs("mlflow")
def test_mlflow_sqlite_store(tracked):
    from mlflow.tracking import MlflowClient
    run, _, expected, final = tracked
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    assert found.info.run_name == "run" and found.info.status == "FINISHED"
    keys = [k for k in found.data.metrics if not k.startswith("final/")]
    rows = [(m.step, k.replace("_at_", "@"), m.value) for k in keys for m in client.get_metric_history(found.info.run_id, k)]
    _assert_same(_by_step(rows), expected)
    assert {k.replace("_at_", "@"): v for k, v in found.data.metrics.items() if k.startswith("final/")} == \
        pytest.approx(final)
    assert found.data.params["rl.algo.preset"] == "grpo" and found.data.params["name"] == "tracked"
