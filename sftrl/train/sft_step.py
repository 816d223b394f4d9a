"""One SFT step: prompt-masked NLL of demonstration tokens, micro-batched, one optimiser step.

Owns: `sft_step`. The same log-prob path scores demonstrations and sampled completions
(`sftrl.lm.logprobs`), so SFT and RL terms are computed alike.
"""

from __future__ import annotations

from dataclasses import replace

from sftrl.algos import policy
from sftrl.lm import logprobs
from sftrl.parallel import dist
from sftrl.train.forward import each
from sftrl.train.optim import Update


def micro_slices(n: int, size: int | None) -> list[slice]:
    size = size or n
    return [slice(i, min(n, i + size)) for i in range(0, n, size)]


def sft_step(model, update: Update, batch, *, micro_batch_size: int | None, entropy_coef: float = 0.0) -> dict:
    """One optimiser step of prompt-masked NLL on demonstration tokens (minus an optional entropy
    bonus, ReLIFT's SFT step).

    The token-mean weights come from the whole batch's mask, so the sum of micro-batch losses is
    exactly the full-batch loss: gradient accumulation never changes the objective.
    """
    mask = batch.completion_mask                                                # [B, T]
    w = dist.global_weights(policy.WEIGHTINGS["token_mean"], mask)              # [B, T] over all ranks
    ids, attn, Lp = batch.input_ids, batch.attention_mask, batch.prompt_ids.shape[1]
    total = ent_total = 0.0
    for rows in each(model, micro_slices(ids.shape[0], micro_batch_size)):
        if entropy_coef:
            logp, ent = logprobs.token_logp_and_entropy(model, ids[rows], attn[rows], Lp)   # [b, T]
            bonus = (ent * w[rows]).sum()
            ent_total += bonus.item()
        else:
            logp, bonus = logprobs.token_logp(model, ids[rows], attn[rows], Lp), 0.0
        nll = -(logp * w[rows]).sum()
        (nll - entropy_coef * bonus).backward()
        total += nll.item()
    grad_norm = replace(update, what=f"{update.what} (loss {total:.4g})")(model)
    total, ent_total = dist.sum_scalars({"loss": total, "ent": ent_total}, ("loss", "ent")).values()
    out = {"loss/sft": total, "grad/norm": grad_norm, "sft/tokens": float(mask.sum()),
           "sft/truncated": float(batch.truncated.float().mean())}
    if entropy_coef:
        out["sft/entropy"] = ent_total
    return out
