"""What a step costs: prompt, generated and trained tokens, and a FLOP estimate.

Owns: `param_count` and the `compute/*` metrics of SFT and RL steps. FLOPs follow the usual
dense-transformer estimate (Kaplan et al. 2020): a forward pass costs 2N per token through the
model, a training pass (forward + backward) 6N, with N the model's parameters; attention's
sequence-length term is left out (short completions). Decoding runs every prompt once and every
generated token once; the training and reference forwards run each distinct prompt once and every
completion token of their rows. Evaluation is not counted.
"""

from __future__ import annotations


def param_count(model) -> int:
    """Parameters a token's forward pass multiplies by (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def prompt_tokens(ro) -> float:
    """Tokens of the distinct prompts of a batch of rows (a prompt shared by a group counts once)."""
    mask = ro.prompt_mask
    seen, total = set(), 0.0
    for row, n in zip(ro.prompt_ids.tolist(), mask.sum(1).tolist()):
        key = tuple(row)
        if key not in seen:
            seen.add(key)
            total += n
    return total


def rl_step_metrics(g, b, *, n_params: int, no_grad_passes: int, epochs: int) -> dict:
    """compute/* of an RL step: its rollouts (every batch drawn, dynamic sampling included), the
    behaviour, reference and filter passes over the RL rows, and `epochs` training passes over
    the RL and SFT rows."""
    rl_rows = float(b.mask.sum())
    sft = float(b.sft_mask.sum())
    prompts = prompt_tokens(b.ro)
    rows = prompts + float(b.ro.completion_mask.sum())
    decode = g.metrics["compute/prompt_tokens"] + g.metrics["compute/generated_tokens"]
    flops = 2 * n_params * (decode + no_grad_passes * (prompts + rl_rows)) + 6 * n_params * epochs * rows
    return {"compute/trained_tokens": epochs * (rl_rows + sft), "compute/flops": float(flops)}


def sft_step_metrics(batch, *, n_params: int) -> dict:
    """compute/* of an SFT step: one training pass over the demonstrations."""
    prompts, completions = float(batch.prompt_mask.sum()), float(batch.completion_mask.sum())
    return {"compute/prompt_tokens": prompts, "compute/generated_tokens": 0.0,
            "compute/trained_tokens": completions, "compute/flops": float(6 * n_params * (prompts + completions))}
