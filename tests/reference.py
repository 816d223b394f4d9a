"""Loop-based reference implementations (oracles) for the vectorised functions in sftrl.algos."""

import math


def grpo_loop(rewards, eps):
    out = []
    for group in rewards:
        m = sum(group) / len(group)
        sd = math.sqrt(sum((x - m) ** 2 for x in group) / (len(group) - 1))
        out.append([(x - m) / (sd + eps) for x in group])
    return out


def rloo_loop(rewards):
    out = []
    for group in rewards:
        out.append([x - (sum(group) - x) / (len(group) - 1) for x in group])
    return out


def token_loss_loop(per_token, mask, mode, max_len=None):
    """Aggregate a [N][T] per-token loss as the papers write it."""
    N, T = len(per_token), len(per_token[0])
    lens = [sum(row) for row in mask]
    if mode == "seq_mean_token_mean":
        return sum(sum(l * m for l, m in zip(per_token[i], mask[i])) / max(lens[i], 1) for i in range(N)) / N
    if mode == "token_mean":
        return sum(l * m for i in range(N) for l, m in zip(per_token[i], mask[i])) / max(sum(lens), 1)
    if mode == "const_len":
        return sum(sum(l * m for l, m in zip(per_token[i], mask[i])) / max_len for i in range(N)) / N
    if mode == "sum_over_lpad":
        return sum(l * m for i in range(N) for l, m in zip(per_token[i], mask[i])) / T
    raise ValueError(mode)
