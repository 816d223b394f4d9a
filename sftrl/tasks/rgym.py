"""`reasoning_gym:<dataset>`: problems from the reasoning-gym package, generated offline.

Demonstrations: `gsm_symbolic` carries a worked chain of thought (`metadata.answer_cot`), used
as the solution with a final "#### N" line appended; `basic_arithmetic` and `chain_sum` have no
worked solution, so their demonstration is the bare "#### N" (the Problem's solution is None and
`completion_target` supplies it). Other datasets: `answer_cot` when present, else None.

Splits: train and test come from different seeds derived from the data seed, and a stable hash
of the question text keeps the two disjoint (one question in 10 may only be a test question).
Extra task kwargs go to `reasoning_gym.create_dataset` (e.g. difficulty knobs).
"""

from __future__ import annotations

import hashlib

from sftrl.registry import did_you_mean
from sftrl.tasks.base import TASKS, Problem


def _names() -> list[str]:
    import reasoning_gym
    return sorted(reasoning_gym.factory.DATASETS)


def _validate(name: str | None) -> None:
    if name not in _names():
        raise ValueError(f"unknown reasoning_gym dataset {name!r}; {did_you_mean(name, _names())}")


def _is_test(question: str) -> bool:
    return int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 10 == 0


def _solution(entry: dict) -> str | None:
    cot = (entry.get("metadata") or {}).get("answer_cot")
    if not cot:
        return None
    return f"{cot.rstrip()}\n#### {entry['answer']}"


def load_rgym(*, split: str, n: int | None, seed: int, source: str | None = None, **kwargs) -> list[Problem]:
    """`n` problems of reasoning-gym dataset `source` for `split`, disjoint across splits."""
    import reasoning_gym
    _validate(source)
    n = 1000 if n is None else n
    want_test = split == "test"
    out, seen, attempt = [], set(), 0
    while len(out) < n and attempt < 20:
        size = 12 * (n - len(out)) if want_test else 2 * (n - len(out)) + 16
        try:
            ds = reasoning_gym.create_dataset(source, size=size, seed=seed * 1000 + 2 * attempt + want_test,
                                              **kwargs)
        except TypeError as e:
            raise ValueError(f"reasoning_gym:{source}: bad task.kwargs {sorted(kwargs)} ({e})") from None
        for i, entry in enumerate(ds):
            q = entry["question"]
            if q in seen or _is_test(q) != want_test:
                continue
            seen.add(q)
            out.append(Problem(id=f"{source}-{split}-{hashlib.blake2b(q.encode(), digest_size=6).hexdigest()}",
                               prompt=q, answer=str(entry["answer"]), solution=_solution(entry),
                               meta={"source_dataset": source}))
            if len(out) == n:
                break
        attempt += 1
    if len(out) < n:
        raise ValueError(f"reasoning_gym:{source}: could only make {len(out)} distinct {split} "
                         f"problems of {n}; ask for fewer or change its difficulty kwargs")
    return out


load_rgym.validate = _validate
TASKS.register("reasoning_gym")(load_rgym)
