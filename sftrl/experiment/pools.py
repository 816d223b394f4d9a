"""Pools that run the runs of a sweep, and the scheduling loop over them.

Owns: the local pool (child processes of this one) and the Ray pool (tasks that each start the
same subprocess), the loop with retries and signal handling (`drive`), the experiment-directory
lock, and `Outcome`. Does not own what a sweep contains or which runs still need running
(`sweep.py` decides) nor how one run is started (`launch.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from sftrl.experiment.launch import Launch, child_env, execute, finish, preload, start, stop
from sftrl.experiment.progress import Status, eta


class LocalPool:
    """Up to `workers` runs as child processes of this one."""

    def __init__(self, launch: Launch, workers: int, keep_fds: tuple[int, ...] = ()):
        self.launch, self.workers, self.keep_fds = launch, workers, keep_fds
        self.running: dict = {}           # run_id -> (run, Popen or Forked, start time)
        if launch.fork:
            preload()

    def has_room(self) -> bool:
        return len(self.running) < self.workers

    def submit(self, run) -> None:
        self.running[run.run_id] = (run, start(run, self.launch, self.keep_fds), time.monotonic())

    def poll(self, timeout_s: float) -> list[tuple]:
        """(run, error or None, seconds) of each run that ended; waits up to `timeout_s` for one."""
        deadline = time.monotonic() + timeout_s
        while True:
            ended = [(rid, p.returncode) for rid, (_, p, _) in self.running.items() if p.poll() is not None]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(min(0.1, timeout_s))
        out = []
        for rid, rc in ended:
            run, _, t0 = self.running.pop(rid)
            out.append((run, finish(run, self.launch, rc), time.monotonic() - t0))
        return out

    def started(self) -> dict:
        return {rid: t0 for rid, (_, _, t0) in self.running.items()}

    def stop_all(self) -> None:
        stop([p for _, p, _ in self.running.values()])
        self.running.clear()


class RayPool:
    """Runs as Ray tasks (`num_cpus` = threads per run); each task launches the same subprocess,
    so run directories must be on storage every node sees (the experiment directory's path)."""

    def __init__(self, launch: Launch, workers: int | None, ray, remote):
        self.launch, self.workers, self.ray, self.remote = launch, workers, ray, remote
        self.running: dict = {}           # ObjectRef -> (run, start time)

    def has_room(self) -> bool:
        return self.workers is None or len(self.running) < self.workers

    def submit(self, run) -> None:
        self.running[self.remote.remote(run, self.launch)] = (run, time.monotonic())

    def poll(self, timeout_s: float) -> list[tuple]:
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout_s)
        out = []
        for ref in ready:
            run, t0 = self.running.pop(ref)
            try:
                error, _ = self.ray.get(ref)
            except Exception as e:  # noqa: BLE001 - the task itself died (node lost, worker killed)
                error = f"Ray task failed: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}"
            out.append((run, error, time.monotonic() - t0))
        return out

    def started(self) -> dict:
        return {run.run_id: t0 for run, t0 in self.running.values()}

    def stop_all(self) -> None:
        for ref in self.running:
            self.ray.cancel(ref)          # not force: the task stops its run's process group first
        try:
            self.ray.wait(list(self.running), num_returns=len(self.running), timeout=15)
        except Exception:  # noqa: BLE001 - cancelled tasks may raise while we wait for them
            pass
        self.running.clear()


def ray_pool(launch: Launch, workers: int | None, address: str | None):
    """Connect to Ray (a cluster at `address`, or a local instance) and return (pool, shutdown)."""
    try:
        import ray
    except ImportError:
        raise ValueError("--executor ray needs Ray: pip install 'sftrl[ray]' "
                         "(or pip install \"ray[default]\")") from None
    started_here = not ray.is_initialized()
    if started_here:
        env = {"env_vars": {"PYTHONPATH": child_env(launch.threads)["PYTHONPATH"]}}
        ray.init(address=address, runtime_env=env, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)
    remote = ray.remote(num_cpus=launch.threads, max_retries=0)(execute)
    return RayPool(launch, workers, ray, remote), (ray.shutdown if started_here else (lambda: None))


@contextlib.contextmanager
def hold_lock(exp_dir: Path, wait_s: float = 30.0):
    """flock EXP_DIR/.lock for the sweep; yields the descriptor, which local runs inherit, so the
    lock stays held until the sweep *and* every run it started are gone (a sweep killed with
    SIGKILL cannot leave a run writing into a directory the next sweep clears)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(exp_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ValueError(f"{exp_dir} is in use by another sweep or by runs it started "
                                 f"(lock {exp_dir / '.lock'}); wait for them or stop them first") from None
            time.sleep(0.2)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def caught_signals():
    """Record SIGINT/SIGTERM in the yielded list instead of dying (main thread only), so the
    loop can stop its runs' process groups first. The handler only records: raising from it
    could land inside Ray's compiled wait, which does not pass exceptions on."""
    caught: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return
    old = {s: signal.signal(s, lambda signum, _frame: caught.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@dataclass(frozen=True)
class Outcome:
    """How one run of a sweep ended: done, failed, skipped (DONE before), stopped or planned."""
    run: object               # the RunSpec
    status: str
    error: str | None = None
    seconds: float | None = None
    attempts: int = 0


def drive(pool, todo: list, *, retries: int, prepare, progress=None, skipped: int = 0,
          workers: int = 1) -> tuple[dict, int | None]:
    """Run `todo` through `pool`, retrying a failed run up to `retries` times (`prepare(run)`
    readies its directory before each attempt). Returns ({run_id: Outcome}, signal number or None).
    `progress(event, run, Status)` is called on start/done/failed/retry and on ticks."""
    pending, tries, outcomes, durations = deque(todo), {}, {}, []
    by_id = {run.run_id: run for run in todo}
    t0 = time.monotonic()

    def notify(event, run=None):
        if progress is not None:
            now, started = time.monotonic(), pool.started()
            n_failed = sum(o.status == "failed" for o in outcomes.values())
            progress(event, run, Status(
                done=len(outcomes) - n_failed, running=len(started), failed=n_failed, skipped=skipped,
                remaining=len(pending), elapsed_s=now - t0,
                eta_s=eta(durations, len(pending), [now - s for s in started.values()], workers)))
    with caught_signals() as caught:
        while (pending or pool.running) and not caught:
            while pending and pool.has_room() and not caught:
                run = pending.popleft()
                prepare(run)
                tries[run.run_id] = tries.get(run.run_id, 0) + 1
                pool.submit(run)
                notify("start", run)
            for run, error, secs in pool.poll(0.5):
                if error is None:
                    durations.append(secs)        # a crash at start-up says nothing about run time
                if error is not None and tries[run.run_id] <= retries:
                    pending.append(run)
                    notify("retry", run)
                    continue
                outcomes[run.run_id] = Outcome(run, "failed" if error else "done", error, secs,
                                               tries[run.run_id])
                notify("failed" if error else "done", run)
            notify("tick")
        if caught:
            stopped = list(pool.started())
            pool.stop_all()
            outcomes.update({rid: Outcome(by_id[rid], "stopped", attempts=tries[rid]) for rid in stopped})
            return outcomes, caught[0]
    notify("end")
    return outcomes, None
