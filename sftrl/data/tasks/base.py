"""The `Problem` record and the task registry shared by every task source.

Owns: `Problem`, `TASKS` (name -> loader) and `load_problems`. Prompt templating lives in
`sftrl.data.tasks.prompts`; answer checking lives in `sftrl.data.verify`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sftrl.registry import Registry


@dataclass(frozen=True)
class Problem:
    """One question with its reference answer and, where the source has one, a worked solution."""

    id: str
    """Stable identifier, unique within a task split (used for routing buffers and answer histograms)."""
    prompt: str
    """The question text, without any template (templates are applied by `tasks.prompts`)."""
    answer: str
    """The reference final answer as a string ("29", "-3", "\\frac{1}{2}")."""
    solution: str | None = None
    """A worked solution used as the SFT demonstration; ends with the answer marker where the source has one."""
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    """Source-specific extras (difficulty, number of operations, ...); never read by the trainer."""


TASKS = Registry("task")
"""Task loaders: `fn(*, split: str, n: int | None, seed: int, **kwargs) -> list[Problem]`."""
