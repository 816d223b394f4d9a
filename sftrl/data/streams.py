"""Turning problems into token batches, and the seeded stream of training problems.

Owns: `demo_batch` (prompt + demonstration as a `Rollout`-shaped batch, so SFT reuses the exact
log-prob path of RL) and `ProblemStream` (epoch-wise shuffles from an explicit numpy Generator,
with a state that checkpoints can save).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sftrl.batch import Rollout, encode_prompts
from sftrl.data.tasks.base import Problem


def demo_batch(tokenizer, prompts: list[str], targets: list[str], *, max_len: int, device) -> Rollout:
    """Left-padded prompts [B, Lp] and right-padded targets + EOS [B, T]; cut to `max_len` total.

    All targets start at column Lp, so `logprobs.token_logp_and_entropy(..., completion_start=Lp)`
    scores them exactly like sampled completions. A target cut by `max_len` loses its EOS and is
    flagged in `truncated`.
    """
    prompt_ids, prompt_mask = encode_prompts(tokenizer, prompts, device)         # [B, Lp]
    Lp = prompt_ids.shape[1]
    budget = max(1, max_len - Lp)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] + [eos] for t in targets]
    truncated = torch.tensor([len(r) > budget for r in rows], dtype=torch.bool, device=device)
    rows = [r[:budget] for r in rows]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1.0
    return Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=ids.to(device),
                   completion_mask=mask.to(device), truncated=truncated, texts=list(targets))


@dataclass
class ProblemStream:
    """Endless batches of problems: a fresh permutation each epoch, drawn from `rng`."""

    problems: list[Problem]
    rng: np.random.Generator
    epoch: int = 0
    pos: int = 0
    order: np.ndarray | None = None

    def next(self, k: int) -> list[Problem]:
        out = []
        while len(out) < k:
            if self.order is None or self.pos >= len(self.order):
                self.epoch += self.order is not None
                self.order = self.rng.permutation(len(self.problems))
                self.pos = 0
            take = min(k - len(out), len(self.order) - self.pos)
            out.extend(self.problems[i] for i in self.order[self.pos:self.pos + take])
            self.pos += take
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos,
                "order": None if self.order is None else self.order.tolist(),
                "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos = state["epoch"], state["pos"]
        self.order = None if state["order"] is None else np.asarray(state["order"])
        self.rng.bit_generator.state = state["rng"]
