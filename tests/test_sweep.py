"""Sweeps: the plan (ids, counts, errors), then real short runs: parallel, paired seeds, a failing
run, a sweep killed midway and resumed, SIGTERM, and the same sweep on a local Ray."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftrl.experiment import launch, progress
from sftrl.experiment.launch import Launch
from sftrl.experiment.spec import SweepError, load_sweep, plan, run_ids, short_keys, value_text
from sftrl.experiment.sweep import available_cores, manifest, prepare, resolve_workers, run_sweep

REPO = Path(__file__).resolve().parents[1]
BASE = str(REPO / "configs" / "grpo_arith.yaml")
TINY = ["phases.0.steps=4", "phases.1.steps=3", "model.tiny.hidden_size=32", "task.train_size=200",
        "task.test_size=16", "eval.k=2", "eval.max_new_tokens=16", "rl.rollout.prompts_per_step=4",
        "rl.rollout.group_size=4", "rl.rollout.max_new_tokens=16", "sft.batch_size=8"]
WORKERS = min(2, available_cores())


def sweep(**kw) -> dict:
    return {"name": "t", "base": BASE, "overrides": TINY, "methods": ["grpo", "dr_grpo"], "seeds": 2, **kw}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]   # raises on a torn line


# -- plan ----------------------------------------------------------------------------------------
def test_grid_is_a_product_and_ids_are_readable_deterministic_and_unique(tmp_path):
    sw = sweep(grid={"rl.algo.kl.coef": [0.0, 0.04], "rl.rollout.temperature": [0.7, 1.0]}, seeds=3)
    runs = plan(sw, tmp_path)
    assert len(runs) == 2 * (2 * 2) * 3                                   # methods x grid x seeds
    assert [r.run_id for r in runs][:5] == [
        "grpo__kl.coef=0.0__rollout.temperature=0.7__s0", "grpo__kl.coef=0.0__rollout.temperature=1.0__s0",
        "grpo__kl.coef=0.04__rollout.temperature=0.7__s0", "grpo__kl.coef=0.04__rollout.temperature=1.0__s0",
        "dr_grpo__kl.coef=0.0__rollout.temperature=0.7__s0"]
    assert len({r.run_id for r in runs}) == len(runs)
    assert [r.run_id for r in plan(sw, tmp_path)] == [r.run_id for r in runs]
    assert [r.seed for r in runs[:8]] == [0] * 8 and runs[8].seed == 1   # seed-major order
    r = runs[2]
    assert r.params == {"rl.algo.kl.coef": 0.04, "rl.rollout.temperature": 0.7}
    assert r.overrides == (*TINY, "rl.algo.preset=grpo", "rl.algo.kl.coef=0.04", "rl.rollout.temperature=0.7",
                           "seed=0", "threads=1", "log.progress=plain")
    assert r.path == tmp_path.resolve() / "runs" / r.run_id and r.record()["dir"] == f"runs/{r.run_id}"


def test_sensitivity_varies_one_key_at_a_time_and_shares_points_with_the_grid(tmp_path):
    sens = {"method": "grpo", "params": {"rl.algo.kl.coef": [0.0, 0.01, 0.04], "rl.rollout.temperature": [0.7, 1.0]}}
    assert len(plan(sweep(sensitivity=sens, seeds=1), tmp_path)) == 2 + 3 + 2        # 2 methods + 5 points
    runs = plan(sweep(sensitivity=sens, grid={"rl.algo.kl.coef": [0.0, 0.04]}, seeds=[3]), tmp_path)
    # grid: 2 methods x 2 values; sensitivity adds kl 0.01 and the two temperatures (0.0, 0.04 shared)
    assert [r.run_id for r in runs] == [
        "grpo__kl.coef=0.0__s3", "grpo__kl.coef=0.04__s3", "dr_grpo__kl.coef=0.0__s3",
        "dr_grpo__kl.coef=0.04__s3", "grpo__kl.coef=0.01__s3", "grpo__rollout.temperature=0.7__s3",
        "grpo__rollout.temperature=1.0__s3"]


def test_sensitivity_blocks_have_their_own_method_and_seeds(tmp_path):
    blocks = [{"method": "grpo", "seeds": 2, "params": {"rl.algo.kl.coef": [0.0, 0.1]}},
              {"method": "dr_grpo", "seeds": [1], "params": {"rl.rollout.temperature": [0.7]}}]
    runs = plan(sweep(sensitivity=blocks, seeds=3, overrides=[*TINY, "model.name=/m/{seed}"]), tmp_path)
    # 2 methods x 3 seeds, + grpo kl {0.0, 0.1} x seeds {0, 1}, + dr_grpo temperature 0.7 x seed 1
    assert [r.run_id for r in runs] == [
        "grpo__s0", "dr_grpo__s0", "grpo__kl.coef=0.0__s0", "grpo__kl.coef=0.1__s0",
        "grpo__s1", "dr_grpo__s1", "grpo__kl.coef=0.0__s1", "grpo__kl.coef=0.1__s1",
        "dr_grpo__rollout.temperature=0.7__s1", "grpo__s2", "dr_grpo__s2"]
    assert all(f"model.name=/m/{r.seed}" in r.overrides for r in runs)   # {seed} filled per run
    with pytest.raises(SweepError, match=r"unknown sensitivity\[1\] key 'seed'; did you mean 'seeds'"):
        plan(sweep(sensitivity=[blocks[0], {"method": "grpo", "seed": 1, "params": {"x.y": [1]}}]), tmp_path)


def test_seeds_count_expands_and_methods_take_three_forms(tmp_path):
    sw = load_sweep(sweep(seeds=3, methods={"a": "dapo", "b": ["rl.algo.preset=rloo", "rl.algo.kl.coef=0.0"],
                                            "c": None}))
    assert sw.seeds == (0, 1, 2)
    assert sw.methods == {"a": ("rl.algo.preset=dapo",), "b": ("rl.algo.preset=rloo", "rl.algo.kl.coef=0.0"),
                          "c": ()}
    assert [r.run_id for r in plan(sw, tmp_path)][:3] == ["a__s0", "b__s0", "c__s0"]


@pytest.mark.parametrize("change, message", [
    ({"seed": 3}, "unknown sweep key 'seed'; did you mean 'seeds' or 'baseline' or 'base'?"),
    ({"sensitivity": {"method": "grpo", "param": {}}}, "unknown sensitivity key 'param'; did you mean 'params'?"),
    ({"sensitivity": {"method": "grop", "params": {"rl.algo.kl.coef": [0]}}},
     "sensitivity.method 'grop' is not a method of this sweep; did you mean 'grpo' or 'dr_grpo'?"),
    ({"baseline": "ppo"}, "baseline 'ppo' is not a method of this sweep; did you mean 'grpo'?"),
    ({"seeds": []}, "seeds must be a count or a list of distinct integers, got []"),
    ({"grid": {"rl.algo.kl.coef": 0.04}}, "grid: rl.algo.kl.coef needs a non-empty list of values, e.g. [0.0, 0.04]"),
    ({"overrides": ["seed=3"]}, "overrides: 'seed=3' sets 'seed', which the sweep controls; list seeds under `seeds:`"),
    ({"methods": {"a": ["rl.algo.preset"]}}, "method 'a': 'rl.algo.preset' is not of the form key=value (e.g. sft.optim.lr=3e-4)"),
    ({"base": "nowhere.yaml"}, f"sweep base 'nowhere.yaml' not found in {os.getcwd()}; give a config "
                               "file path relative to the sweep file or the working directory"),
])
def test_bad_sweeps_fail_in_one_line_saying_what_to_fix(change, message):
    with pytest.raises(SweepError) as e:
        load_sweep(sweep(**change))
    assert str(e.value) == message


def test_base_is_found_next_to_the_sweep_file_and_floats_read_as_numbers(tmp_path):
    (tmp_path / "cfg.yaml").write_text("name: x\n")
    (tmp_path / "s.yaml").write_text("base: cfg.yaml\nmethods: [grpo]\ngrid: {sft.optim.lr: [1e-4, 3.0e-4]}\n")
    sw = load_sweep(tmp_path / "s.yaml", cwd=REPO)
    assert sw.base == str(tmp_path / "cfg.yaml") and sw.name == "s" and sw.seeds == (0,)
    assert sw.grid == {"sft.optim.lr": (1e-4, 3e-4)}
    assert [r.run_id for r in plan(sw, tmp_path)] == ["grpo__optim.lr=0.0001__s0", "grpo__optim.lr=0.0003__s0"]


def test_value_text_is_what_the_override_parser_reads_back():
    assert [value_text(v) for v in (0.04, 1e-5, 3, True, None, "off", [1, 2])] == \
        ["0.04", "1e-05", "3", "true", "null", "off", "[1, 2]"]


def test_short_keys_grow_only_where_two_keys_would_read_the_same():
    assert short_keys(["a.kl.coef", "b.kl.coef", "rl.algo.lr", "x.y.kl.coef"]) == {
        "a.kl.coef": "a.kl.coef", "b.kl.coef": "b.kl.coef", "rl.algo.lr": "algo.lr", "x.y.kl.coef": "y.kl.coef"}


def test_ids_get_a_hash_only_when_sanitising_makes_them_collide():
    items = [("m", {"task.name": "a/b"}, 0), ("m", {"task.name": "a:b"}, 0), ("m", {"task.name": "c"}, 0)]
    ids = run_ids(items, {"task.name": "task.name"})
    assert ids[2] == "m__task.name=c__s0"
    assert ids[0].startswith("m__task.name=a-b__s0-") and ids[1].startswith("m__task.name=a-b__s0-")
    assert ids[0] != ids[1] and len(ids[0]) == len("m__task.name=a-b__s0-") + 6
    assert run_ids(items, {"task.name": "task.name"}) == ids


def test_workers_auto_fits_the_cores_and_oversubscription_is_refused():
    sw = load_sweep(sweep(threads_per_run=2))
    assert resolve_workers(sw, None, "local", cores=5) == 2
    assert resolve_workers(load_sweep(sweep()), None, "local", cores=5) == 5
    assert resolve_workers(sw, None, "ray", cores=5) is None and resolve_workers(sw, 3, "ray") == 3
    with pytest.raises(SweepError, match=r"workers=3 x threads_per_run=2 needs 6 cores and 5 are available"):
        resolve_workers(sw, 3, "local", cores=5)


def test_eta_and_error_lines():
    # 3 waiting runs at the mean 15 s, plus 10 s left of a run 5 s in, over 2 workers
    assert progress.eta([10.0, 20.0], 3, [5.0], workers=2) == pytest.approx((3 * 15 + 10) / 2)
    assert progress.eta([], 3, [], workers=2) is None
    assert launch.error_line("Traceback ...\n  x\nsftrl train: error: bad row\n\n", 2) == "sftrl train: error: bad row"
    assert launch.error_line("step 3\n", -9) == "killed by SIGKILL (out of memory, or stopped from outside); last output: step 3"
    assert launch.error_line("", 0) == "train exited 0 but wrote no DONE file"


def test_resume_hook_keeps_a_checkpointed_run_only_when_train_can_resume_it(tmp_path):
    assert launch.resume_mode("usage: sftrl train [--out OUT] [--resume]") == "flag"
    assert launch.resume_mode("--out OUT  run directory (an unfinished one is Resumed from its "
                                 "newest checkpoint)") == "auto"
    assert launch.resume_mode("--out OUT  run directory (default runs/<name>/<time>-s<seed>)") is None
    run = plan(sweep(methods=["grpo"], seeds=1), tmp_path)[0]
    (run.path / "checkpoints" / "step-3").mkdir(parents=True)
    (run.path / "ERROR").write_text("killed\n")
    flag = Launch(base=BASE, cwd=str(REPO), threads=1, resume="flag")
    assert launch.train_command(run, flag)[-3:] == ["--out", str(run.path), "--resume"]
    prepare(run, tmp_path, flag)
    assert (run.path / "checkpoints" / "step-3").is_dir() and not (run.path / "ERROR").exists()
    plain = Launch(base=BASE, cwd=str(REPO), threads=1)
    assert launch.train_command(run, plain)[-2:] == ["--out", str(run.path)]
    prepare(run, tmp_path, plain)                                  # cannot resume: start over, keep the logs
    assert not run.path.exists() and (tmp_path / "attempts" / "grpo__s0.1" / "checkpoints" / "step-3").is_dir()
    run.path.mkdir(parents=True)
    prepare(run, tmp_path, flag)                                   # no checkpoint: nothing to resume from
    assert not run.path.exists() and (tmp_path / "attempts" / "grpo__s0.2").is_dir()


def test_progress_lines_plain_and_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True
    run = plan(sweep(seeds=1), "/tmp/x")[1]
    st = progress.Status(done=3, running=2, failed=1, skipped=4, remaining=5, elapsed_s=75.4, eta_s=3725.0)
    plain, tty = io.StringIO(), Tty()
    for stream in (plain, tty):
        show = progress.ProgressDisplay("exp", stream=stream)
        show("failed", run, st)
        show("tick", None, st)                       # plain: at most one tick line per 30 s
    line = "[exp] 3 done, 2 running, 1 failed, 5 remaining (4 skipped) | 1m15s elapsed, eta 1h02m"
    assert plain.getvalue() == f"{line} failed dr_grpo__s0\n"
    assert tty.getvalue() == f"\r\x1b[K[exp] failed dr_grpo__s0\n{line} failed dr_grpo__s0\r\x1b[K{line}"


def test_invalid_run_config_fails_before_any_training(tmp_path):
    sw = sweep(methods={"grpo": "grpo", "typo": ["rl.algo.kl.cof=0.1"]})
    with pytest.raises(SweepError) as e:
        run_sweep(sw, tmp_path / "exp")
    assert str(e.value) == ("sweep 't': run typo__s0: unknown config key 'rl.algo.kl.cof'; "
                            "did you mean 'rl.algo.kl.coef'?")
    assert not (tmp_path / "exp").exists()


def test_experiment_half_never_imports_torch():
    code = ("import sys; from sftrl.experiment import sweep, spec, launch, pools; import sftrl.cli; "
            f"spec.plan({{'base': {BASE!r}, 'methods': ['grpo'], 'seeds': 2}}, '/tmp/x'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers') "
            "or m in ('sftrl.config', 'sftrl.train')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path):
    (tmp_path / "s.yaml").write_text(f"base: {BASE}\nmethods: [grpo]\noverrides: {json.dumps(TINY)}\n")
    code = ("import sys; sys.modules['ray'] = None; from sftrl.cli import main; "
            f"sys.exit(main(['sweep', {str(tmp_path / 's.yaml')!r}, '--out', {str(tmp_path / 'e')!r}, "
            "'--executor', 'ray']))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("sftrl sweep: error: --executor ray needs Ray: "
                                                   "pip install 'sftrl[ray]' (or pip install \"ray[default]\")")


# -- real runs -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_parallel_sweep_pairs_seeds_across_methods(tmp_path):
    events = []
    result = run_sweep(sweep(metric="eval/arith/acc_strict", baseline="grpo"), tmp_path / "exp",
                       workers=WORKERS, progress=lambda ev, run, st: events.append((ev, st)))
    assert result.exit_code == 0 and [o.status for o in result.outcomes] == ["done"] * 4
    exp = tmp_path / "exp"
    man = json.loads((exp / "sweep.json").read_text())
    assert man == manifest(load_sweep(sweep(metric="eval/arith/acc_strict", baseline="grpo")),
                           plan(sweep(), exp))
    assert list(man) == ["name", "metric", "baseline", "methods", "grid", "sensitivity", "seeds", "base",
                         "overrides", "runs"]
    assert [r["run_id"] for r in man["runs"]] == ["grpo__s0", "dr_grpo__s0", "grpo__s1", "dr_grpo__s1"]
    first = {r["run_id"]: lines(exp / r["dir"] / "metrics.jsonl")[0] for r in man["runs"]}
    assert all((exp / r["dir"] / "DONE").exists() for r in man["runs"])
    assert first["grpo__s0"]["phase"] == "sft"
    assert first["grpo__s0"]["loss/sft"] == first["dr_grpo__s0"]["loss/sft"]     # same seed, same init + data
    assert first["grpo__s1"]["loss/sft"] == first["dr_grpo__s1"]["loss/sft"]
    assert first["grpo__s0"]["loss/sft"] != first["grpo__s1"]["loss/sft"]
    assert [e for e, _ in events].count("start") == 4 and [e for e, _ in events].count("done") == 4
    assert events[-1][0] == "end" and events[-1][1].done == 4 and events[-1][1].remaining == 0
    again = run_sweep(sweep(), exp)                                               # everything DONE
    assert [o.status for o in again.outcomes] == ["skipped"] * 4 and again.exit_code == 0
    with pytest.raises(SweepError, match="was made with other overrides"):
        run_sweep(sweep(overrides=[*TINY, "sft.optim.lr=1e-4"]), exp)


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path):
    rows = [json.dumps({"question": f"{i}+{i}?", "answer": f"{i}+{i}={2 * i}\n#### {2 * i}"}) for i in range(8)]
    rows[4] = '{"question": "broken", "answer": '                                     # line 5
    data = tmp_path / "x.jsonl"
    data.write_text("\n".join(rows) + "\n")
    bad = [f"task.name=jsonl:{data}", "task.kwargs={}", "task.train_size=null", "task.test_size=2"]
    result = run_sweep(sweep(methods={"grpo": "grpo", "broken": bad}, seeds=1, retries=1), tmp_path / "exp",
                       workers=WORKERS)
    assert result.exit_code == 1
    by_id = {o.run.run_id: o for o in result.outcomes}
    assert by_id["grpo__s0"].status == "done"
    argv = json.loads((tmp_path / "exp" / "runs" / "grpo__s0" / "provenance.json").read_text())["argv"]
    assert argv[0].endswith("cli.py") and argv[1] == "train" and argv[-2] == "--out"   # the run's own command
    error = f"sftrl train: error: {data}:5: not valid JSON: Expecting value at column 1 (write one JSON object per line)"
    assert by_id["broken__s0"].status == "failed" and by_id["broken__s0"].attempts == 2
    assert by_id["broken__s0"].error == error
    run = tmp_path / "exp" / "runs" / "broken__s0"
    assert (run / "ERROR").read_text().splitlines()[0] == error and not (run / "DONE").exists()
    assert (tmp_path / "exp" / "attempts" / "broken__s0.1" / "ERROR").exists()     # the first attempt
    assert f"broken__s0  failed" in result.table() and "1 done, 1 failed" in result.table()


def _cli_sweep(path: Path, exp: Path, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "sftrl.cli", "sweep", str(path), "--out", str(exp), *extra],
                            cwd=REPO, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(cond, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


@pytest.mark.slow
def test_killed_sweep_resumes_without_rerunning_finished_runs(tmp_path):
    longer = [*TINY[2:], "phases.0.steps=4", "phases.1.steps=60"]           # ~2 s of steps after start-up
    spec = tmp_path / "s.yaml"
    spec.write_text(json.dumps({"base": BASE, "overrides": longer, "methods": ["grpo"], "seeds": 3, "workers": 1}))
    exp = tmp_path / "exp"
    runs = [exp / "runs" / f"grpo__s{s}" for s in range(3)]
    proc = _cli_sweep(spec, exp)
    _wait_for(lambda: (runs[0] / "DONE").exists() and (runs[1] / "metrics.jsonl").exists()
              and not (runs[1] / "DONE").exists(), 60, "one run done and the next one training")
    os.killpg(proc.pid, signal.SIGKILL)                                     # the sweep; its runs follow
    proc.communicate()
    _wait_for(lambda: not _running(runs[1]), 1.0, "the run to die with its sweep")
    done_mtime = (runs[0] / "DONE").stat().st_mtime_ns
    first_metrics = (runs[0] / "metrics.jsonl").read_text()
    again = _cli_sweep(spec, exp)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert [line.split()[:2] for line in out.splitlines()[1:4]] == [
        ["grpo__s0", "skipped"], ["grpo__s1", "done"], ["grpo__s2", "done"]]
    assert (runs[0] / "DONE").stat().st_mtime_ns == done_mtime
    assert (runs[0] / "metrics.jsonl").read_text() == first_metrics
    partial = lines(exp / "attempts" / "grpo__s1.1" / "metrics.jsonl")
    assert 0 < len(partial) < 64 and not (exp / "attempts" / "grpo__s1.1" / "DONE").exists()
    for run in runs:
        steps = [x["step"] for x in lines(run / "metrics.jsonl")]
        assert steps == list(range(1, 65)), run.name                       # no repeated, no torn lines


@pytest.mark.slow
def test_killed_run_with_a_checkpoint_resumes_in_place(tmp_path):
    spec = tmp_path / "s.yaml"
    longer = [*TINY[2:], "phases.0.steps=4", "phases.1.steps=60", "checkpoint.every=20"]
    spec.write_text(json.dumps({"base": BASE, "overrides": longer, "methods": ["grpo"], "seeds": 1}))
    exp = tmp_path / "exp"
    run = exp / "runs" / "grpo__s0"
    proc = _cli_sweep(spec, exp)
    _wait_for(lambda: (run / "checkpoints" / "step-20").is_dir() or (run / "DONE").exists(), 60,
              "the first checkpoint")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (run / "DONE").exists(), "the run finished before it could be killed"
    again = _cli_sweep(spec, exp)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert not (exp / "attempts").exists()                              # kept, not moved aside
    resumes = json.loads((run / "provenance.json").read_text())["resumes"]
    assert len(resumes) == 1 and resumes[0]["step"] >= 20
    assert [x["step"] for x in lines(run / "metrics.jsonl")] == list(range(1, 65))


def test_sigterm_stops_the_runs_and_marks_nothing_finished(tmp_path):
    spec = tmp_path / "s.yaml"
    longer = [*TINY[2:], "phases.0.steps=4", "phases.1.steps=400"]
    spec.write_text(json.dumps({"base": BASE, "overrides": longer, "methods": ["grpo"], "seeds": 1}))
    exp = tmp_path / "exp"
    run = exp / "runs" / "grpo__s0"
    proc = _cli_sweep(spec, exp)
    _wait_for(lambda: (run / "metrics.jsonl").exists(), 60, "the run to train")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "grpo__s0  stopped" in out and "run the same command again" in err
    assert not (run / "DONE").exists() and not (run / "ERROR").exists()
    assert not _running(run)


def _running(run: Path) -> bool:
    """A process whose command line names this run directory is alive (Linux /proc)."""
    def cmdline(p: Path) -> bytes:
        try:
            return (p / "cmdline").read_bytes()
        except OSError:
            return b""
    return any(str(run).encode() in cmdline(p) for p in Path("/proc").iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_ray_executor_runs_the_same_sweep(tmp_path):
    pytest.importorskip("ray")
    result = run_sweep(sweep(methods=["grpo"]), tmp_path / "exp", executor="ray")      # starts a local Ray
    assert result.exit_code == 0 and [o.run.run_id for o in result.outcomes] == ["grpo__s0", "grpo__s1"]
    runs = [tmp_path / "exp" / "runs" / f"grpo__s{s}" for s in (0, 1)]
    assert all((r / "DONE").exists() and not (r / "ERROR").exists() for r in runs)
    first = [lines(r / "metrics.jsonl")[0]["loss/sft"] for r in runs]
    assert first[0] != first[1]                                      # each task ran its own seed
    assert json.loads((runs[1] / "provenance.json").read_text())["seed"] == 1
