"""`jsonl:<path>` (GSM8K or MATH format, unchanged files) and `hf:<id>[:<config>]` (needs the hub).

GSM8K rows: {"question", "answer"} where answer ends "#### N" -> Problem.answer = N (the text
after the last "####", stripped, thousands commas removed), solution = the whole answer text.
MATH rows: {"problem", "solution", "answer"?}; without "answer" the content of the last
\\boxed{...} of the solution is the answer; solution = the solution text. The format is read per
row from its keys (a file may mix both). A malformed row fails with
"<path>:<line>: <what is wrong> (<how to fix>)". Blank lines are skipped.

Splits: `test_file` names a second file for the test split; otherwise a stable hash of the
question puts a `test_fraction` of the rows in test (the same question always lands on the same
side, duplicates included). `n` keeps the first n rows of the split in file order (no shuffle;
the data seed is unused). Relative paths resolve against the working directory.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sftrl.data.tasks.base import TASKS, Problem

GSM8K_KEYS, MATH_KEYS = ("question", "answer"), ("problem", "solution")


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...} with balanced braces, stripped; None if there is none."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    while i < len(text) and depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start + len("\\boxed{"):i - 1].strip() if depth == 0 else None


def _need_strings(row: dict, keys: tuple[str, ...], fmt: str, where: str) -> None:
    fix = f"{fmt} rows need {' and '.join(repr(k) for k in keys)} as strings"
    for key in keys:
        if key not in row:
            raise ValueError(f"{where}: {fmt} row has no {key!r} key ({fix})")
        if not isinstance(row[key], str):
            raise ValueError(f"{where}: {fmt} row's {key!r} is {type(row[key]).__name__}, not text ({fix})")


def _gsm8k(row: dict, where: str, pid: str) -> Problem:
    _need_strings(row, GSM8K_KEYS, "GSM8K", where)
    if "####" not in row["answer"]:
        raise ValueError(f"{where}: GSM8K answer has no '#### N' final line (end the answer "
                         f"with '#### <number>')")
    final = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
    if not final:
        raise ValueError(f"{where}: GSM8K answer has nothing after its last '####' (write the "
                         f"final answer after it: '#### <number>')")
    return Problem(id=pid, prompt=row["question"], answer=final, solution=row["answer"])


def _math(row: dict, where: str, pid: str) -> Problem:
    _need_strings(row, MATH_KEYS, "MATH", where)
    answer = row.get("answer")
    if answer is None:
        answer = last_boxed(row["solution"])
        if answer is None:
            raise ValueError(f"{where}: MATH row has no 'answer' and no \\boxed{{}} in its solution "
                             f"(add an 'answer' key)")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool) or not str(answer).strip():
        raise ValueError(f"{where}: MATH row's answer {answer!r} is empty or not a value (give "
                         f"'answer' as text or a number, or a non-empty \\boxed{{}})")
    return Problem(id=pid, prompt=row["problem"], answer=str(answer).strip(), solution=row["solution"])


def row_to_problem(row, where: str, pid: str) -> Problem:
    """One GSM8K or MATH row as a Problem; `where` is 'path:line' for errors."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: row is {type(row).__name__}, not a JSON object (write one "
                         f"object per line)")
    if "question" in row or ("answer" in row and "problem" not in row):
        return _gsm8k(row, where, pid)
    if "problem" in row:
        return _math(row, where, pid)
    raise ValueError(f"{where}: unknown row format with keys {sorted(row)[:6]} (GSM8K needs "
                     f"question/answer, MATH needs problem/solution)")


def read_jsonl(path: str | Path, what: str = "the path after 'jsonl:'") -> list[Problem]:
    """Every row of a JSONL file as a Problem with id '<file stem>-<line>'; `what` names the
    setting to fix when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"task file {str(path)!r} not found; check {what}")
    out = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON: {e.msg} at column {e.colno} (write one "
                                 f"JSON object per line)") from None
            out.append(row_to_problem(row, where, f"{path.stem}-{line_no}"))
    if not out:
        raise ValueError(f"task file {str(path)!r} has no rows; it needs one JSON object per line")
    return out


def _in_test(problem: Problem, fraction: float) -> bool:
    h = int.from_bytes(hashlib.blake2b(problem.prompt.encode(), digest_size=8).digest(), "big")
    return (h % 10_000) < fraction * 10_000


def load_jsonl(*, split: str, n: int | None, seed: int, source: str | None = None,
               test_file: str | None = None, test_fraction: float = 0.1) -> list[Problem]:
    """Problems of a JSONL file (see the module docstring for formats and splits)."""
    if split not in ("train", "test"):
        raise ValueError(f"jsonl: split must be 'train' or 'test', got {split!r}")
    if test_file is not None:
        problems = read_jsonl(test_file, "task.kwargs.test_file") if split == "test" else read_jsonl(source)
    else:
        if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
                or not 0 < test_fraction < 1:
            raise ValueError(f"jsonl: test_fraction={test_fraction!r} must be a number between 0 "
                             f"and 1 (or give test_file)")
        problems = [p for p in read_jsonl(source) if _in_test(p, test_fraction) == (split == "test")]
    return problems if n is None else problems[:n]


def _validate_jsonl(arg: str | None) -> None:
    if arg and not Path(arg).is_file():
        raise ValueError(f"task file {arg!r} not found; check the path after 'jsonl:'")


load_jsonl.validate = _validate_jsonl
TASKS.register("jsonl")(load_jsonl)


def load_hub(*, split: str, n: int | None, seed: int, source: str | None = None,
             test_split: str = "test") -> list[Problem]:
    """A hub dataset in GSM8K or MATH format through `datasets` (users with hub access): the
    hub's 'train' split, or `test_split` for the test split; `n` keeps the first n rows.
    Fails in seconds when the hub is unreachable (offline switches, or no TCP answer)."""
    dataset_id, _, config = (source or "").partition(":")
    from sftrl.lm.models import hub_reachable
    if not hub_reachable():
        raise ValueError(f"cannot reach the Hugging Face hub for {dataset_id!r} (offline?); "
                         f"download it as JSONL and use jsonl:<path>")
    import datasets
    ds = datasets.load_dataset(dataset_id, config or None, split=test_split if split == "test" else "train")
    rows = ds if n is None else ds.select(range(min(n, len(ds))))
    return [row_to_problem(dict(r), f"{dataset_id}[{i}]", f"{dataset_id}-{split}-{i}")
            for i, r in enumerate(rows)]


TASKS.register("hf")(load_hub)
