"""Tolerances derived from the computation, for comparing float32 results of two paths that do
the same arithmetic in a different order (micro-batching, forward implementations, processes,
thread counts, SIMD widths). Standard error analysis (Higham, "Accuracy and Stability of
Numerical Algorithms", §3.1): a float32 sum of n terms, in any order, is within n * u * sum|terms|
of the exact sum, u = 2^-24. Each helper names what plays n and sum|terms|. Post-step weights are
never compared: AdamW's first update lr * g / (|g| + eps) turns the rounding of a gradient near
zero into a move of up to 2 lr, so gradients and the optimiser's moments are compared instead."""

import math

import torch
from torch.testing import assert_close

U = torch.finfo(torch.float32).eps / 2
"""float32 unit roundoff, 2^-24."""


class AbsGrads:
    """Per parameter, the sum over backward passes of |gradient of that pass|: with one row per
    micro-batch, sum_rows |g_row|, the scale of the sum over rows each gradient entry is
    (it counts the cancellation between rows of opposite advantage). Cut per optimiser step
    with `cut()`."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.now = [torch.zeros_like(p) for p in self.params]
        self.steps: list[list[torch.Tensor]] = []
        for i, p in enumerate(self.params):
            p.register_hook(self._adder(i))

    def _adder(self, i: int):
        def add(g):
            self.now[i].add_(g.detach().abs())
        return add

    def cut(self, *args, **kwargs) -> None:
        self.steps.append(self.now)
        self.now = [torch.zeros_like(p) for p in self.params]


def summed_terms(model, tokens: float, seq_len: int) -> float:
    """What plays n for a gradient entry: the `tokens` per-token terms summed into it, plus, to first
    order, the rounding each term carries from the dot products that made it (a composition's
    relative errors add): every linear layer's input and output width (forward and backward dot
    products) and, per attention layer, the positions and head dimensions summed over."""
    lin = sum(m.in_features + m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = getattr(model, "config", None)
    layers = getattr(cfg, "num_hidden_layers", 0)
    head = getattr(cfg, "head_dim", None) or (cfg.hidden_size // cfg.num_attention_heads if cfg else 0)
    return tokens + lin + 2 * layers * (seq_len + head)


def assert_grads_close(got: list, want: list, scale: list, terms: float) -> list[float]:
    """Gradients that sum `terms` per-token terms agree, tensor by tensor, to terms * u * max(scale),
    `scale` bounding sum|terms| (an `AbsGrads` step, or |g| where no rows cancel). The bound is per
    tensor, not per entry: an entry's terms carry the rounding of the whole backward pass through
    the layers above it, whose size is the tensor's, not the entry's. Returns the tolerances."""
    tol = [terms * U * float(s.abs().max()) for s in scale]
    for g, w, t in zip(got, want, tol):
        assert_close(g, w, rtol=0, atol=t)
    return tol


def assert_adamw_state_close(opt_a, opt_b, grads: list, tol: list) -> None:
    """AdamW's moments after t steps, m = (1 - b1) sum_k b1^(t-k) g_k and v = (1 - b2) sum_k
    b2^(t-k) g_k^2, are smooth in the gradients: gradients within tol_k give
    |dm| <= (1 - b1^t) max_k tol_k and |dv| <= (1 - b2^t) max_k (2 |g_k| + tol_k) tol_k, plus the
    rounding of the moment updates themselves (u of their size)."""
    (b1, b2), t = opt_a.param_groups[0]["betas"], len(grads)
    for i, (p, q) in enumerate(zip(opt_a.param_groups[0]["params"], opt_b.param_groups[0]["params"])):
        if p not in opt_a.state:
            continue
        a, b = opt_a.state[p], opt_b.state[q]
        dg = max(tk[i] for tk in tol)
        big = max(float(gk[i].abs().max()) for gk in grads)
        assert_close(b["exp_avg"], a["exp_avg"], rtol=0, atol=(1 - b1 ** t) * dg + 4 * U * float(a["exp_avg"].abs().max()))
        assert_close(b["exp_avg_sq"], a["exp_avg_sq"], rtol=0,
                     atol=(1 - b2 ** t) * (2 * big + dg) * dg + 4 * U * float(a["exp_avg_sq"].abs().max()))


def logit_tolerance(model, ids: torch.Tensor, attn: torch.Tensor) -> float:
    """How far two float32 forward paths' logits may differ: a logit z_v = <h, W_v> of the final
    hidden state h carries the first-order rounding of the whole path, n u sum_k |h_k W_vk| <=
    n u |h| |W_v| (n from `summed_terms`, no tokens summed); h and W from `model` on these rows."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    h = out.hidden_states[-1][attn.bool()]                                     # [tokens, hidden]
    head = model.get_output_embeddings().weight.detach()                       # [V, hidden]
    scale = float(h.norm(dim=-1).max()) * float(head.norm(dim=-1).max())
    return summed_terms(model, 0, ids.shape[1]) * U * scale


def logp_tolerance(model, ids: torch.Tensor, attn: torch.Tensor) -> float:
    """Token log-probs: log-softmax moves by at most 2 max|dz| for logit changes dz."""
    return 2 * logit_tolerance(model, ids, attn)


def entropy_tolerance(model, ids: torch.Tensor, attn: torch.Tensor) -> float:
    """Token entropies: dH/dz_i = -p_i (log p_i + H), so |dH| <= max|dz| sum_i p_i |log p_i + H|
    <= 2 H max|dz| <= 2 log(V) max|dz|."""
    V = model.get_output_embeddings().weight.shape[0]
    return 2 * math.log(V) * logit_tolerance(model, ids, attn)
