"""Starting one run of a sweep: one `sftrl train` process per run, locally forked or as a subprocess.

Owns: the train command line, the children's environment, starting a run in its own process
group (killed with the sweep), stopping it, and the ERROR file of a failed run. A run is always
its own process, so a crash, a leak or a segfault in one run cannot touch the others. Locally a
run is a fork of this process after it has imported the trainer once (`preload`), which saves
each run the ~8 s of importing torch and transformers; the Ray pool (and `Launch(fork=False)`)
starts a fresh `python -m sftrl.cli train` instead. The forked child runs `sftrl.entry.main`, the
one place the experiment half reaches into the training half, and only inside that child.
"""

from __future__ import annotations

import ctypes
import io
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from sftrl import runlog
from sftrl.runlog import atomic_write_text

PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
"""Put first on the children's PYTHONPATH, so they run this checkout's sftrl whatever their cwd."""
CLI_FILE = str(Path(__file__).resolve().parents[1] / "cli.py")


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
    if launch.resume == "flag" and runlog.has_checkpoint(run.path):
        cmd.append("--resume")
    return cmd


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
    """Import, in this process, everything a run imports (`sftrl.entry.preload`), so forked runs
    start without importing anything."""
    from sftrl import entry
    entry.preload()


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
        from sftrl import entry
        sys.argv = [CLI_FILE, *argv]                            # as `python -m sftrl.cli ...` sees it
        code = entry.main(argv)
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
