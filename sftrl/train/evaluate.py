"""Evaluation: greedy pass@1 (strict and flexible extraction), sampled pass@k and maj@k, per task.

Owns: `evaluate` (metrics + per-problem answer records) and the small pure helpers behind it.
The evaluation harness is fixed by `EvalConfig` so methods are compared under one protocol
(ALGORITHMS.md 11.4 rule 7). Strict and flexible accuracies are both reported: their gap is
formatting failure, not arithmetic failure.
"""

from __future__ import annotations

from collections import Counter

import torch

from sftrl.data import verify
from sftrl.lm import rollout


def majority(answers: list[str | None]) -> str | None:
    """The most frequent extracted answer (first seen wins ties); None when nothing was extracted."""
    seen = [a for a in answers if a is not None]
    if not seen:
        return None
    counts = Counter(seen)
    best = max(counts.values())
    return next(a for a in seen if counts[a] == best)


def _batched(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _generate(model, tokenizer, prompts, *, n, greedy, ecfg, gen) -> tuple[list[str], list[int]]:
    texts, lengths = [], []
    for chunk in _batched(prompts, max(1, ecfg.batch_size // n)):
        ro = rollout.sample(model, tokenizer, chunk, n=n, max_new_tokens=ecfg.max_new_tokens,
                            temperature=ecfg.temperature, top_p=ecfg.top_p, greedy=greedy, gen=gen)
        texts.extend(ro.texts)
        lengths.extend(int(x) for x in ro.lengths.tolist())
    return texts, lengths


def evaluate(model, tokenizer, problems, prompts: list[str], *, key: str, ecfg,
             gen: torch.Generator) -> tuple[dict[str, float], list[dict]]:
    """Metrics `eval/<key>/...` and one record per problem (greedy and sampled answers)."""
    m: dict[str, float] = {f"eval/{key}/n": float(len(problems))}
    records = [{"task": key, "problem_id": p.id, "prompt": p.prompt, "gold": p.answer} for p in problems]
    if ecfg.greedy:
        texts, lengths = _generate(model, tokenizer, prompts, n=1, greedy=True, ecfg=ecfg, gen=gen)
        strict = [verify.extract(t, "strict") for t in texts]
        correct_s = [verify.is_equiv(a, p.answer) for a, p in zip(strict, problems)]
        correct_f = [verify.is_correct(t, p.answer, "flexible") for t, p in zip(texts, problems)]
        m[f"eval/{key}/acc_strict"] = sum(correct_s) / len(problems)
        m[f"eval/{key}/acc_flexible"] = sum(correct_f) / len(problems)
        m[f"eval/{key}/len_mean"] = sum(lengths) / len(lengths)
        for r, t, a, c, n in zip(records, texts, strict, correct_s, lengths):
            r.update(greedy=t, greedy_answer=a, greedy_correct=c, greedy_len=n)
    if ecfg.k > 0:
        k, P = ecfg.k, min(len(problems), ecfg.k_n or len(problems))
        texts, lengths = _generate(model, tokenizer, prompts[:P], n=k, greedy=False, ecfg=ecfg, gen=gen)
        pass_k = maj_k = hits = distinct = share = 0.0
        for i, (r, p) in enumerate(zip(records[:P], problems[:P])):
            answers = [verify.extract(t, "strict") for t in texts[i * k:(i + 1) * k]]
            ok = [verify.is_equiv(a, p.answer) for a in answers]
            maj = majority(answers)
            pass_k += any(ok)
            hits += sum(ok)
            maj_k += maj is not None and verify.is_equiv(maj, p.answer)
            counts = Counter(answers)
            distinct += len(counts)
            share += max(counts.values()) / k
            r.update(sampled_answers=answers, sampled_correct=ok, sampled_len=lengths[i * k:(i + 1) * k])
        m[f"eval/{key}/k_n"] = float(P)
        m[f"eval/{key}/pass@{k}"] = pass_k / P
        m[f"eval/{key}/maj@{k}"] = maj_k / P
        m[f"eval/{key}/pass@1_sampled"] = hits / (P * k)
        m[f"eval/{key}/distinct_answers"] = distinct / P
        m[f"eval/{key}/majority_share"] = share / P
    return m, records
