"""Progress of a sweep: counts, an ETA, and the display that prints them.

Owns: `Status`, `eta` and `ProgressDisplay` (one rewritten line on a terminal, plain lines otherwise).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass


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
