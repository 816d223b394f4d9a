"""ReLIFT (ALGORITHMS.md §3): the hardest problems wait in a buffer; when it holds a full batch, a
separate SFT step with its own optimiser trains on them.

Owns: `SFTBuffer`, `NullBuffer` (what every other method holds: it does nothing), `make_buffer`
and `buffer_sft`, the separate SFT step. `fit` calls `buffer.step` after every RL step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from sftrl.parallel import dist
from sftrl.train.compute import sft_step_metrics
from sftrl.train.optim import Update
from sftrl.train.sft_step import sft_step


@dataclass
class SFTBuffer:
    """Hardest problems waiting for a separate SFT step. `lifo` prepends (ReLIFT's code: the newest
    are trained first; older ones wait), `fifo` appends. `step` fires at `trigger` problems."""

    order: str = "lifo"
    items: list = field(default_factory=list)
    triggers: int = 0
    trigger: int = 1

    def push(self, problems: list) -> None:
        self.items = (list(problems) + self.items) if self.order == "lifo" else (self.items + list(problems))

    def pop(self, k: int) -> list:
        """The first k items (removed), or [] when fewer than k are waiting."""
        if len(self.items) < k:
            return []
        out, self.items = self.items[:k], self.items[k:]
        self.triggers += 1
        return out

    def step(self, routed: list, train: Callable[[list], dict]) -> dict:
        """After an RL step: buffer its routed problems (every rank's, so every rank holds the same
        buffer), and when `trigger` wait, `train(this rank's block of them)`; returns metrics."""
        self.push(dist.gather_objects(routed))
        popped = self.pop(self.trigger)
        out = train(dist.shard(popped)) if popped else {}
        return {**out, "sft/buffer_size": float(len(self.items)), "sft/triggers": float(self.triggers)}

    def state(self) -> dict:
        return {"order": self.order, "ids": [p.id for p in self.items], "triggers": self.triggers}

    def load_state(self, state: dict, by_id: dict) -> None:
        self.order, self.triggers = state["order"], state["triggers"]
        self.items = [by_id[i] for i in state["ids"]]


@dataclass
class NullBuffer:
    """The buffer of methods without one: keeps nothing, trains nothing, logs nothing."""

    def step(self, routed: list, train: Callable[[list], dict]) -> dict:
        return {}

    def state(self) -> dict:
        return {"order": "none", "ids": [], "triggers": 0}

    def load_state(self, state: dict, by_id: dict) -> None:
        pass


def make_buffer(buffered: bool, *, order: str, trigger: int):
    return SFTBuffer(order=order, trigger=trigger) if buffered else NullBuffer()


def buffer_sft(model, updates: Callable[[], Update], demos: Callable, problems: list, *, batch: int | None,
               epochs: int, entropy_coef: float, micro_batch_size: int | None, n_params: int = 0) -> dict:
    """ReLIFT's SFT step on the popped problems: one optimiser step per `batch` demonstrations
    (None: all of them), `epochs` passes, an entropy bonus; `updates()` is the buffer's own
    optimiser (constant rate)."""
    size, losses, cost = batch or len(problems), [], {"tokens": 0.0, "flops": 0.0}
    for _ in range(epochs):
        for i in range(0, len(problems), size):
            rows = demos(problems[i:i + size])
            out = sft_step(model, updates(), rows, micro_batch_size=micro_batch_size, entropy_coef=entropy_coef)
            losses.append(out["loss/sft"])
            spent = sft_step_metrics(rows, n_params=n_params)
            cost["tokens"] += spent["compute/trained_tokens"]
            cost["flops"] += spent["compute/flops"]
    return {"loss/sft_buffer": sum(losses) / len(losses), "sft/buffer_steps": float(len(losses)),
            "sft/buffer_problems": float(len(problems)), "compute/buffer_trained_tokens": cost["tokens"],
            "compute/buffer_flops": cost["flops"]}
