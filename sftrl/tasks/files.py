"""`jsonl:<path>` (GSM8K or MATH format, unchanged files) and `hf:<id>[:<config>]` (needs the hub).

GSM8K rows: {"question", "answer"} where answer ends "#### N" -> Problem.answer = N without
thousands commas, solution = the whole answer text. MATH rows: {"problem", "solution",
"answer"?}; without "answer" the last \\boxed{} of the solution is the answer. The format is
read per row from its keys. A malformed row fails with "<path>:<line>: <what> (<fix>)".
Splits: `test_file` names a second file for the test split; otherwise one row in
1/`test_fraction` goes to test by a stable hash of the question. `n` keeps the first n rows in
file order.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sftrl.tasks.base import TASKS, Problem


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start + len("\\boxed{"):i - 1].strip() if depth == 0 else None


def row_to_problem(row, where: str, pid: str) -> Problem:
    """One GSM8K or MATH row as a Problem; `where` is 'path:line' for errors."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: row is {type(row).__name__}, not a JSON object (one object per line)")
    if "question" in row or ("answer" in row and "problem" not in row):
        if not isinstance(row.get("question"), str) or not isinstance(row.get("answer"), str):
            missing = [k for k in ("question", "answer") if not isinstance(row.get(k), str)]
            raise ValueError(f"{where}: missing or non-text key(s) {missing} (GSM8K rows need "
                             f"'question' and 'answer' strings)")
        if "####" not in row["answer"]:
            raise ValueError(f"{where}: GSM8K answer has no '#### N' final line (end the answer "
                             f"with '#### <number>')")
        final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        return Problem(id=pid, prompt=row["question"], answer=final, solution=row["answer"])
    if "problem" in row:
        if not isinstance(row.get("problem"), str) or not isinstance(row.get("solution"), str):
            raise ValueError(f"{where}: MATH rows need 'problem' and 'solution' strings")
        answer = row.get("answer")
        if answer is None:
            answer = last_boxed(row["solution"])
        if answer is None or not str(answer).strip():
            raise ValueError(f"{where}: MATH row has no 'answer' and no \\boxed{{}} in its solution "
                             f"(add an 'answer' key)")
        return Problem(id=pid, prompt=row["problem"], answer=str(answer).strip(), solution=row["solution"])
    raise ValueError(f"{where}: unknown row format with keys {sorted(row)[:6]} (GSM8K needs "
                     f"question/answer, MATH needs problem/solution)")


def read_jsonl(path: str | Path) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task file {str(path)!r} not found; check the path after 'jsonl:'")
    out = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg}); each line must be one JSON object") from None
            out.append(row_to_problem(row, where, f"{path.stem}-{line_no}"))
    if not out:
        raise ValueError(f"task file {str(path)!r} has no rows; it needs one JSON object per line")
    return out


def _in_test(problem: Problem, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(problem.prompt.encode(), digest_size=8).digest(), "big")
    return (h % 10_000) < fraction * 10_000


def _split(problems: list[Problem], split: str, n: int | None, test_fraction: float) -> list[Problem]:
    chosen = [p for p in problems if _in_test(p, test_fraction) == (split == "test")]
    return chosen if n is None else chosen[:n]


def load_jsonl(*, split: str, n: int | None, seed: int, source: str | None = None,
               test_file: str | None = None, test_fraction: float = 0.1) -> list[Problem]:
    """Problems of a JSONL file (see the module docstring for formats and splits)."""
    if test_file is not None:
        problems = read_jsonl(test_file if split == "test" else source)
        return problems if n is None else problems[:n]
    if not 0 < test_fraction < 1:
        raise ValueError(f"jsonl: test_fraction={test_fraction} must be between 0 and 1")
    return _split(read_jsonl(source), split, n, test_fraction)


def _validate_jsonl(arg: str | None) -> None:
    if arg and not Path(arg).is_file():
        raise ValueError(f"task file {arg!r} not found; check the path after 'jsonl:'")


load_jsonl.validate = _validate_jsonl
TASKS.register("jsonl")(load_jsonl)


def load_hub(*, split: str, n: int | None, seed: int, source: str | None = None,
             test_split: str = "test") -> list[Problem]:
    """A hub dataset in GSM8K or MATH format through `datasets` (users with hub access)."""
    dataset_id, _, config = (source or "").partition(":")
    from sftrl.models import hub_reachable
    if not hub_reachable():
        raise ValueError(f"cannot reach the Hugging Face hub for {dataset_id!r} (offline?); "
                         f"download it as JSONL and use jsonl:<path>")
    import datasets
    ds = datasets.load_dataset(dataset_id, config or None, split=test_split if split == "test" else "train")
    rows = ds if n is None else ds.select(range(min(n, len(ds))))
    return [row_to_problem(dict(r), f"{dataset_id}[{i}]", f"{dataset_id}-{split}-{i}") for i, r in enumerate(rows)]


TASKS.register("hf")(load_hub)
