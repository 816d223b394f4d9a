"""Sweeps: seeds x methods x hyperparameter grids as isolated `sftrl train` runs, resumable.

Owns: the experiment directory's layout and manifest, validating every run before any starts,
and `run_sweep`, which skips finished runs and hands the rest to a pool (`pools.py`). What a sweep
contains is `spec.py`. Never imports torch or the trainer: every run's config is validated by one
`sftrl config BASE --check -` subprocess before any run starts.

    EXP_DIR/sweep.yaml             copy of the sweep as given
    EXP_DIR/sweep.json             manifest (`manifest`), written atomically
    EXP_DIR/runs/<run_id>/         run directories written by `sftrl train --out`, plus
                                   stdout.log, stderr.log and, for a failed run, ERROR
    EXP_DIR/attempts/<run_id>.<n>/ earlier attempts: a run directory without DONE (killed or
                                   failed) is moved here before the run starts again from scratch,
                                   so runs/ only ever holds current attempts, and logs of crashes stay;
                                   one with a checkpoint stays in place and `sftrl train` resumes it
    EXP_DIR/.lock                  held by the sweep and the runs it started (one sweep at a time)
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sftrl import runlog
from sftrl.experiment import launch as launching
from sftrl.experiment import pools
from sftrl.experiment.launch import Launch
from sftrl.experiment.pools import Outcome
from sftrl.experiment.spec import RunSpec, Sweep, SweepError, experiment_dir, load_sweep, plan_runs
from sftrl.registry import did_you_mean
from sftrl.runlog import atomic_write_json, atomic_write_text


def manifest(sw: Sweep, runs: list[RunSpec]) -> dict:
    """sweep.json: what the report reads to group runs by method, params and seed."""
    return {"name": sw.name, "metric": sw.metric, "baseline": sw.baseline,
            "methods": {m: list(o) for m, o in sw.methods.items()},
            "grid": {k: list(v) for k, v in sw.grid.items()},
            "sensitivity": list(sw.sensitivity) if sw.sensitivity else None,
            "seeds": list(sw.seeds), "base": sw.base, "overrides": list(sw.overrides),
            "runs": [r.record() for r in runs]}


def check_compatible(exp: Path, sw: Sweep, runs: list[RunSpec]) -> None:
    """Refuse to reuse a run directory that an earlier sweep made with other settings (its DONE
    would otherwise be taken as a result of this sweep)."""
    path = exp / "sweep.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    before = {r["run_id"]: r["overrides"] for r in old.get("runs", [])}
    for r in runs:
        if r.path.exists() and before.get(r.run_id, list(r.overrides)) != list(r.overrides):
            diff = sorted(set(r.overrides) ^ set(before[r.run_id]))
            raise SweepError(f"{r.path} was made with other overrides (differ in {', '.join(diff)}); "
                             f"use another output directory (--out) or delete that run directory")
    if old.get("base") != sw.base and any((r.path / "DONE").exists() for r in runs):
        raise SweepError(f"{exp} holds runs made from another base config ({old.get('base')}); "
                         f"use another output directory (--out) or delete {exp}")


def validate(sw: Sweep, runs: list[RunSpec], cwd: Path) -> None:
    """Every run's config checked in one `sftrl config BASE --check -` subprocess (the trainer's
    config module is not imported here); the first problem becomes a one-line SweepError."""
    payload = json.dumps({r.run_id: list(r.overrides) for r in runs})
    proc = subprocess.run([sys.executable, "-m", "sftrl.cli", "config", sw.base, "--check", "-"],
                          input=payload, capture_output=True, text=True, cwd=cwd,
                          env=launching.child_env(1))
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.splitlines() if x.strip()]
        last = lines[-1].removeprefix("sftrl config: error: ") if lines else f"exit code {proc.returncode}"
        raise SweepError(f"sweep {sw.name!r}: {last}")


def train_resume_mode(cwd: Path) -> str | None:
    proc = subprocess.run([sys.executable, "-m", "sftrl.cli", "train", "--help"], capture_output=True,
                          text=True, cwd=cwd, env=launching.child_env(1))
    return launching.resume_mode(proc.stdout)


def prepare(run: RunSpec, exp: Path, launch: Launch) -> None:
    """Ready a run directory for an attempt: keep it when it has a checkpoint the trainer can
    resume from, else move it aside to attempts/<run_id>.<n> so the run starts from scratch."""
    if not run.path.exists():
        return
    if launch.resume and runlog.has_checkpoint(run.path):
        (run.path / "ERROR").unlink(missing_ok=True)
        return
    n = 1
    while (exp / "attempts" / f"{run.run_id}.{n}").exists():
        n += 1
    (exp / "attempts").mkdir(exist_ok=True)
    os.replace(run.path, exp / "attempts" / f"{run.run_id}.{n}")


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def resolve_workers(sw: Sweep, workers, executor: str, cores: int | None = None) -> int | None:
    """Runs at a time. Local: auto = cores // threads_per_run, and threads x workers may not
    exceed the cores (timings of oversubscribed runs mean nothing). Ray: auto = no cap."""
    w = sw.workers if workers is None else workers
    if w != "auto" and (not isinstance(w, int) or isinstance(w, bool) or w < 1):
        raise SweepError(f"workers must be 'auto' or an integer >= 1, got {w!r}")
    if executor == "ray":
        return None if w == "auto" else w
    cores = cores or available_cores()
    if w == "auto":
        return max(1, cores // sw.threads_per_run)
    if w * sw.threads_per_run > cores:
        raise SweepError(f"workers={w} x threads_per_run={sw.threads_per_run} needs "
                         f"{w * sw.threads_per_run} cores and {cores} are available; lower workers "
                         f"or threads_per_run (workers: auto picks {max(1, cores // sw.threads_per_run)})")
    return w


# -- running -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepResult:
    """Outcomes in plan order; `interrupted` is the signal that stopped the sweep, if any."""
    exp_dir: Path
    outcomes: list
    interrupted: int | None = None

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return 128 + self.interrupted
        return 1 if any(o.status == "failed" for o in self.outcomes) else 0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)

    def table(self) -> str:
        """One row per run (status, time, first error line), then the totals."""
        width = max([len(o.run.run_id) for o in self.outcomes] + [3])
        rows = [f"{'run':<{width}}  {'status':<8} {'time':>7}  error"]
        for o in self.outcomes:
            secs = f"{o.seconds:.1f}s" if o.seconds is not None else ""
            rows.append(f"{o.run.run_id:<{width}}  {o.status:<8} {secs:>7}  {o.error or ''}".rstrip())
        counts = ", ".join(f"{self.count(s)} {s}" for s in
                           ("done", "failed", "skipped", "stopped", "pending", "planned") if self.count(s))
        return "\n".join(rows + [f"{counts}; experiment directory: {self.exp_dir}"])


EXECUTORS = ("local", "ray")


def run_sweep(sweep, out_dir=None, *, executor: str = "local", address: str | None = None,
              workers=None, progress=None, dry_run: bool = False) -> SweepResult:
    """Validate every run, write sweep.yaml and sweep.json, skip runs with DONE and run the
    others (`workers` at a time). A failed run does not stop the others. SIGINT/SIGTERM stop
    the runs in flight and return with `interrupted` set. `progress(event, run, Status)` is
    called as runs start and end (progress.ProgressDisplay prints it)."""
    if executor not in EXECUTORS:
        raise SweepError(f"unknown executor {executor!r}; {did_you_mean(executor, EXECUTORS)}")
    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    exp, cwd = experiment_dir(sw, out_dir), Path.cwd()
    runs, n_workers = plan_runs(sw, exp), resolve_workers(sw, workers, executor)
    validate(sw, runs, cwd)
    if dry_run:
        return SweepResult(exp, [Outcome(r, "skipped" if (r.path / "DONE").exists() else "planned")
                                 for r in runs])
    with pools.hold_lock(exp) as lock_fd:
        check_compatible(exp, sw, runs)
        atomic_write_text(exp / "sweep.yaml", sw.text)
        atomic_write_json(exp / "sweep.json", manifest(sw, runs))
        todo = [r for r in runs if not (r.path / "DONE").exists()]
        resume = train_resume_mode(cwd) if any(runlog.has_checkpoint(r.path) for r in todo) else None
        launch = Launch(base=sw.base, cwd=str(cwd), threads=sw.threads_per_run, resume=resume,
                        fork=executor != "ray" and hasattr(os, "fork"))
        if executor == "ray":
            pool, close = pools.ray_pool(launch, n_workers, address)
        else:
            pool, close = pools.LocalPool(launch, n_workers, (lock_fd,)), (lambda: None)
        try:
            outcomes, signum = pools.drive(
                pool, todo, retries=sw.retries, prepare=functools.partial(prepare, exp=exp, launch=launch),
                progress=progress, skipped=len(runs) - len(todo), workers=n_workers or len(todo) or 1)
        finally:
            close()
    default = {r.run_id: Outcome(r, "pending") for r in todo}
    return SweepResult(exp, [outcomes.get(r.run_id) or default.get(r.run_id) or Outcome(r, "skipped")
                             for r in runs], signum)
