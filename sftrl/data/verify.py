"""Answer extraction, equivalence and the reward registry.

Owns: strict extraction (`#### N`, `\\boxed{...}`), flexible extraction (last number), the
clean-up of an extracted answer (`clean_answer`), and equivalence: `is_equiv` is math-verify's
verdict, with exact fast paths only where they provably return that verdict. The reward functions
built on them are `sftrl.data.rewards`.

Model output is cleaned at extraction, not at comparison: the extracted answer loses invisible
characters and has its Unicode decimal digits written as ASCII ones, so a correct answer wrapped
in zero-width characters or written in Arabic-Indic digits still counts; `is_equiv` on raw strings
is strict math-verify.

Nothing here evaluates model output as code. The fast paths parse numbers into
`fractions.Fraction` by hand; anything else goes to math-verify's parser in a separate worker
process. Why a process:
math-verify bounds its own time with signals, which only work on the main thread — rewards
computed in worker threads then fail or never time out (TRL and verl shipped silent all-zero
rewards this way). Here its signal timeouts are disabled and the parent enforces the bound by
killing the worker, which works from any thread.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from fractions import Fraction

from sftrl.data.verify_worker import MAX_CHARS, symbolic_equal

TAIL = 4000
"""Flexible extraction only looks at the last TAIL characters: the answer is at the end, and a
100 kB output must not cost a regex pass over all of it."""
MAX_DIGITS = 400
"""Longer strings are never turned into integers here (math-verify decides them)."""

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_NUMBER_CHAR = re.compile(r"[\d,./-]")
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"[{}]")
_FRAC = re.compile(r"^(-)?\\[dt]?frac\{(-?\d+)\}\{(-?\d+)\}$")
_PLAIN = re.compile(r"^[+-]?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d*)?$")


def clean_answer(s: str) -> str:
    """`s` without invisible or control characters (whitespace stays), Unicode decimal digits
    as ASCII digits ('١٢' is '12', as a reader sees it; superscripts are not decimal digits).

    Applied to every extracted answer: models emit NUL, zero-width spaces and BOMs around
    answers, and math-verify reads none of those, nor any digits but ASCII ones."""
    if s.isascii() and s.isprintable():
        return s
    return "".join(str(unicodedata.decimal(ch)) if ch.isdecimal() else ch
                   for ch in s if ch.isprintable() or ch.isspace())


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
    """The answer after the last '#### ' or in the last \\boxed{}, the later one winning, cleaned
    by `clean_answer`."""
    if not text:
        return None
    hash_at = text.rfind("####")
    hashed = None
    if hash_at >= 0:
        line = clean_answer(text[hash_at + 4:].split("\n", 1)[0]).strip().rstrip(".").strip()
        hashed = line or None
    box_at, boxed = _last_boxed(text) if "box" in text else (-1, None)
    if boxed is not None:
        boxed = clean_answer(boxed).strip()
    if boxed is not None and box_at > hash_at:
        return boxed
    return hashed if hashed is not None else boxed


def extract_flexible(text: str | None) -> str | None:
    """Strict if present, else the last number in the text (its digits in ASCII)."""
    strict = extract_strict(text)
    if strict is not None or not text:
        return strict
    start = max(0, len(text.rstrip()) - TAIL)          # trailing whitespace must not move the window
    while start > 0 and _NUMBER_CHAR.match(text, start - 1):     # never cut a number in two
        start -= 1
    found = _NUMBER.findall(text, start)
    return clean_answer(found[-1]).rstrip(",") if found else None    # \\d matches every decimal digit


def extract(text: str | None, mode: str = "strict") -> str | None:
    if mode not in ("strict", "flexible"):
        raise ValueError(f"extraction mode {mode!r}: use 'strict' or 'flexible'")
    return extract_strict(text) if mode == "strict" else extract_flexible(text)


def to_number(s: str | None) -> Fraction | None:
    """Exact value of a plain number ('1,234', '-5', '3.50', '1/2', '\\frac{1}{2}', '$5$'), else None.

    A lenient reader of what a person would call a number, after `clean_answer`: Unicode decimal
    digits count, superscripts do not, invisible characters are ignored. Rewards do not use it:
    math-verify reads some of these differently ('1 000' is 1*0 there), see `is_equiv`."""
    if s is None:
        return None
    t = clean_answer(s).strip().strip("$").strip()
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


# -- fast paths of is_equiv ----------------------------------------------------------------------
# Each answers only where math-verify's verdict, as the worker asks for it, is provably the same
# (math-verify 0.9.0, latex2sympy2_extended 1.11.0, sympy 1.14). tests/data/verify_cases.tsv, the
# generated pairs of tests/test_verify_rewrites.py and the fuzzing of tests/test_verify_fuzz.py
# compare them with the worker, so an upgrade that reads one of these forms differently fails there.
_GROUPED = r"-?[1-9][0-9]{0,2}(?:,[0-9]{3})+"
_EXACT = re.compile(rf"(?P<int>{_GROUPED}|[+-]?[0-9]+)"
                    rf"|(?P<dec>(?:{_GROUPED}|[+-]?[0-9]*)\.[0-9]{{1,6}})"
                    r"|(?P<ratio>[+-]?[0-9]+/[+-]?[0-9]+)"
                    r"|(?P<tex>(?P<neg>-)?\\[dt]?frac\{(?P<num>-?[0-9]+)\}\{(?P<den>-?[0-9]+)\})")
"""Numbers math-verify reads as the same exact value: ASCII digits; comma groups without a
leading '+' or '0' ('+1,000' is the set {1, 0} there, '0,001' is 0.001); at most 6 places;
no commas in a ratio ('1,000/2' is a set). Anything else, even '1 000' (1*0 there), '9.' (not
parsed) or '1/2/3' ((1/2)/3 there), goes to math-verify."""
FLOAT_DIGITS = 15
"""math-verify reads a decimal as a float of max(15, its digit count) digits, so decimals of more
significant digits (or integers compared with a decimal) are left to it."""
_ASSIGNMENT = re.compile(r"[A-DF-HJ-Za-df-hj-z] *= *(-?[0-9]+)")
"""A one-letter assignment of an integer. Not e or I: latex2sympy reads them as constants, and
math-verify then calls a gold 'e = 9' unequal to 9; E and i, which it also reads specially, are
left out as well."""
_INTEGER = re.compile(r"-?[0-9]+")
_NOT_PLAIN = re.compile(r"[^ -~]|[\\$\"'{}]")
_ALNUM = re.compile(r"[A-Za-z0-9]")


def _exact_number(s: str) -> tuple[Fraction, str, int] | None:
    """(value, 'int' | 'dec' | 'ratio', significant digits) of a number in `_EXACT`, else None.

    Outer space and '$' go, '{,}' is ',' and '\\!' nothing, as math-verify normalises them."""
    t = s.strip().strip("$").strip().replace("{,}", ",").replace("\\!", "")
    if not t or len(t) > MAX_DIGITS or not t.isascii():
        return None
    m = _EXACT.fullmatch(t)
    if m is None:
        return None
    if m["tex"] is not None:
        num, den = int(m["num"]), int(m["den"])
        return None if den == 0 else (Fraction(-num if m["neg"] else num, den), "ratio", 0)
    if m["ratio"] is not None:
        num, den = (int(x) for x in t.split("/"))
        return None if den == 0 else (Fraction(num, den), "ratio", 0)
    plain = t.replace(",", "")
    digits = len(plain.lstrip("+-").replace(".", "").lstrip("0")) or 1
    return Fraction(plain), "dec" if m["dec"] is not None else "int", digits


def _fast_numbers(pred: str, gold: str) -> bool | None:
    """Exact equality of two `_EXACT` numbers where math-verify compares them exactly, else None.

    math-verify compares integers and fractions exactly; a float it rounds to 6 places first
    (0.333333 equals 1/3 there), which changes nothing between decimals of at most 6 places and
    15 digits, but does against a fraction."""
    a, b = _exact_number(pred), _exact_number(gold)
    if a is None or b is None:
        return None
    if "dec" in (a[1], b[1]) and ("ratio" in (a[1], b[1]) or max(a[2], b[2]) > FLOAT_DIGITS):
        return None
    return a[0] == b[0]


def _fast_assignment(pred: str, gold: str) -> bool | None:
    """'x = 9' against '9' (either way round): math-verify compares the right-hand side of a
    one-letter assignment with a bare value, so this is integer equality. Else None.

    No commas ('x = 1,000' is x = {1, 0} there); percents and units are left to math-verify
    (it unwraps '50%' but not '12.5%' against a bare number)."""
    p, g = pred.strip(), gold.strip()
    if len(p) > MAX_DIGITS or len(g) > MAX_DIGITS:
        return None
    for side, number in ((p, g), (g, p)):
        m = _ASSIGNMENT.fullmatch(side)
        if m is not None and _INTEGER.fullmatch(number):
            return int(m[1]) == int(number)
    return None


def _fast_identical(pred: str, gold: str) -> bool | None:
    """True for the same plain string on both sides, else None.

    math-verify also compares the normalised strings it keeps beside each parse, and its normaliser
    deletes nothing from printable ASCII without \\ $ " ' { } (a unit word alone is kept), so
    with a letter or a digit in it that string is non-empty and the same on both sides."""
    p = pred.strip()
    if p != gold.strip() or _NOT_PLAIN.search(p) or not _ALNUM.search(p):
        return None
    return True


def _fast_verdict(pred: str, gold: str) -> bool | None:
    """math-verify's verdict where a fast path provably gives it, else None."""
    for path in (_fast_numbers, _fast_assignment, _fast_identical):
        verdict = path(pred, gold)
        if verdict is not None:
            return verdict
    return None


@functools.lru_cache(maxsize=65536)
def _equiv_cached(pred: str, gold: str, timeout: float) -> bool:
    fast = _fast_verdict(pred, gold)
    return fast if fast is not None else symbolic_equal(pred, gold, timeout=timeout)


def is_equiv(pred: str | None, gold: str, *, timeout: float = 2.0) -> bool:
    """math-verify's verdict on `pred` against `gold` (False where it takes over `timeout` seconds).

    Exact arithmetic answers where it provably gives the same verdict (see the fast paths above);
    every other pair goes to math-verify, so 'x = 9', '9 cm', '50%' and '(9)' all equal '9'."""
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
