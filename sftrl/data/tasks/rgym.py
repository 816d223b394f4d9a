"""`reasoning_gym:<dataset>`: problems from the reasoning-gym package, generated offline.

Problem.prompt is the entry's "question", Problem.answer its "answer" as a string.
Demonstrations, for the three arithmetic datasets we use:
- `gsm_symbolic` (GSM8K-style word problems) carries a worked chain of thought in
  `metadata.answer_cot`, ending "#### N" (sometimes "#### 36.0" for answer "36"); the solution is
  that text with its final line rewritten to "#### <answer>" so it matches Problem.answer exactly.
- `basic_arithmetic` and `chain_sum` give only `metadata.expression` and the value, no worked
  steps: the solution is None, so the SFT target is the bare "#### <answer>"
  (`tasks.prompts.completion_target`).
Other datasets: `metadata.answer_cot` when present (only gsm_symbolic has one in reasoning-gym
0.1.25), else None.

Splits: train and test come from different seeds derived from the data seed, and a stable hash
of the question text keeps the two disjoint (one question in 10 may only be a test question),
so each split is deterministic on its own however the other was asked for. Extra task kwargs go
to `reasoning_gym.create_dataset` (e.g. chain_sum's `min_terms`, `max_digits`); unknown or
invalid ones fail with a one-line error. reasoning_gym is imported only when used (~1 s).
"""

from __future__ import annotations

import dataclasses
import hashlib

from sftrl.registry import did_you_mean
from sftrl.data.tasks.base import TASKS, Problem

TEST_BUCKETS = 10
"""One question in TEST_BUCKETS (by hash) may only appear in the test split."""
MAX_ROUNDS = 20
"""Dataset draws (fresh seeds) before giving up on finding `n` distinct questions."""


def _names() -> list[str]:
    import reasoning_gym
    return sorted(reasoning_gym.factory.DATASETS)


def _validate(name: str | None) -> None:
    names = _names()
    if name not in names:
        raise ValueError(f"unknown reasoning_gym dataset {name!r}; {did_you_mean(name, names)}")


def _is_test(question: str) -> bool:
    digest = hashlib.blake2b(question.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % TEST_BUCKETS == 0


def _solution(entry: dict) -> str | None:
    cot = (entry.get("metadata") or {}).get("answer_cot")
    if not cot:
        return None
    lines = cot.rstrip().splitlines()
    if lines and lines[-1].lstrip().startswith("####"):      # the source's own marker, maybe "36.0"
        lines = lines[:-1]
    return "\n".join(lines + [f"#### {entry['answer']}"])


def _check_kwargs(source: str, kwargs: dict) -> None:
    import reasoning_gym
    fields = [f.name for f in dataclasses.fields(reasoning_gym.factory.DATASETS[source][1])]
    for key in kwargs:
        if key == "size":                                   # 'seed' cannot get here: it is ours
            raise ValueError(f"reasoning_gym:{source}: set the size through task.train_size and "
                             f"task.test_size, not task.kwargs")
        if key not in fields:
            raise ValueError(f"reasoning_gym:{source}: unknown task.kwargs key {key!r}; "
                             f"{did_you_mean(key, [f for f in fields if f not in ('size', 'seed')])}")


def _dataset(source: str, size: int, seed: int, kwargs: dict):
    import reasoning_gym
    try:
        return reasoning_gym.create_dataset(source, size=size, seed=seed, **kwargs)
    except (TypeError, ValueError, AssertionError) as e:    # the dataset config's own checks
        raise ValueError(f"reasoning_gym:{source}: bad task.kwargs {kwargs} ({e})") from None


def _problem(source: str, split: str, entry: dict) -> Problem:
    q = entry["question"]
    return Problem(id=f"{source}-{split}-{hashlib.blake2b(q.encode(), digest_size=6).hexdigest()}",
                   prompt=q, answer=str(entry["answer"]), solution=_solution(entry),
                   meta={"source_dataset": source})


def load_rgym(*, split: str, n: int | None, seed: int, source: str | None = None, **kwargs) -> list[Problem]:
    """`n` distinct problems of reasoning-gym dataset `source` for `split`, disjoint across splits."""
    _validate(source)
    if split not in ("train", "test"):
        raise ValueError(f"reasoning_gym: split must be 'train' or 'test', got {split!r}")
    if n is None:
        raise ValueError(f"reasoning_gym:{source} is a generator with no 'all problems'; set "
                         f"task.train_size and task.test_size to numbers")
    _check_kwargs(source, kwargs)
    want_test = split == "test"
    out, seen = [], set()
    for attempt in range(MAX_ROUNDS):
        # ~1 in TEST_BUCKETS questions is a test question: draw enough for the rest in one round
        missing = n - len(out)
        size = (TEST_BUCKETS + 2) * missing if want_test else 2 * missing + 16
        # train seeds even, test seeds odd: the two splits never share a draw
        for entry in _dataset(source, size, seed * 1000 + 2 * attempt + want_test, kwargs):
            q = entry["question"]
            if q in seen or _is_test(q) != want_test:
                continue
            seen.add(q)
            out.append(_problem(source, split, entry))
            if len(out) == n:
                return out
    raise ValueError(f"reasoning_gym:{source}: could only make {len(out)} distinct {split} "
                     f"problems of {n}; ask for fewer or change its difficulty kwargs")


load_rgym.validate = _validate
load_rgym.check_kwargs = _check_kwargs             # task.kwargs names, at config time too
TASKS.register("reasoning_gym")(load_rgym)
