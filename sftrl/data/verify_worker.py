"""math-verify in a worker process with a time bound enforced by the parent.

Owns: `symbolic_equal`, and `worker_starts`/`worker_ready` for monitoring. The worker is a plain `python` subprocess speaking
JSON lines on its stdin/stdout, not a `multiprocessing` child: it starts the same way from any
parent (a daemonic pool worker, which multiprocessing forbids to have children; a script without
a `__main__` guard, which a "spawn" child would re-run from the top; any thread), and it never
inherits the parent's torch threads. A request that overruns its bound gets the worker killed
and a replacement started at once, so one pathological answer (an exponent tower, deeply nested
LaTeX) costs at most `timeout` seconds and returns False; the worker's address space is capped
so a runaway computation fails inside it instead of exhausting the machine's memory. A lock
serialises requests, so calls from any number of threads behave exactly as on the main thread.
Nothing is ever evaluated as Python: requests are JSON strings, parsed by math-verify's LaTeX
parser and its digits-and-operators-only expression grammar.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

MAX_CHARS = 2000
"""Longer answers are not sent to the symbolic parser at all."""
MEMORY_LIMIT = 2 << 30
"""Address-space cap of the worker in bytes (math-verify itself needs about 70 MB)."""
STARTUP = 60.0
"""Seconds a fresh worker may take to import math-verify before a request counts as failed."""
_ROOT = str(Path(__file__).resolve().parents[2])
"""The folder holding this checkout's `sftrl` package: the worker imports the same code."""
_LAUNCH = "import sys; sys.path.insert(0, sys.argv[1]); from sftrl.data.verify_worker import serve; serve()"


def serve() -> None:  # pragma: no cover - runs in the worker process
    """Answer '1' or '0' for each JSON line [pred, gold] on stdin; 'ready' once imports are done."""
    import logging
    import warnings
    replies = os.fdopen(os.dup(1), "w", encoding="ascii", buffering=1)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)    # library prints must not corrupt the replies
    try:
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ImportError, ValueError, OSError):        # not on this platform: the time bound remains
        pass
    logging.disable(logging.WARNING)          # math-verify warns on every call that timeouts are ours
    warnings.filterwarnings("ignore")
    from math_verify import parse, verify
    replies.write("ready\n")
    for line in sys.stdin:
        try:
            pred, gold = json.loads(line)
            # \boxed{} is the anchor math-verify extracts most reliably from a bare answer
            g = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
            p = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
            ok = bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - any failure (parser, recursion, memory cap) is "not shown equal"
            ok = False
        replies.write("1\n" if ok else "0\n")


def _pump(stream, replies: queue.Queue) -> None:
    """Move the worker's reply lines into `replies`; None marks its end."""
    try:
        for line in stream:
            replies.put(line.strip())
    except (OSError, ValueError):
        pass
    replies.put(None)


class _Worker:
    def __init__(self):
        self.lock = threading.Lock()
        self.proc = None
        self.replies: queue.Queue | None = None
        self.ready = False
        self.starts = 0

    def _start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _LAUNCH, _ROOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     encoding="ascii", bufsize=1, close_fds=True)
        self.replies, self.ready = queue.Queue(), False
        self.starts += 1
        threading.Thread(target=_pump, args=(self.proc.stdout, self.replies), daemon=True,
                         name="sftrl-verify-replies").start()

    def _kill(self) -> None:
        proc, self.proc, self.ready = self.proc, None, False
        if proc is None:
            return
        try:
            proc.kill()
            proc.wait(timeout=5)
        except (OSError, subprocess.SubprocessError):
            pass
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except (OSError, ValueError):
                pass

    def _reply(self, seconds: float) -> str | None:
        try:
            return self.replies.get(timeout=seconds)
        except queue.Empty:
            return None

    def ask(self, pred: str, gold: str, timeout: float) -> bool:
        with self.lock:
            try:
                if self.proc is None or self.proc.poll() is not None:
                    self._kill()
                    self._start()
                if not self.ready:                      # a fresh worker first imports math-verify
                    if self._reply(STARTUP) != "ready":
                        self._kill()                    # it died or hung on start: try again next call
                        return False
                    self.ready = True
                self.proc.stdin.write(json.dumps([pred, gold]) + "\n")
                self.proc.stdin.flush()
                answer = self._reply(timeout)
                if answer in ("0", "1"):
                    return answer == "1"
                self._kill()
                self._start()       # the replacement imports while the caller goes on
            except (OSError, ValueError, subprocess.SubprocessError):
                self._kill()
            return False

    def close(self) -> None:
        with self.lock:
            self._kill()

    def forget(self) -> None:
        """In a forked child: the parent's worker, pipes and lock are the parent's. Keep them
        unreferenced-but-alive (closing a pipe its reader thread held at fork time could block)
        and start afresh on the next request."""
        if self.proc is not None:
            _INHERITED.append((self.proc, self.replies))
        self.lock, self.proc, self.replies, self.ready, self.starts = threading.Lock(), None, None, False, 0


_INHERITED: list = []
_WORKER = _Worker()
atexit.register(_WORKER.close)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_WORKER.forget)


def symbolic_equal(pred: str, gold: str, *, timeout: float = 2.0) -> bool:
    """math-verify equivalence of two answer strings; False on timeout, error or oversize input.

    `timeout` bounds the check itself; a call that has to start the worker first (the first
    call, or the one after a timeout) may also wait up to STARTUP seconds for its imports."""
    if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
        return False
    return _WORKER.ask(pred, gold, timeout)


def worker_starts() -> int:
    """How many worker processes this process has started (each timeout adds a replacement)."""
    return _WORKER.starts


def worker_ready() -> bool:
    """Whether the worker has finished its imports, so the next check waits only for itself."""
    return _WORKER.ready
