"""`arith`: generated multi-step integer arithmetic with worked solutions ending in `#### N`.

Knobs (task.kwargs): `min_ops`, `max_ops` (binary operations per problem), `min_operand`,
`max_operand` (non-negative integer operands), `operators` (a subset of "+-*").

Default difficulty: 2-3 operations over operands 0..20 with `+-*`. Calibrated against the tiny
model in docs/LOG.md (2026-11-23): 1000 SFT steps reach ~37% greedy accuracy, clearly above zero
and far from saturated, with pass@8 well above greedy (room for RL). Harder levels for
out-of-distribution tests are just other knob values, e.g. `{min_ops: 4, max_ops: 4}`,
`{max_ops: 5, max_operand: 50}`; easier ones e.g. `{min_ops: 1, max_ops: 1, operators: "+-"}`.

Prompt: the expression and "=", no spaces ("12+7*3-4="): the tiny model's character tokenizer
pays for every character. Solution: each operation in evaluation order (leftmost `*` first,
then `+`/`-` left to right) as "a op b=c", joined by ", ", then " #### N":
"7*3=21, 12+21=33, 33-4=29 #### 29"; negative intermediates are written plainly ("3-12=-9").

Splits are disjoint by construction: a stable hash of the expression puts it in the test bucket
(1 in 10) or the train buckets, so no expression can appear in both, whatever the sizes, seeds
or knobs (an out-of-distribution test set never contains a training expression of any level).
Sampling draws the number of operations uniformly, then operands and operators uniformly, from
a numpy Generator seeded by the data seed and the knobs; duplicates are redrawn.
"""

from __future__ import annotations

import hashlib
import inspect
import re

import numpy as np

from sftrl.data.tasks.base import TASKS, Problem

TEST_BUCKETS = 10
"""One expression in TEST_BUCKETS lands in the test split."""
ENUMERATE_UP_TO = 200_000
"""Spaces at most this large are counted exactly per split before sampling (fails at once)."""
_TOKEN = re.compile(r"(\d+)([+\-*]|$)")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _solve(numbers: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Steps and value of numbers[0] ops[0] numbers[1] ... with standard precedence."""
    nums, rest = list(numbers), list(ops)
    steps = []
    for level in ("*", "+-"):
        i = 0
        while i < len(rest):
            if rest[i] in level:
                value = _apply(nums[i], rest[i], nums[i + 1])
                steps.append(f"{nums[i]}{rest[i]}{nums[i + 1]}={value}")
                nums[i:i + 2] = [value]
                del rest[i]
            else:
                i += 1
    return steps, nums[0]


def parse(expression: str) -> tuple[list[int], list[str]]:
    """'12+7*3' -> ([12, 7, 3], ['+', '*']); non-negative integers joined by + - * only."""
    parts = _TOKEN.findall(expression)
    if not expression or "".join(a + o for a, o in parts) != expression or parts[-1][1]:
        raise ValueError(f"arith: cannot parse {expression!r}; expected non-negative integers "
                         f"joined by + - * without spaces, e.g. '12+7*3-4'")
    return [int(a) for a, _ in parts], [o for _, o in parts[:-1]]


def solve(expression: str) -> tuple[list[str], int]:
    """Worked steps ("a op b=c", evaluation order) and value of `expression` (no trailing "=")."""
    return _solve(*parse(expression))


def _bucket(expression: str) -> int:
    return int.from_bytes(hashlib.blake2b(expression.encode(), digest_size=8).digest(), "big") % TEST_BUCKETS


def _check(min_ops, max_ops, min_operand, max_operand, operators) -> None:
    for name, v in [("min_ops", min_ops), ("max_ops", max_ops), ("min_operand", min_operand),
                    ("max_operand", max_operand)]:
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"arith: {name}={v!r} must be an integer")
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"arith: need 1 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}")
    if not 0 <= min_operand <= max_operand:
        raise ValueError(f"arith: need 0 <= min_operand <= max_operand, got {min_operand}..{max_operand}")
    if not isinstance(operators, str) or not operators or set(operators) - set("+-*"):
        raise ValueError(f"arith: operators={operators!r} must be a non-empty subset of '+-*'")


def _expressions(k: int, operands: range, operators: str):
    """Every expression with k operations, for exact counting of small spaces."""
    for numbers in np.ndindex(*([len(operands)] * (k + 1))):
        for ops in np.ndindex(*([len(operators)] * k)):
            yield "".join(f"{operands[a]}{operators[o]}" for a, o in zip(numbers, ops)) + \
                str(operands[numbers[-1]])


def _check_capacity(n: int, split: str, min_ops: int, max_ops: int, operands: range, operators: str) -> None:
    """Fail at once when the knobs cannot yield `n` distinct problems of `split`."""
    ops_set = "".join(sorted(set(operators)))       # "++" would not add distinct expressions
    total = sum(len(operands) ** (k + 1) * len(ops_set) ** k for k in range(min_ops, max_ops + 1))
    if total > ENUMERATE_UP_TO:
        if n <= total:
            return
        have = f"at most {total} distinct expressions in both splits together"
    else:
        want_test = split == "test"
        have = sum((_bucket(e) == 0) == want_test for k in range(min_ops, max_ops + 1)
                   for e in _expressions(k, operands, ops_set))
        if n <= have:
            return
        have = f"only {have} distinct {split} expressions"
    raise ValueError(f"arith: {n} {split} problems asked but these knobs allow {have}; widen "
                     f"max_operand or max_ops, or ask for fewer")


def _problem(numbers: list[int], ops: list[str], expression: str) -> Problem:
    steps, value = _solve(numbers, ops)
    digest = hashlib.blake2b(expression.encode(), digest_size=6).hexdigest()
    return Problem(id=f"arith-{digest}", prompt=f"{expression}=", answer=str(value),
                   solution=f"{', '.join(steps)} #### {value}", meta={"ops": len(ops)})


def generate(*, split: str, n: int | None, seed: int, min_ops: int = 2, max_ops: int = 3,
             min_operand: int = 0, max_operand: int = 20, operators: str = "+-*",
             source: str | None = None) -> list[Problem]:
    """`n` distinct problems of `split` ('train' or 'test'), deterministic in `seed` and the knobs."""
    _check(min_ops, max_ops, min_operand, max_operand, operators)
    if split not in ("train", "test"):
        raise ValueError(f"arith: split must be 'train' or 'test', got {split!r}")
    if n is None:
        raise ValueError("arith: a generator has no 'all problems'; set task.train_size and "
                         "task.test_size to numbers")
    _check_capacity(n, split, min_ops, max_ops, range(min_operand, max_operand + 1), operators)
    rng = np.random.default_rng([seed, min_ops, max_ops, min_operand, max_operand])
    ops_pool = list(operators)
    want_test = split == "test"
    seen: set[str] = set()
    out: list[Problem] = []
    tries, limit = 0, 200 * n + 10_000               # safety net when n nearly exhausts the space
    while len(out) < n:
        tries += 1
        if tries > limit:
            raise ValueError(f"arith: could only make {len(out)} distinct {split} problems of the "
                             f"{n} asked; widen the knobs (operand range, ops) or ask for fewer")
        k = int(rng.integers(min_ops, max_ops + 1))
        numbers = [int(x) for x in rng.integers(min_operand, max_operand + 1, size=k + 1)]
        ops = [ops_pool[int(i)] for i in rng.integers(0, len(ops_pool), size=k)]
        expression = "".join(f"{a}{o}" for a, o in zip(numbers, ops)) + str(numbers[-1])
        if expression in seen or (_bucket(expression) == 0) != want_test:
            continue
        seen.add(expression)
        out.append(_problem(numbers, ops, expression))
    return out


def _check_knobs(source: str | None, kwargs: dict) -> None:
    """Config-time check of knob values (their names are checked against `generate`'s signature)."""
    knobs = {k: p.default for k, p in inspect.signature(generate).parameters.items()
             if k in ("min_ops", "max_ops", "min_operand", "max_operand", "operators")}
    _check(**{**knobs, **{k: v for k, v in kwargs.items() if k in knobs}})


generate.check_kwargs = _check_knobs
TASKS.register("arith")(generate)
