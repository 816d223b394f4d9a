"""Run-directory writes: atomic files, whole JSONL lines, DONE last, unwritable directories."""

import json
import os
import stat
import tempfile
from pathlib import Path

import pytest

from sftrl.runlog import RunDir, append_jsonl, atomic_write_json, check_writable, dumps


def test_start_and_finish_write_the_layout(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start("seed: 3\n", seed=3, argv=["sftrl", "train"])
    assert (run.path / "config.yaml").read_text() == "seed: 3\n"
    prov = json.loads((run.path / "provenance.json").read_text())
    assert prov["seed"] == 3 and prov["argv"] == ["sftrl", "train"] and prov["end_time"] is None
    assert "torch" in prov["versions"] and prov["hardware"]["cpu_count"] == os.cpu_count()
    assert not run.done
    run.log("metrics.jsonl", {"step": 1, "loss/sft": 2.5})
    run.finish({"eval/arith/acc_strict": 0.25})
    assert run.done
    assert json.loads((run.path / "final.json").read_text()) == {"eval/arith/acc_strict": 0.25}
    assert json.loads((run.path / "provenance.json").read_text())["end_time"] is not None


def test_jsonl_lines_are_whole_and_nan_becomes_null(tmp_path):
    path = tmp_path / "m.jsonl"
    for i in range(50):
        append_jsonl(path, {"step": i, "x": float("nan") if i == 7 else i / 2})
    lines = path.read_text().splitlines()
    assert len(lines) == 50
    rows = [json.loads(x) for x in lines]
    assert rows[7]["x"] is None and rows[8]["x"] == 4.0
    assert dumps({"a": float("inf")}) == '{"a":null}'


def test_atomic_write_leaves_no_temp_files(tmp_path):
    atomic_write_json(tmp_path / "f.json", {"a": 1})
    atomic_write_json(tmp_path / "f.json", {"a": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    assert json.loads((tmp_path / "f.json").read_text()) == {"a": 2}


def test_unwritable_directory_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        check_writable(blocker / "run")
    assert "not writable" in str(info.value) and "--out" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_written_files_get_the_mode_open_would_give(tmp_path, mask, file_mode, dir_mode):
    """mkstemp/mkdtemp create 0600/0700 entries; renamed into place they would lock colleagues out
    of a shared results folder, so the writers apply the umask as open() and mkdir() do."""
    from sftrl.runlog import shareable
    old = os.umask(mask)
    try:
        run = RunDir(tmp_path / "r")
        run.start("seed: 0\n", seed=0, argv=[])
        run.log("metrics.jsonl", {"step": 1})
        run.finish({"x": 1.0})
        folder = shareable(Path(tempfile.mkdtemp(dir=tmp_path)))
    finally:
        os.umask(old)
    for name in ("config.yaml", "provenance.json", "metrics.jsonl", "final.json", "DONE"):
        assert stat.S_IMODE((run.path / name).stat().st_mode) == file_mode, name
    assert stat.S_IMODE(folder.stat().st_mode) == dir_mode
