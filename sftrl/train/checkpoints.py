"""Checkpoints for exact resume: `<run>/checkpoints/step-<N>/state.pt`.

Owns: where checkpoints live, writing them so a half-written one is never loaded (written under a
temporary name, fsynced, then the folder is renamed into place in one step), keeping the newest
`keep`, and finding the newest complete one. What goes inside is the trainer's `state_of`.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from sftrl.runlog import CHECKPOINTS

_NAME = re.compile(r"^step-(\d+)$")


def directory(run: Path) -> Path:
    return Path(run) / CHECKPOINTS


def save(run: Path, step: int, state: dict, *, keep: int) -> Path:
    root = directory(run)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    final = root / f"step-{step}"
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(complete(run), key=_step)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _step(path: Path) -> int:
    return int(_NAME.match(path.name).group(1))


def complete(run: Path) -> list[Path]:
    """Checkpoint folders that were renamed into place (temporary ones are never listed)."""
    root = directory(run)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if _NAME.match(p.name) and (p / "state.pt").is_file()]


def latest(run: Path) -> Path | None:
    found = sorted(complete(run), key=_step)
    return found[-1] if found else None


def load(path: Path) -> dict:
    return torch.load(Path(path) / "state.pt", map_location="cpu", weights_only=False)
