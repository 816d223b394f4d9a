"""Running the runs of a sweep: one `sftrl train` subprocess per run, locally or as Ray tasks.

Owns: the train command line, starting a run (own process group, killed with the sweep), the
ERROR file of a failed run, the two pools (local processes, Ray tasks), the scheduling loop with
retries and signal handling, the experiment-directory lock, and the progress display.
Does not own what a sweep contains or which runs still need running (`sweep.py` decides).
A run is always its own process, so a crash, a leak or a segfault in one run cannot touch the
others. Locally a run is a fork of this process after it has imported the trainer once
(`preload`), which saves each run the ~8 s of importing torch and transformers; the Ray pool (and
`Launch(fork=False)`) starts a fresh `python -m sftrl.cli train` instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from sftrl.runlog import atomic_write_text

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
"""Put first on the children's PYTHONPATH, so they run this checkout's sftrl whatever their cwd."""


@dataclass(frozen=True)
class Launch:
    """What every run of a sweep shares (picklable: Ray ships it to its workers)."""
    base: str                 # base config file, absolute
    cwd: str                  # working directory of every run (relative paths in overrides)
    threads: int              # torch threads per run (also OMP/MKL threads)
    resume: str | None = None  # how `sftrl train` resumes a run with checkpoints/: "flag" (pass
    #                            --resume), "auto" (it resumes by itself), None (it cannot: start over)
    tie_to_parent: bool = True  # Linux: the kernel kills a run when the process that started it dies
    fork: bool = hasattr(os, "fork")   # local runs as forks of a process that preloaded the trainer


def train_command(run, launch: Launch) -> list[str]:
    """`python -m sftrl.cli train BASE overrides... --out RUN_DIR [--resume]`."""
    cmd = [sys.executable, "-m", "sftrl.cli", "train", launch.base, *run.overrides, "--out", str(run.path)]
    if launch.resume == "flag" and has_checkpoint(run.path):
        cmd.append("--resume")
    return cmd


def has_checkpoint(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(p.name.startswith("step-") for p in folder.iterdir())


def resume_mode(train_help: str) -> str | None:
    """How `sftrl train` resumes, read from its --help: a --resume flag, or an --out that
    resumes an unfinished run directory by itself (its help says so), or not at all."""
    if "--resume" in train_help:
        return "flag"
    return "auto" if "resume" in train_help.lower() else None


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)          # torch's own pools follow `threads=`; BLAS pools follow these
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"        # logs show the last line written before a crash
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


def _tie_to_parent(parent: int):
    """preexec_fn: PR_SET_PDEATHSIG, so a SIGKILLed sweep leaves no orphan run writing into a
    directory the next sweep is about to clear. Returns None off Linux or with threads running
    (preexec_fn is unsafe then; the sweep's signal handlers still stop its runs)."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl      # resolved before fork, not in the child

    def tie():
        prctl(1, signal.SIGKILL)                          # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:                        # the parent died before prctl took hold
            os._exit(1)
    return tie


def preload() -> None:
    """Import, in this process, everything a run imports (torch, transformers' Llama and auto
    classes, the trainer), so forked runs start without importing anything. Only the import:
    no torch computation runs here, so forks do not inherit a started thread pool."""
    import sftrl.cli  # noqa: F401
    import sftrl.train  # noqa: F401
    from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM,  # noqa: F401
                              PreTrainedTokenizerFast)


class Forked:
    """A forked run, with the part of Popen's interface the pools use (pid, poll, returncode)."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:             # reaped elsewhere: its DONE file tells
                pid, status = self.pid, 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _fork(run, launch: Launch, keep_fds: tuple[int, ...]) -> Forked:
    """`sftrl train` for `run` in a fork of this process: own session, stdout/stderr to the run's
    logs, default signal handlers, the run's threads and working directory; never returns here."""
    argv = train_command(run, launch)[3:]                       # after `python -m sftrl.cli`
    tie = _tie_to_parent(os.getpid()) if launch.tie_to_parent else None
    out = os.open(run.path / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    err = os.open(run.path / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()                                          # nothing buffered is written twice
    pid = os.fork()
    if pid:
        os.close(out)
        os.close(err)
        return Forked(pid)
    code = 1
    try:
        os.setsid()
        if tie is not None:
            tie()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1):
            signal.signal(sig, signal.SIG_DFL)
        null = os.open(os.devnull, os.O_RDONLY)
        for fd, target in ((null, 0), (out, 1), (err, 2)):
            os.dup2(fd, target)
        for fd in keep_fds:                                     # what Popen(pass_fds=...) keeps
            os.set_inheritable(fd, True)
        os.chdir(launch.cwd)
        os.environ.update({k: v for k, v in child_env(launch.threads).items() if k != "PYTHONPATH"})
        # fresh streams on fds 1 and 2 (the parent's may be replaced objects, e.g. a test's capture),
        # line-buffered as PYTHONUNBUFFERED would make them: a crash keeps the last line written
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8",
                                                       errors="backslashreplace", line_buffering=True)
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                                       errors="backslashreplace", line_buffering=True)
        import sftrl.cli
        sys.argv = [sftrl.cli.__file__, *argv]                 # as `python -m sftrl.cli ...` sees it
        code = sftrl.cli.main(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
            import atexit
            atexit._run_exitfuncs()                            # e.g. stop the run's math-verify worker
        finally:
            os._exit(code if isinstance(code, int) else 1)


def start(run, launch: Launch, keep_fds: tuple[int, ...] = ()):
    """Start one run in its own session (so stopping it stops everything it started): a fork
    (`Forked`) when `launch.fork`, else a `python -m sftrl.cli train` subprocess (Popen)."""
    run.path.mkdir(parents=True, exist_ok=True)
    if launch.fork:
        return _fork(run, launch, keep_fds)
    with open(run.path / "stdout.log", "ab") as out, open(run.path / "stderr.log", "ab") as err:
        return subprocess.Popen(
            train_command(run, launch), stdout=out, stderr=err, stdin=subprocess.DEVNULL,
            cwd=launch.cwd, env=child_env(launch.threads), start_new_session=True, pass_fds=keep_fds,
            preexec_fn=_tie_to_parent(os.getpid()) if launch.tie_to_parent else None)


def stop(procs, grace_s: float = 5.0) -> None:
    """SIGTERM each run's process group, then SIGKILL what is still alive after `grace_s`."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        alive = [p for p in procs if p.poll() is None]
        for p in alive:
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait_s
        while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
            time.sleep(0.05)


def error_line(stderr_text: str, returncode: int) -> str:
    """One line saying why a run failed: sftrl prints one-line errors last, so take its last line."""
    lines = [x.strip() for x in stderr_text.splitlines() if x.strip()]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        hint = " (out of memory, or stopped from outside)" if name == "SIGKILL" else ""
        return f"killed by {name}{hint}" + (f"; last output: {lines[-1]}" if lines else "")
    if returncode == 0:
        return "train exited 0 but wrote no DONE file"
    return lines[-1] if lines else f"train exited with code {returncode} and printed nothing"


def finish(run, launch: Launch, returncode: int) -> str | None:
    """None when the run finished (DONE); else write ERROR (first line: the error) and return it."""
    if returncode == 0 and (run.path / "DONE").exists():
        return None
    log = run.path / "stderr.log"
    text = log.read_bytes()[-16000:].decode("utf-8", "replace") if log.exists() else ""
    first = error_line(text, returncode)
    tail = "\n".join(text.splitlines()[-40:])
    atomic_write_text(run.path / "ERROR", f"{first}\n\nexit code: {returncode}\ncommand: "
                      f"{' '.join(train_command(run, launch))}\n\nstderr (last lines):\n{tail}\n")
    return first


def execute(run, launch: Launch) -> tuple[str | None, float]:
    """Start a run and wait for it (the body of a Ray task); stop it if interrupted."""
    t0 = time.monotonic()
    proc = start(run, launch)
    try:
        while proc.poll() is None:        # not wait(): ray.cancel's KeyboardInterrupt only lands
            time.sleep(0.2)               # between bytecodes, never inside a blocking waitpid
    except BaseException:
        stop([proc])
        raise
    return finish(run, launch, proc.returncode), time.monotonic() - t0


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


@dataclass(frozen=True)
class Status:
    """Counts shown by the progress display and passed to progress callbacks."""
    done: int
    running: int
    failed: int
    skipped: int
    remaining: int
    elapsed_s: float
    eta_s: float | None       # None until one run has ended


def eta(durations: list[float], remaining: int, running_for: list[float], workers: int) -> float | None:
    """Seconds left if every run takes the mean duration so far and `workers` run at a time."""
    if not durations:
        return None
    mean = sum(durations) / len(durations)
    left = remaining * mean + sum(max(mean - t, 0.0) for t in running_for)
    return left / max(1, min(workers, remaining + len(running_for)))


def _clock(s: float | None) -> str:
    if s is None:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class ProgressDisplay:
    """Callback printing sweep progress: one rewritten line on a terminal, plain lines otherwise
    (one per run that starts or ends, and one every `every_s` seconds while runs go on)."""

    def __init__(self, name: str, stream=None, every_s: float = 30.0):
        self.name, self.stream, self.every_s = name, stream or sys.stderr, every_s
        self.last = 0.0

    def __call__(self, event: str, run, status: Status) -> None:
        tty = getattr(self.stream, "isatty", lambda: False)()
        now = time.monotonic()
        if event == "tick" and not tty and now - self.last < self.every_s:
            return
        self.last = now
        what = f" {event} {run.run_id}" if run is not None and event != "tick" else ""
        line = (f"[{self.name}] {status.done} done, {status.running} running, {status.failed} failed, "
                f"{status.remaining} remaining ({status.skipped} skipped) | {_clock(status.elapsed_s)} "
                f"elapsed, eta {_clock(status.eta_s)}{what}")
        if tty:
            keep = f"[{self.name}] {event} {run.run_id}\n" if event in ("failed", "retry") else ""
            self.stream.write("\r\033[K" + keep + line + ("\n" if event == "end" else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


# -- the experiment-directory lock and signals ---------------------------------------------------
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


# -- the scheduling loop -------------------------------------------------------------------------
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
