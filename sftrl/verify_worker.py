"""math-verify in a worker process with a time bound enforced by the parent.

Owns: `symbolic_equal`. The worker is started lazily with the "spawn" context (never fork: the
parent has torch threads), serves requests over a pipe, and is killed and replaced when a
request overruns its bound, so one pathological answer (an exponent tower, deeply nested LaTeX)
costs at most `timeout` seconds and returns False. A lock serialises requests, so calls from
any number of threads behave exactly as on the main thread.
"""

from __future__ import annotations

import atexit
import multiprocessing as mp
import threading

MAX_CHARS = 2000
"""Longer answers are not sent to the symbolic parser at all."""


def _serve(conn) -> None:  # pragma: no cover - runs in the child process
    import logging
    import warnings
    logging.disable(logging.WARNING)          # math-verify warns on every call that timeouts are ours
    warnings.filterwarnings("ignore")
    from math_verify import parse, verify
    while True:
        try:
            pred, gold = conn.recv()
        except EOFError:
            return
        try:
            # \boxed{} is the anchor math-verify extracts most reliably from a bare answer
            g = parse(f"\\boxed{{{gold}}}", parsing_timeout=None)
            p = parse(f"\\boxed{{{pred}}}", parsing_timeout=None)
            ok = bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=None))
        except Exception:  # noqa: BLE001 - any parser failure means "not shown equal"
            ok = False
        conn.send(ok)


class _Worker:
    def __init__(self):
        self.lock = threading.Lock()
        self.proc = None
        self.conn = None

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True, name="sftrl-verify")
        self.proc.start()
        child.close()
        self.conn = parent

    def _kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.join(timeout=5)
        self.proc = self.conn = None

    def ask(self, pred: str, gold: str, timeout: float, startup: float = 60.0) -> bool:
        with self.lock:
            fresh = self.proc is None or not self.proc.is_alive()
            if fresh:
                self._kill()
                self._start()
            try:
                self.conn.send((pred, gold))
                # the first request also pays for importing math-verify in the child
                if self.conn.poll(timeout + (startup if fresh else 0.0)):
                    return bool(self.conn.recv())
            except (EOFError, OSError, BrokenPipeError):
                pass
            self._kill()
            return False

    def close(self) -> None:
        with self.lock:
            self._kill()


_WORKER = _Worker()
atexit.register(_WORKER.close)


def symbolic_equal(pred: str, gold: str, *, timeout: float = 2.0) -> bool:
    """math-verify equivalence of two answer strings; False on timeout, error or oversize input."""
    if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:
        return False
    return _WORKER.ask(pred, gold, timeout)
