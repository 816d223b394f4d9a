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
    if mode == "seq_mean_token_sum_norm":
        return sum(l * m for i in range(N) for l, m in zip(per_token[i], mask[i])) / max_len
    raise ValueError(mode)


# -- transcriptions of the sources' formulas (their structure, on plain tensors) ------------------
# Each follows the named function of the named repository at the commit cited in docs/ALGORITHMS.md;
# the tests run them and sftrl's code on identical tensors.
import torch  # noqa: E402


def luffy_on_off_policy_loss(log_prob, old_log_prob, advantages, eos_mask, prefix_mask):
    """LUFFY mix_core_alg.compute_token_on_off_policy_loss with loss_remove_clip=True,
    loss_remove_token_mean=True, off_policy_reshape="p_div_p_0.1"; eos_mask is padded to
    max_response_length, as LUFFY's rollout always pads it."""
    negative_approx_kl = log_prob - old_log_prob
    ratio = torch.exp(negative_approx_kl)
    on_pg_losses = -advantages * ratio
    off_ratio = torch.exp(log_prob)
    off_ratio = off_ratio / (off_ratio + 0.1)
    off_pg_losses = -advantages * off_ratio
    pg_losses = off_pg_losses * prefix_mask + on_pg_losses * (1 - prefix_mask)
    return (pg_losses * eos_mask).sum() / eos_mask.shape[-1]


def grpo_outcome_advantage(scores, index, use_std, epsilon=1e-6, on_policy_mask=None):
    """verl/LUFFY compute_grpo_outcome_advantage (scores [bsz], index = group id per row); with
    `on_policy_mask` LUFFY's grpo_split: the group statistics come from on-policy rows only."""
    id2score, id2mean, id2std = {}, {}, {}
    for i in range(len(scores)):
        if on_policy_mask is None or bool(on_policy_mask[i]):
            id2score.setdefault(index[i], []).append(scores[i])
    for idx, vals in id2score.items():
        if len(vals) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            id2mean[idx], id2std[idx] = torch.mean(torch.stack(vals)), torch.std(torch.stack(vals))
    out = scores.clone()
    for i in range(len(scores)):
        if use_std:
            out[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
        else:
            out[i] = scores[i] - id2mean[index[i]]
    return out


def em_clip_cov_loss(advantages, log_prob, old_log_prob, response_mask, cliprange_low, cliprange_high,
                     clip_ratio, clip_cov_lb, clip_cov_ub, generator):
    """Entropy-Mechanism-of-RL core_algos.compute_policy_loss_clip_cov (token-mean aggregation); the
    random subset is drawn with `generator` (the source calls torch.randperm without one)."""
    def masked_mean(x, m):
        return (x * m).sum() / (m.sum() + 1e-8)
    ratio = torch.exp(log_prob - old_log_prob)
    pg_losses1 = -advantages * ratio
    corr = torch.ones_like(advantages)
    pg_losses2 = -advantages * torch.clamp(ratio, 1 - cliprange_low, 1 + cliprange_high)
    clip_by_origin = (pg_losses2 > pg_losses1) & (response_mask > 0)
    cov_all = (advantages - masked_mean(advantages, response_mask)) * (log_prob - masked_mean(log_prob.detach(), response_mask))
    cov_all[response_mask == 0] = -torch.inf
    cov_all[clip_by_origin] = -torch.inf
    clip_num = max(int(clip_ratio * response_mask.sum().item()), 1)
    top_k_idx = (cov_all < clip_cov_ub) & (cov_all > clip_cov_lb) & (response_mask > 0)
    top_k_idx = torch.nonzero(top_k_idx)
    if len(top_k_idx) > 0:
        perm = torch.randperm(len(top_k_idx), generator=generator)
        top_k_idx = top_k_idx[perm[:min(clip_num, len(top_k_idx))]]
    else:
        top_k_idx = torch.empty((0, 2), device=cov_all.device, dtype=torch.long)
    corr[top_k_idx[:, 0], top_k_idx[:, 1]] = 0
    pg_losses = torch.maximum(pg_losses1, pg_losses2) * corr
    return (pg_losses * response_mask).sum() / response_mask.sum(), corr


def verl_kl_cov_loss(advantages, log_prob, old_log_prob, response_mask, kl_cov_ratio, ppo_kl_coef):
    """verl core_algos compute_policy_loss_kl_cov (token-mean aggregation)."""
    negative_approx_kl = log_prob - old_log_prob
    abs_kl = negative_approx_kl.abs()
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -advantages * ratio
    pg_losses_kl = -advantages * ratio + ppo_kl_coef * abs_kl
    pg_losses = pg_losses1.clone()
    all_valid = response_mask > 0
    all_valid_idx = torch.nonzero(all_valid.reshape(-1), as_tuple=True)[0]
    all_valid_adv = advantages[all_valid].detach().reshape(-1)
    all_valid_logp = log_prob[all_valid].detach().reshape(-1)
    k = min(kl_cov_ratio, len(all_valid_adv))
    if k != 0:
        cov_lst_all = (all_valid_adv - all_valid_adv.mean()) * (all_valid_logp - all_valid_logp.mean())
        k_percent_nums = max(1, int(len(cov_lst_all) * kl_cov_ratio))
        large_cov_idxs = torch.topk(cov_lst_all, k_percent_nums, largest=True).indices
        if len(large_cov_idxs) != 0:
            large_cov_idxs = all_valid_idx[large_cov_idxs]
            rows, cols = large_cov_idxs // advantages.shape[1], large_cov_idxs % advantages.shape[1]
            pg_losses[rows, cols] = pg_losses_kl[rows, cols]
    return (pg_losses * response_mask).sum() / response_mask.sum()


def verl_reinforce_pp_advantage(token_level_rewards, response_mask, gamma):
    """verl core_algos.compute_reinforce_plus_plus_outcome_advantage with masked_whiten."""
    returns = torch.zeros_like(token_level_rewards)
    running_return = 0
    for t in reversed(range(token_level_rewards.shape[1])):
        running_return = token_level_rewards[:, t] + gamma * running_return
        returns[:, t] = running_return
        running_return = running_return * response_mask[:, t]
    mean = (returns * response_mask).sum() / (response_mask.sum() + 1e-8)
    centered = returns - mean
    variance = (centered ** 2 * response_mask).sum() / (response_mask.sum() + 1e-8)
    mask_sum = response_mask.sum()
    variance = variance * (mask_sum / (mask_sum - 1))                      # masked_var's Bessel correction
    whitened = (returns - mean) * torch.rsqrt(variance + 1e-8)
    return whitened * response_mask


def verl_token_rewards(scores, response_mask, old_log_prob, ref_log_prob, beta):
    """verl's reward manager (the score on the last valid token) then apply_kl_penalty with k1."""
    rewards = torch.zeros_like(response_mask)
    for i in range(len(scores)):
        valid = int(response_mask[i].sum())
        rewards[i, valid - 1] = scores[i]
    kld = (old_log_prob - ref_log_prob) * response_mask
    return rewards - beta * kld


def adaptive_kl_update(value, current_kl, target, n_steps, horizon):
    """verl AdaptiveKLController.update / OpenRLHF AdaptiveKLController.update."""
    import numpy as np
    proportional_error = np.clip(current_kl / target - 1, -0.2, 0.2)
    mult = 1 + proportional_error * n_steps / horizon
    return value * mult


def verl_agg_loss(loss_mat, loss_mask, loss_agg_mode, loss_scale_factor=None):
    """verl core_algos.agg_loss (one process: dp_size 1, no global batch info)."""
    if loss_agg_mode == "token-mean":
        return (loss_mat * loss_mask).sum() / loss_mask.sum()
    if loss_agg_mode == "seq-mean-token-sum":
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        seq_mask = (torch.sum(loss_mask, dim=-1) > 0).float()
        return (seq_losses * seq_mask).sum() / seq_mask.sum()
    if loss_agg_mode == "seq-mean-token-mean":
        seq_mask = torch.sum(loss_mask, dim=-1)
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1) / (seq_mask + 1e-8)
        seq_mask = (seq_mask > 0).float()
        return (seq_losses * seq_mask).sum() / seq_mask.sum()
    if loss_agg_mode == "seq-mean-token-sum-norm":
        seq_losses = torch.sum(loss_mat * loss_mask, dim=-1)
        return torch.sum(seq_losses) / (loss_scale_factor if loss_scale_factor is not None else loss_mask.shape[-1])
    raise ValueError(loss_agg_mode)


def trl_high_entropy_mask(entropies, mask, threshold):
    """TRL GRPOTrainer.get_high_entropy_mask (one process)."""
    local = entropies[mask.bool()].float()
    if local.numel() == 0:
        return torch.zeros_like(entropies, dtype=torch.bool)
    entropy_threshold = torch.quantile(local, threshold)
    masked_entropies = entropies * mask.float()
    entropy_mask = masked_entropies >= entropy_threshold
    return entropy_mask & mask.bool()


def trl_rloo_rewards_with_kl(rewards, old_per_token_logps, ref_per_token_logps, completion_mask, beta):
    """TRL RLOOTrainer: the sequence-level k1 KL penalty subtracted from the rewards, then the
    leave-one-out advantage over groups of `n`."""
    per_token_kl = old_per_token_logps - ref_per_token_logps
    kl = (per_token_kl * completion_mask).sum(-1)
    return rewards - beta * kl
