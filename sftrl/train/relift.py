"""ReLIFT (ALGORITHMS.md §3): hardest problems wait in a buffer for a separate SFT step.

Owns: `SFTBuffer`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SFTBuffer:
    """Hardest problems waiting for a separate SFT step. `lifo` prepends (ReLIFT's code: the newest
    are trained first; older ones wait), `fifo` appends."""

    order: str = "lifo"
    items: list = field(default_factory=list)
    triggers: int = 0

    def push(self, problems: list) -> None:
        self.items = (list(problems) + self.items) if self.order == "lifo" else (self.items + list(problems))

    def pop(self, k: int) -> list:
        """The first k items (removed), or [] when fewer than k are waiting."""
        if len(self.items) < k:
            return []
        out, self.items = self.items[:k], self.items[k:]
        self.triggers += 1
        return out

    def state(self) -> dict:
        return {"order": self.order, "ids": [p.id for p in self.items], "triggers": self.triggers}

    def load_state(self, state: dict, by_id: dict) -> None:
        self.order, self.triggers = state["order"], state["triggers"]
        self.items = [by_id[i] for i in state["ids"]]
