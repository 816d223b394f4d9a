"""Progress display: a bar with ETA and key metrics on a terminal, plain periodic lines otherwise.

Owns: `Progress`. Only presentation; nothing here is written to the run directory.
"""

from __future__ import annotations

import sys
import time

KEYS = ("loss/sft", "loss/pg", "reward/mean", "policy/entropy", "policy/kl")
"""Metrics shown live when a step reports them."""


def _short(metrics: dict) -> str:
    parts = [f"{k.split('/')[-1] if k != 'loss/sft' else 'sft'}={metrics[k]:.3g}" for k in KEYS if k in metrics]
    parts += [f"{k.split('/')[1]}={v:.3f}" for k, v in metrics.items()
              if k.startswith("eval/") and k.endswith("/acc_strict")]
    return " ".join(parts)


class Progress:
    """`update(step, metrics)` each step; `close(final)` at the end."""

    def __init__(self, total: int, *, mode: str = "auto", label: str = "", stream=None,
                 every_s: float = 10.0):
        self.total, self.label, self.stream = total, label, stream or sys.stderr
        self.every_s = every_s
        if mode == "auto":
            mode = "bar" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.mode = mode
        self.t0 = self.last = time.perf_counter()
        self.bar = None
        if mode == "bar":
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=label, file=self.stream, dynamic_ncols=True)

    def update(self, step: int, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(_short(metrics), refresh=False)
            return
        now = time.perf_counter()
        if self.mode == "plain" and (now - self.last >= self.every_s or step == self.total
                                     or any(k.startswith("eval/") for k in metrics)):
            self.last = now
            elapsed = now - self.t0
            eta = elapsed / max(step, 1) * (self.total - step)
            print(f"[{self.label}] step {step}/{self.total} {elapsed:.0f}s eta {eta:.0f}s "
                  f"{_short(metrics)}", file=self.stream, flush=True)

    def close(self, final: dict | None = None) -> None:
        if self.bar is not None:
            self.bar.close()
        if final and self.mode != "off":
            print(f"[{self.label}] done: {_short(final)}", file=self.stream, flush=True)
