"""Token batches of an RL or SFT step: the `Rollout` record and row bookkeeping.

Owns: `Rollout` (prompt + completion tensors of N rows, prompt-major), `encode_prompts`
(left-padded prompt ids), and selecting, concatenating and padding rows. Nothing here runs a
model: sampling is `sftrl.lm.rollout`, demonstrations are `sftrl.data.streams.demo_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Rollout:
    """Token tensors of N = P*G completions; rows p*G .. p*G+G-1 belong to prompt p."""

    prompt_ids: torch.Tensor        # [N, Lp] left-padded
    prompt_mask: torch.Tensor       # [N, Lp] float
    completion_ids: torch.Tensor    # [N, T] right-padded with pad id
    completion_mask: torch.Tensor   # [N, T] float: 1 on generated tokens, EOS included
    truncated: torch.Tensor         # [N] bool: reached max_new_tokens without EOS
    texts: list[str]                # decoded completions, special tokens removed

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], 1)             # [N, Lp+T]

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], 1)           # [N, Lp+T]

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(1)                                      # [N]


def encode_prompts(tokenizer, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ids [P, Lp] and float mask, without adding special tokens (templates add them)."""
    enc = tokenizer(prompts, padding=True, padding_side="left", add_special_tokens=False,
                    return_tensors="pt")
    return enc["input_ids"].to(device), enc["attention_mask"].to(device).float()


# -- group bookkeeping for dynamic sampling: rows stay prompt-major ----------------------------
def _pad_to(x: torch.Tensor, width: int, value, *, left: bool) -> torch.Tensor:
    extra = width - x.shape[1]
    if extra <= 0:
        return x
    pad = x.new_full((x.shape[0], extra), value)
    return torch.cat([pad, x] if left else [x, pad], 1)


def select_rows(ro: Rollout, rows: torch.Tensor) -> Rollout:
    """The rollout restricted to `rows` (index tensor), in that order."""
    return Rollout(prompt_ids=ro.prompt_ids[rows], prompt_mask=ro.prompt_mask[rows],
                   completion_ids=ro.completion_ids[rows], completion_mask=ro.completion_mask[rows],
                   truncated=ro.truncated[rows], texts=[ro.texts[i] for i in rows.tolist()])


def concat(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack rollouts with different prompt/completion widths (prompts stay left-padded)."""
    Lp = max(p.prompt_ids.shape[1] for p in parts)
    T = max(p.completion_ids.shape[1] for p in parts)
    return Rollout(
        prompt_ids=torch.cat([_pad_to(p.prompt_ids, Lp, pad_id, left=True) for p in parts]),
        prompt_mask=torch.cat([_pad_to(p.prompt_mask, Lp, 0.0, left=True) for p in parts]),
        completion_ids=torch.cat([_pad_to(p.completion_ids, T, pad_id, left=False) for p in parts]),
        completion_mask=torch.cat([_pad_to(p.completion_mask, T, 0.0, left=False) for p in parts]),
        truncated=torch.cat([p.truncated for p in parts]),
        texts=[t for p in parts for t in p.texts])


def group_rows(groups: torch.Tensor, G: int) -> torch.Tensor:
    """Row indices [len(groups) * G] of the given group indices, prompt-major."""
    return (groups[:, None] * G + torch.arange(G)[None, :]).reshape(-1)
