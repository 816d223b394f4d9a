"""How much a leading seed dimension could buy at the default study's shape: S tiny models run as
one stacked model (weights [S, ...], one batched matmul per projection for all seeds) against the
same S models run one after another through sftrl's own paths.

This measures the ceiling of the batched-seed idea before an engine is built on it: the two
kernels that make up most of an RL step, on the default study's model and rollout shape,

  decode    prefill 32 prompts, repeat their cache 8x, sample 56 tokens for the 256 rows (each
            seed from its own generator); lone: `sftrl.lm.rollout._decode_direct` per model
            (no row finishes early, so both sides decode every token)
  train     token log-probs of 256 prompt + completion rows and the backward of their mean;
            lone: `sftrl.lm.logprobs.token_logp` per model (which runs each shared prompt once)

and checks before timing that the stacked model computes what the lone ones do: log-probs within
`tests/tolerances.logp_tolerance` and next-token logits within `logit_tolerance` of each seed's
own model (float32 rounding of a different summation order, bounded from the computation).

    python benchmarks/bench_batched_seeds.py [--seeds 10] [--threads 1] [--reps 3]

Prints one JSON line per kernel: lone and stacked seconds for all S seeds (median of --reps),
their ratio (lone / stacked = the speed-up in seed-steps per second), and the largest differences
found against their tolerances.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sftrl.config.schema import TinyModelConfig          # noqa: E402
from sftrl.experiment.study import DEFAULT               # noqa: E402
from sftrl.lm import decoder as direct                   # noqa: E402
from sftrl.lm import rollout                             # noqa: E402
from sftrl.lm.logprobs import token_logp                 # noqa: E402
from sftrl.lm.models import build_char_tokenizer, tiny_model   # noqa: E402
from tolerances import logit_tolerance, logp_tolerance    # noqa: E402

PROMPT_LEN, TRAIN_COMPLETION = 12, 40
"""Prompt length of the arith prompts (`12+7*3-4=` and its like) and a completion length near the
study's mean (32-42 tokens)."""


class Stacked:
    """S Llama models of one config as stacked leaf tensors (a copy of their weights): embeddings
    [S, V, D] (tied head), per layer RMSNorm weights [S, D], q|k|v [S, D, 3D], o [S, D, D],
    gate|up [S, D, 2F], down [S, F, D]; rotary angles from the first model (same config)."""

    def __init__(self, models, *, grad: bool):
        def stack(get):
            return torch.stack([get(m).detach() for m in models]).clone().requires_grad_(grad)
        self.S, self.models = len(models), models
        self.cfg = models[0].config
        self.embed = stack(lambda m: m.model.embed_tokens.weight)
        self.final = stack(lambda m: m.model.norm.weight)
        self.layers = []
        for i in range(self.cfg.num_hidden_layers):
            def lay(m, i=i):
                return m.model.layers[i]
            self.layers.append({
                "ln1": stack(lambda m: lay(m).input_layernorm.weight),
                "qkv": stack(lambda m: torch.cat([lay(m).self_attn.q_proj.weight, lay(m).self_attn.k_proj.weight,
                                                  lay(m).self_attn.v_proj.weight]).T),
                "o": stack(lambda m: lay(m).self_attn.o_proj.weight.T),
                "ln2": stack(lambda m: lay(m).post_attention_layernorm.weight),
                "gu": stack(lambda m: torch.cat([lay(m).mlp.gate_proj.weight, lay(m).mlp.up_proj.weight]).T),
                "down": stack(lambda m: lay(m).mlp.down_proj.weight.T)})
        self.heads = self.cfg.num_attention_heads
        self.hd = self.cfg.hidden_size // self.heads
        self.eps = self.cfg.rms_norm_eps

    def params(self):
        return [self.embed, self.final, *(t for lay in self.layers for t in lay.values())]

    def rope(self, length: int):
        cos, sin = self.models[0].model.rotary_emb(self.embed, torch.arange(length)[None])
        return cos[0], sin[0]                                                      # [length, hd]

    def _norm(self, h, w):
        return F.rms_norm(h, (h.shape[-1],), None, self.eps) * w[:, None, :]       # h [S, M, D], w [S, D]

    def _qkv(self, lay, h, rows, q, cos, sin):
        """Queries, keys, values [S*rows, H, q, hd] of h [S, rows*q, D], RoPE at cos/sin [q, hd]."""
        x = torch.bmm(self._norm(h, lay["ln1"]), lay["qkv"])                      # [S, rows*q, 3D]
        x = x.view(self.S * rows, q, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
        return direct.rotate(x[0], cos, sin), direct.rotate(x[1], cos, sin), x[2]

    def _rest(self, lay, h, o, rows, q):
        """The residual adds after attention output o [S*rows, H, q, hd]."""
        h = h + torch.bmm(o.transpose(1, 2).reshape(self.S, rows * q, -1), lay["o"])
        gate, up = torch.bmm(self._norm(h, lay["ln2"]), lay["gu"]).chunk(2, -1)
        return h + torch.bmm(F.silu(gate) * up, lay["down"])

    def _embed(self, ids):                                                          # ids [S, ...]
        V = self.embed.shape[1]
        offs = (torch.arange(self.S) * V).view(-1, *([1] * (ids.dim() - 1)))
        return self.embed.reshape(self.S * V, -1)[ids + offs]

    def token_logp(self, ids, start: int):
        """Log-probs [S, N, T] of ids[:, :, start:] (ids [S, N, L], no padding)."""
        S, N, L = ids.shape
        cos, sin = self.rope(L)
        h = self._embed(ids).reshape(S, N * L, -1)
        for lay in self.layers:
            qs, ks, vs = self._qkv(lay, h, N, L, cos, sin)
            h = self._rest(lay, h, F.scaled_dot_product_attention(qs, ks, vs, is_causal=True), N, L)
        h = self._norm(h, self.final).view(S, N, L, -1)[:, :, start - 1:-1]          # [S, N, T, D]
        logits = torch.bmm(h.reshape(S, -1, h.shape[-1]), self.embed.transpose(1, 2))   # [S, N*T, V]
        logp = logits.log_softmax(-1).gather(-1, ids[:, :, start:].reshape(S, -1, 1))
        return logp.view(S, N, -1)

    def prefill(self, prompts, n: int, columns: int):
        """(next-token logits [S, P, V], per layer the key and value caches [S*P*n, H, columns, hd]
        with the prompts' keys and values, repeated n times, in their first Lp columns)."""
        S, P, Lp = prompts.shape
        cos, sin = self.rope(Lp)
        h = self._embed(prompts).reshape(S, P * Lp, -1)
        caches = []
        for lay in self.layers:
            qs, ks, vs = self._qkv(lay, h, P, Lp, cos, sin)
            h = self._rest(lay, h, F.scaled_dot_product_attention(qs, ks, vs, is_causal=True), P, Lp)
            big = [t.new_empty(S * P * n, self.heads, columns, self.hd) for t in (ks, vs)]
            for b, t in zip(big, (ks, vs)):
                b[:, :, :Lp] = t.repeat_interleave(n, 0)
            caches.append(big)
        last = self._norm(h, self.final).view(S, P, Lp, -1)[:, :, -1]                # [S, P, D]
        return torch.bmm(last, self.embed.transpose(1, 2)), caches

    @torch.no_grad()
    def decode(self, prompts, n: int, new: int, gens):
        """Tokens [S, P*n, new] sampled at temperature 1 (seed s from gens[s]) after prompts [S, P, Lp]."""
        S, P, Lp = prompts.shape
        N, C = P * n, Lp + new
        cos, sin = self.rope(C)
        logits, caches = self.prefill(prompts, n, C)
        logits = logits.repeat_interleave(n, 1)                                         # [S, N, V]
        out = torch.empty(S, N, new, dtype=torch.long)
        for t in range(new):
            probs = torch.softmax(logits, -1)
            tok = torch.stack([torch.multinomial(probs[s], 1, generator=gens[s]).squeeze(1) for s in range(S)])
            out[:, :, t] = tok
            if t == new - 1:
                break
            col = Lp + t
            h = self._embed(tok)                                                    # [S, N, D]
            for lay, (kc, vc) in zip(self.layers, caches):
                qs, ks, vs = self._qkv(lay, h, N, 1, cos[col:col + 1], sin[col:col + 1])
                kc[:, :, col:col + 1] = ks
                vc[:, :, col:col + 1] = vs
                h = self._rest(lay, h, F.scaled_dot_product_attention(qs, kc[:, :, :col + 1], vc[:, :, :col + 1]),
                               N, 1)
            logits = torch.bmm(self._norm(h, self.final), self.embed.transpose(1, 2))  # [S, N, V]
        return out


def timed(fn, reps: int) -> float:
    fn()                                                                            # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=DEFAULT["seeds"])
    ap.add_argument("--threads", type=int, default=DEFAULT["threads_per_run"])
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    b = DEFAULT["base"]
    P, G, new = b["rl"]["rollout"]["prompts_per_step"], b["rl"]["rollout"]["group_size"], \
        b["rl"]["rollout"]["max_new_tokens"]
    tok = build_char_tokenizer()
    cfg = TinyModelConfig(**b["model"]["tiny"])
    models = [tiny_model(cfg, len(tok), seed=s, pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
              for s in range(a.seeds)]
    S, V = a.seeds, len(tok)
    data = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, V, (S, P, PROMPT_LEN), generator=data)                 # one prompt set per seed
    comp = torch.randint(3, V, (S, P * G, TRAIN_COMPLETION), generator=data)
    ids = torch.cat([prompts.repeat_interleave(G, 1), comp], 2)                       # [S, N, L]
    attn = torch.ones_like(ids[0])
    shape = {"seeds": S, "prompts": P, "group": G, "max_new_tokens": new, "prompt_len": PROMPT_LEN,
             "train_completion": TRAIN_COMPLETION, "hidden": cfg.hidden_size, "layers": cfg.num_layers,
             "threads": a.threads}

    # -- train: the same numbers first, then the time ----------------------------------------------
    stacked = Stacked(models, grad=True)
    got = stacked.token_logp(ids, PROMPT_LEN).detach()
    worst = []
    for s, m in enumerate(models):
        with torch.no_grad():
            want = token_logp(m, ids[s], attn, PROMPT_LEN)
        diff, tol = float((got[s] - want).abs().max()), logp_tolerance(m, ids[s], attn)
        if diff > tol:
            raise SystemExit(f"seed {s}: stacked log-probs differ from the lone model's by {diff:.3g} > {tol:.3g}")
        worst.append((diff, tol))

    def lone_train():
        for s, m in enumerate(models):
            m.zero_grad(set_to_none=True)
            token_logp(m, ids[s], attn, PROMPT_LEN).mean().backward()

    def stacked_train():
        for p in stacked.params():
            p.grad = None
        stacked.token_logp(ids, PROMPT_LEN).mean(dim=(1, 2)).sum().backward()    # each seed's own mean

    t_lone, t_stacked = timed(lone_train, a.reps), timed(stacked_train, a.reps)
    d, t = max(worst)
    print(json.dumps({"kernel": "train", "lone_s": round(t_lone, 4), "stacked_s": round(t_stacked, 4),
                      "speedup": round(t_lone / t_stacked, 2), "max_logp_diff": d, "its_tolerance": t, **shape}))

    # -- decode ------------------------------------------------------------------------------------
    stacked = Stacked(models, grad=False)
    worst = []
    with torch.no_grad():
        h_logits = [m(input_ids=prompts[s]).logits[:, -1] for s, m in enumerate(models)]
        s_logits, _ = stacked.prefill(prompts, 1, PROMPT_LEN)
    for s, m in enumerate(models):
        diff = float((s_logits[s] - h_logits[s]).abs().max())
        tol = logit_tolerance(m, prompts[s], torch.ones_like(prompts[s]))
        if diff > tol:
            raise SystemExit(f"seed {s}: stacked next-token logits differ by {diff:.3g} > {tol:.3g}")
        worst.append((diff, tol))

    def lone_decode():
        for s, m in enumerate(models):
            g = torch.Generator().manual_seed(s)
            pick = partial(rollout._pick, greedy=False, temperature=1.0, top_p=1.0, gen=g)
            rollout._decode_direct(direct.parts(m), prompts[s], torch.ones_like(prompts[s]), G, new,
                                   tok.pad_token_id, -1, pick)                        # -1: no row ends early

    def stacked_decode():
        stacked.decode(prompts, G, new, [torch.Generator().manual_seed(s) for s in range(S)])

    with torch.no_grad():
        t_lone, t_stacked = timed(lone_decode, a.reps), timed(stacked_decode, a.reps)
    d, t = max(worst)
    print(json.dumps({"kernel": "decode", "lone_s": round(t_lone, 4), "stacked_s": round(t_stacked, 4),
                      "speedup": round(t_lone / t_stacked, 2), "max_logit_diff": d, "its_tolerance": t, **shape}))


if __name__ == "__main__":
    main()
