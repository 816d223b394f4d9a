"""`arith`: generated multi-step integer arithmetic with worked solutions ending in `#### N`.

Knobs (task.kwargs): `min_ops`, `max_ops` (binary operations per problem), `min_operand`,
`max_operand`, `operators` (a subset of "+-*"). The default, 2-3 operations over 0..20 with
+-*, is sized so the tiny model reaches a clearly non-zero but unsaturated accuracy after a few
minutes of SFT on 2 cores; harder levels for out-of-distribution tests are other knob values
(e.g. `min_ops: 4, max_ops: 4` or `max_operand: 50`).

Prompt: the expression and "=" ("12+7*3-4="). Solution: each operation in evaluation order
(leftmost `*` first, then `+`/`-` left to right) as "a op b=c", joined by ", ", then " #### N":
"7*3=21, 12+21=33, 33-4=29 #### 29".

Splits are disjoint by construction: a stable hash of the expression puts it in the test bucket
(1 in 10) or the train buckets, so no expression can appear in both, whatever the sizes.
"""

from __future__ import annotations

import hashlib

import numpy as np

from sftrl.tasks.base import TASKS, Problem

TEST_BUCKETS = 10
"""One expression in TEST_BUCKETS lands in the test split."""


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def solve(numbers: list[int], ops: list[str]) -> tuple[list[str], int]:
    """Worked steps and value of numbers[0] ops[0] numbers[1] ... with standard precedence."""
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


def _bucket(expression: str) -> int:
    return int.from_bytes(hashlib.blake2b(expression.encode(), digest_size=8).digest(), "big") % TEST_BUCKETS


def _check(min_ops, max_ops, min_operand, max_operand, operators) -> None:
    if not 1 <= min_ops <= max_ops:
        raise ValueError(f"arith: need 1 <= min_ops <= max_ops, got min_ops={min_ops}, max_ops={max_ops}")
    if not 0 <= min_operand <= max_operand:
        raise ValueError(f"arith: need 0 <= min_operand <= max_operand, got {min_operand}..{max_operand}")
    if not operators or set(operators) - set("+-*"):
        raise ValueError(f"arith: operators={operators!r} must be a non-empty subset of '+-*'")


def generate(*, split: str, n: int | None, seed: int, min_ops: int = 2, max_ops: int = 3,
             min_operand: int = 0, max_operand: int = 20, operators: str = "+-*",
             source: str | None = None) -> list[Problem]:
    """`n` distinct problems of `split` ('train' or 'test'), deterministic in `seed`."""
    _check(min_ops, max_ops, min_operand, max_operand, operators)
    if split not in ("train", "test"):
        raise ValueError(f"arith: split must be 'train' or 'test', got {split!r}")
    n = 1000 if n is None else n
    rng = np.random.default_rng([seed, min_ops, max_ops, min_operand, max_operand])
    ops_pool = list(operators)
    want_test = split == "test"
    seen: set[str] = set()
    out: list[Problem] = []
    tries, limit = 0, 200 * n + 10_000
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
        steps, value = solve(numbers, ops)
        digest = hashlib.blake2b(expression.encode(), digest_size=6).hexdigest()
        out.append(Problem(id=f"arith-{digest}", prompt=f"{expression}=", answer=str(value),
                           solution=f"{', '.join(steps)} #### {value}", meta={"ops": k}))
    return out


TASKS.register("arith")(generate)
