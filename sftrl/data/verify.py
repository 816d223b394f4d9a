"""Answer extraction, equivalence and the reward registry.

Owns: strict extraction (`#### N`, `\\boxed{...}`), flexible extraction (last number), numeric
equivalence on exact rationals and LaTeX equivalence through math-verify. The reward functions
built on them are `sftrl.data.rewards`.

Nothing here evaluates model output as code. Numbers are parsed into `fractions.Fraction` by
hand; anything else goes to math-verify's parser in a separate worker process. Why a process:
math-verify bounds its own time with signals, which only work on the main thread — rewards
computed in worker threads then fail or never time out (TRL and verl shipped silent all-zero
rewards this way). Here its signal timeouts are disabled and the parent enforces the bound by
killing the worker, which works from any thread.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from sftrl.data.verify_worker import MAX_CHARS, symbolic_equal

TAIL = 4000
"""Flexible extraction only looks at the last TAIL characters: the answer is at the end, and a
100 kB output must not cost a regex pass over all of it."""
MAX_DIGITS = 400
"""Longer digit strings are compared as text, never turned into integers."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_NUMBER_CHAR = re.compile(r"[\d,./-]")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_FRAC = re.compile(r"^(-)?\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_PLAIN = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d*)?$")


def _closing_braces(text: str) -> dict[int, int]:
    """Index of each '{' that is closed -> index of its '}', in one pass (stray '}' ignored)."""
    close, open_at = {}, []
    for m in _BRACE.finditer(text):
        if m.group() == "{":
            open_at.append(m.start())
        elif open_at:
            close[open_at.pop()] = m.start()
    return close


def _last_boxed(text: str) -> tuple[int, str | None]:
    """(start index, content) of the last \\boxed{...} / \\fbox{...} with balanced braces.

    One brace-matching pass, not a scan per marker: 20,000 unclosed '\\boxed{' must not cost
    20,000 scans of the text."""
    marks = list(_BOXED.finditer(text))
    if not marks:
        return -1, None
    close = _closing_braces(text[marks[0].end() - 1:])
    base = marks[0].end() - 1
    for m in reversed(marks):
        end = close.get(m.end() - 1 - base)
        if end is not None:
            return m.start(), text[m.end():base + end].strip()
    return -1, None


def extract_strict(text: str | None) -> str | None:
    """The answer after the last '#### ' or in the last \\boxed{}; the later one wins."""
    if not text:
        return None
    hash_at = text.rfind("####")
    hashed = None
    if hash_at >= 0:
        line = text[hash_at + 4:].split("\n", 1)[0].strip().rstrip(".").strip()
        hashed = line or None
    box_at, boxed = _last_boxed(text) if "box" in text else (-1, None)
    if boxed is not None and box_at > hash_at:
        return boxed
    return hashed if hashed is not None else boxed


def extract_flexible(text: str | None) -> str | None:
    """Strict if present, else the last number in the text."""
    strict = extract_strict(text)
    if strict is not None or not text:
        return strict
    start = max(0, len(text.rstrip()) - TAIL)          # trailing whitespace must not move the window
    while start > 0 and _NUMBER_CHAR.match(text, start - 1):     # never cut a number in two
        start -= 1
    found = _NUMBER.findall(text, start)
    return found[-1].rstrip(",") if found else None


def extract(text: str | None, mode: str = "strict") -> str | None:
    if mode not in ("strict", "flexible"):
        raise ValueError(f"extraction mode {mode!r}: use 'strict' or 'flexible'")
    return extract_strict(text) if mode == "strict" else extract_flexible(text)


def to_number(s: str | None) -> Fraction | None:
    """Exact value of a plain number ('1,234', '-5', '3.50', '1/2', '\\frac{1}{2}', '$5$'), else None.

    Unicode decimal digits count as digits ('١٢' is 12, as a reader sees it); superscripts do not;
    invisible characters (NUL, zero-width spaces and joiners, BOM) are ignored."""
    if s is None:
        return None
    if not s.isprintable():
        s = "".join(ch for ch in s if ch.isprintable() or ch.isspace())
    t = s.strip().strip("$").strip()
    t = t.removeprefix("\\(").removesuffix("\\)").strip().rstrip(".")
    t = t.replace("\\!", "").replace("{,}", ",").replace(" ", "")
    if len(t) > MAX_DIGITS or not t:
        return None
    m = _FRAC.match(t)
    if m:
        num, den = int(m.group(2)), int(m.group(3))
        return None if den == 0 else Fraction(-num if m.group(1) else num, den)
    if "/" in t:
        a, _, b = t.partition("/")
        fa, fb = to_number(a), to_number(b)
        return None if fa is None or fb in (None, 0) else fa / fb
    if not _PLAIN.match(t) or not any(c.isdigit() for c in t):
        return None
    return Fraction(t.replace(",", ""))


@functools.lru_cache(maxsize=65536)
def _equiv_cached(pred: str, gold: str, timeout: float) -> bool:
    a, b = to_number(pred), to_number(gold)
    if a is not None and b is not None:
        return a == b
    if pred.strip() == gold.strip():
        return True
    if a is not None or b is not None:
        if not any(ch in pred + gold for ch in "\\{}^"):   # a number against plain non-number text
            return False
    return symbolic_equal(pred, gold, timeout=timeout)


def is_equiv(pred: str | None, gold: str, *, timeout: float = 2.0) -> bool:
    """Exact numeric equality, else math-verify equivalence within `timeout` seconds."""
    if pred is None or gold is None:
        return False
    if len(pred) > MAX_CHARS or len(gold) > MAX_CHARS:     # never symbolic: not worth a cache slot
        return _equiv_cached.__wrapped__(pred, gold, timeout)
    return _equiv_cached(pred, gold, timeout)


def is_correct(text: str | None, gold: str, mode: str = "strict", *, timeout: float = 2.0) -> bool:
    """Whether the answer extracted from `text` in `mode` is equivalent to `gold`."""
    return is_equiv(extract(text, mode), gold, timeout=timeout)


def score_batch(completions: list[str], answers: list[str], mode: str = "strict", *,
                timeout: float = 2.0) -> list[bool]:
    """`is_correct` of each completion against its answer (the lists pair up one to one)."""
    if len(completions) != len(answers):
        raise ValueError(f"score_batch: {len(completions)} completions but {len(answers)} answers; "
                         f"pass one answer per completion")
    return [is_correct(c, a, mode, timeout=timeout) for c, a in zip(completions, answers)]
