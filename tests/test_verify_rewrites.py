"""`is_equiv` is math-verify's verdict: generated rewrites of typical competition answers are equal,
near-misses stay wrong, and each fast path agrees with the worker (math-verify, no fast path)
wherever it answers.

The generators are seeded, so a failure names a fixed pair. Pairs a fast path answers are also sent
to the worker directly; the others already got the worker's verdict through `is_equiv`.
"""

import random
import string
from fractions import Fraction

import pytest

from sftrl.data import verify
from sftrl.data.verify import is_equiv
from sftrl.data.verify_worker import symbolic_equal

TIMEOUT = 20.0
"""Seconds per check: these pairs take milliseconds, and a loaded machine must not turn a slow
reply into a False."""
VARIABLES = "".join(c for c in string.ascii_letters if c not in "eEiI")
"""Letters math-verify reads as variables: e and I are constants to it (E and i are left out too,
as in `sftrl.data.verify._ASSIGNMENT`)."""
UNITS = ["cm", "m", "km", "mm", "kg", "g", "feet", "ft", "inches", "inch", "meters", "metres", "miles",
         "mph", "hours", "hour", "minutes", "seconds", "days", "years", "degrees", "students", "apples",
         "units", "square units", "acres", "gallons", "coins", "toys", "tiles", "men", "women", "yards"]
"""Words from math-verify's unit list (latex2sympy2_extended's `units`, plural 's' allowed)."""


def verdicts(pairs: list[tuple[str, str]]) -> list[tuple[str, str, bool, bool]]:
    """(pred, gold, is_equiv, the worker's verdict) of each pair."""
    out = []
    for pred, gold in pairs:
        got = is_equiv(pred, gold, timeout=TIMEOUT)
        fast = verify._fast_verdict(pred, gold)
        out.append((pred, gold, got, symbolic_equal(pred, gold, timeout=TIMEOUT) if fast is not None else got))
    return out


def assert_all(pairs: list[tuple[str, str]], expected: bool) -> None:
    wrong = [v for v in verdicts(pairs) if v[2] is not expected or v[3] is not expected]
    assert not wrong, f"{len(wrong)} of {len(pairs)} pairs are not {expected} (pred, gold, is_equiv, worker): {wrong[:10]}"


def grouped(n: int, sep: str) -> str:
    """n with its digits in groups of three joined by `sep` ('1{,}234{,}567')."""
    return f"{n:,}".replace(",", sep)


def decimal(q: Fraction) -> str:
    """q (a terminating fraction) in positional notation."""
    places = next(p for p in range(7) if (q * 10 ** p).denominator == 1)
    digits = str(abs(q.numerator * 10 ** places // q.denominator)).rjust(places + 1, "0")
    body = digits if places == 0 else f"{digits[:-places]}.{digits[-places:]}"
    return ("-" if q < 0 else "") + body


# -- rewrites of an integer answer: each takes (value, rng) and returns a string equal to it -------
INT_FORMS = {
    "assign": lambda v, r: f"{r.choice(VARIABLES)}{r.choice(['', ' '])}={r.choice(['', ' '])}{v}",
    "assign_decimal": lambda v, r: f"{r.choice('xyznk')} = {v}.0",
    "unit": lambda v, r: f"{v} {r.choice(UNITS)}",
    "unit_text": lambda v, r: r.choice([f"{v}\\text{{ {r.choice(UNITS)}}}", f"{v} \\text{{{r.choice(UNITS)}}}",
                                         f"{v}\\,\\text{{{r.choice(UNITS)}}}", f"{v}\\mbox{{ {r.choice(UNITS)}}}",
                                         f"{v}\\text{{ cm}}^2"]),
    "percent": lambda v, r: r.choice([f"{v}\\%", f"{v}%", f"{v} \\%", f"{v} percent"]),
    "paren": lambda v, r: r.choice([f"({v})", f"[{v}]", f"(({v}))", f"\\left({v}\\right)", f"\\left[{v}\\right]"]),
    "frac": lambda v, r: (lambda k: r.choice([f"\\frac{{{v * k}}}{{{k}}}", f"\\dfrac{{{v * k}}}{{{k}}}",
                                              f"{v * k}/{k}", f"\\tfrac{{{v * k}}}{{{k}}}"]))(r.randint(1, 12)),
    "thousands": lambda v, r: grouped(v, r.choice([",", "{,}", ",\\!", "\\!"])),
    "decimal": lambda v, r: f"{v}." + "0" * r.randint(1, 6),
    "dollar": lambda v, r: r.choice([f"${v}$", f"\\${v}", f"\\$ {v}", f"$\\${v}$", f"\\({v}\\)"]),
    "leading_zero": lambda v, r: ("-" if v < 0 else "") + "0" * r.randint(1, 3) + str(abs(v)),
}


def int_value(r: random.Random, form: str) -> int:
    if form == "thousands":
        return r.choice([1, -1]) * r.randint(1000, 10 ** r.randint(4, 10))
    v = r.randint(1, 10 ** r.randint(1, 6))
    return -v if form in ("assign", "paren", "frac", "dollar", "decimal") and r.random() < 0.2 else v


def int_rewrites(r: random.Random, per_form: int) -> list[tuple[str, str]]:
    pairs = []
    for form, write in INT_FORMS.items():
        for _ in range(per_form):
            v = int_value(r, form)
            pairs.append((write(v, r), str(v)))
    return pairs


def other_rewrites(r: random.Random, n: int) -> list[tuple[str, str]]:
    """Fractions, decimals, percents against their fraction, tuples."""
    pairs = []
    for _ in range(n):
        p, q = r.randint(1, 99), r.choice([2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 25])
        f = Fraction(p, q)
        if f.denominator == 1:
            continue
        k = r.randint(2, 9)
        a, b = f.numerator, f.denominator
        pairs += [(r.choice([f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"{a}/{b}"]),
                   r.choice([f"\\frac{{{a * k}}}{{{b * k}}}", f"{a * k}/{b * k}", f"\\frac{{{a}}}{{{b}}}"])),
                  (f"-\\frac{{{a}}}{{{b}}}", r.choice([f"\\frac{{-{a}}}{{{b}}}", f"-{a}/{b}", f"{a}/-{b}"])),
                  (f"x = \\frac{{{a}}}{{{b}}}", f"{a}/{b}")]
        if (f * 10 ** 6).denominator == 1:
            pairs.append((decimal(f), r.choice([f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}"])))
        d = Fraction(r.randint(1, 10 ** 6), 10 ** r.randint(1, 3))
        pairs += [(decimal(d) + "0" * r.randint(0, 2), decimal(d)),
                  (decimal(d).removeprefix("0"), decimal(d)),
                  (f"{decimal(d)} {r.choice(UNITS)}", decimal(d)),
                  (f"({decimal(d)})", decimal(d)),
                  (grouped(int(d), ",") + decimal(d - int(d)).removeprefix("0") if d != int(d) else grouped(int(d), ","),
                   decimal(d))]
        pct = r.randint(1, 100)
        pairs.append((r.choice([f"{pct}\\%", f"{pct}%"]), decimal(Fraction(pct, 100))))
        x, y = r.sample(range(-50, 50), 2)
        pairs.append((f"({x}, {y})", r.choice([f"({x},{y})", f"\\left({x}, {y}\\right)"])))
    return pairs


def near_misses(r: random.Random, per_form: int) -> list[tuple[str, str]]:
    """The forms above around a wrong value: x10, /10, +1, sign flip; and swapped tuples."""
    pairs = []
    for form, write in INT_FORMS.items():
        for _ in range(per_form):
            v = int_value(r, form)
            wrong = r.choice([v * 10, v + 1, -v, v - 1])
            pairs.append((write(wrong, r), str(v)) if r.random() < 0.7 else (str(wrong), write(v, r)))
            if form in ("unit", "paren", "assign", "dollar"):
                pairs.append((write(v, r).replace(str(v), decimal(Fraction(v, 10)), 1), str(v)))    # /10
    for _ in range(per_form):
        x, y = r.sample(range(-50, 50), 2)
        pairs.append((f"({x}, {y})", r.choice([f"({y},{x})", f"\\left({y}, {x}\\right)"])))
        p, q = r.randint(1, 99), r.randint(2, 30)
        if p % q:
            pairs.append((f"\\frac{{{p}}}{{{q}}}", r.choice([f"\\frac{{{q}}}{{{p}}}", f"-{p}/{q}", f"{p + q}/{q}"])))
        d = Fraction(r.randint(1, 10 ** 5), 10 ** r.randint(1, 3))
        pairs.append((decimal(d), decimal(r.choice([d * 10, d / 10, d + 1, -d]))))
    return pairs


def oriented(pairs: list[tuple[str, str]], r: random.Random) -> list[tuple[str, str]]:
    """Each pair in a random order: the rewrite may be the prediction or the gold."""
    return [(a, b) if r.random() < 0.5 else (b, a) for a, b in pairs]


def test_rewrites_of_competition_answers_are_equal():
    r = random.Random(20261202)
    pairs = oriented(int_rewrites(r, per_form=14) + other_rewrites(r, 25), r)
    assert len(set(pairs)) > 300
    assert_all(pairs, True)


def test_near_misses_stay_wrong():
    r = random.Random(12)
    pairs = oriented(near_misses(r, per_form=12), r)
    assert len(set(pairs)) > 200
    assert_all(pairs, False)


# -- each fast path against the worker --------------------------------------------------------------
def number_notation(q: Fraction, r: random.Random) -> str:
    """q in a notation of the exact-number grammar, or now and then one just outside it."""
    if q.denominator == 1:
        kind = r.choice(["int", "int", "grouped", "decimal", "decimal", "ratio"])
    elif (q * 10 ** 6).denominator == 1:
        kind = r.choice(["decimal", "decimal", "decimal", "decimal", "ratio"])
    else:
        kind = r.choice(["ratio", "tex"])
    odd = r.random() < 0.2
    n = q.numerator
    if kind == "int":
        sign = "-" if n < 0 else r.choice(["", "", "+"])
        return sign + "0" * r.randint(0, 2) + str(abs(n)) if not odd else r.choice([f"{n}.", f" {n} ", f"${n}$"])
    if kind == "grouped":
        if odd:
            return r.choice(["+" + grouped(abs(n), ","), f"\\({grouped(n, ',')}\\)", grouped(n, " ")])
        return r.choice([grouped(n, ","), grouped(n, "{,}"), grouped(n, ",\\!"), f"${grouped(n, ',')}$"])
    if kind == "decimal":
        s = decimal(q)
        s = s if "." in s else s + "."
        bare = s[1:] if s.startswith("0.") else "-" + s[2:] if s.startswith("-0.") else s      # '.5', '-.5'
        return r.choice([s + "0000000", s.rstrip("0"), f"\\({s}\\)"]) if odd else \
            r.choice([s + "0" * r.randint(0, 6 - len(s.partition(".")[2])) if s[-1] != "." else s + "0", bare])
    k = r.choice([1, 1, 2, 10])
    a, b = n * k, q.denominator * k
    if kind == "ratio":
        return r.choice([f"{a} / {b}", f"{a}/{b}/1", f"{a}/{b}."]) if odd else \
            r.choice([f"{a}/{b}", f"{a}/+{b}", f"0{a}/{b}" if a >= 0 else f"{a}/0{b}"])
    return r.choice([f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{a}}}{{{b}}}", f"-\\tfrac{{{-a}}}{{{b}}}"])


def number_value(r: random.Random) -> Fraction:
    kind = r.choice(["int", "int", "big", "decimal", "decimal", "wide", "ratio"])
    if kind == "int":
        return Fraction(r.randint(-10 ** 6, 10 ** 6))
    if kind == "big":
        return Fraction(r.randint(-10 ** 40, 10 ** 40))
    if kind == "decimal":
        return Fraction(r.randint(-10 ** 9, 10 ** 9), 10 ** r.randint(1, 6))
    if kind == "wide":                                    # 15 and 16 significant digits
        return Fraction(r.choice([1, -1]) * r.randint(10 ** 14, 10 ** 16 - 1), 10 ** r.randint(1, 6))
    return Fraction(r.randint(-10 ** 5, 10 ** 5), r.choice([2, 3, 7, 8, 12, 25, 1000]))


def boundary_pairs(r: random.Random, n: int) -> list[tuple[str, str]]:
    """Decimals of 15 significant digits 1e-places apart, with trailing zeros, against their
    integer part, and 'k.0' / 'k.000001' against k: where float rounding would show first."""
    pairs = []
    for _ in range(n):
        places = r.randint(1, 6)
        k = r.choice([1, -1]) * r.randint(10 ** 14, 10 ** 15 - 1)
        x, y = decimal(Fraction(k, 10 ** places)), decimal(Fraction(k + 1, 10 ** places))
        whole = str(int(Fraction(k, 10 ** places)))
        pairs += [(x, y), (x, x + "0" * (6 - places)), (x, whole), (whole + ".0", whole),
                  (whole[:9] + ".000001", whole[:9])]
    return pairs


def test_the_exact_number_path_agrees_with_the_worker():
    r = random.Random(7)
    pairs = boundary_pairs(r, 30)
    for _ in range(500):
        q = number_value(r)
        other = r.choice([q, q, q * 10, q / 10, q + 1, -q, q + Fraction(1, 10 ** 6), q - Fraction(1, 10 ** 6)])
        pairs.append((number_notation(q, r), number_notation(other, r)))
    answered = [(p, g) for p, g in pairs if verify._fast_numbers(p, g) is not None]
    assert len(answered) > 300                                    # the path is exercised, not bypassed
    wrong = [(p, g, verify._fast_numbers(p, g)) for p, g in answered
             if verify._fast_numbers(p, g) is not symbolic_equal(p, g, timeout=TIMEOUT)]
    assert not wrong, wrong[:10]


@pytest.mark.parametrize("pred, gold", [
    ("0.333333", "1/3"), ("1/2/3", "3/2"), ("1 000", "1000"), ("0,001", "1"), ("9.", "9"), ("+1,000", "1000"),
    ("99999999999999999.5", "99999999999999999.4"), ("0.1234567", "0.1234568"), ("\\(1,000\\)", "1000"),
    ("\u0663", "3"), ("9\u200b", "9"), ("\u22129", "-9"), ("1,000/2", "500"), ("x = 1,000", "1000"),
    ("x = 9", "9.0"), ("12.5\\%", "12.5"), ("$", "$"), ("\\text{}", "\\text{}"), ("}x", "}x"),
    ("9", "e = 9"), ("9", "I = 9"), ("9", "E = 9"), ("9", "i = 9"), ("x = +9", "9"),
])
def test_fast_paths_leave_what_math_verify_reads_differently_to_it(pred, gold):
    assert verify._fast_verdict(pred, gold) is None


def test_the_assignment_path_agrees_with_the_worker():
    r = random.Random(5)
    pairs = []
    for letter in VARIABLES:
        for _ in range(4):
            n = r.randint(-10 ** r.randint(1, 20), 10 ** r.randint(1, 20))
            m = n if r.random() < 0.5 else r.choice([n + 1, -n or 1, n * 10, n - 1])
            sp = [" " * r.randint(0, 2) for _ in range(2)]
            zeros = "0" * (r.random() < 0.1)
            side = f"{letter}{sp[0]}={sp[1]}{'-' if n < 0 else ''}{zeros}{abs(n)}"
            pairs.append((side, str(m)) if r.random() < 0.5 else (str(m), side))
    assert all(verify._fast_assignment(p, g) is not None for p, g in pairs)
    wrong = [(p, g) for p, g in pairs if verify._fast_assignment(p, g) is not symbolic_equal(p, g, timeout=TIMEOUT)]
    assert not wrong, wrong[:10]


def test_the_identical_string_path_agrees_with_the_worker():
    r = random.Random(11)
    alphabet = "".join(c for c in string.printable if c not in "\\$\"'{}\t\n\r\x0b\x0c")
    words = ["cm", "and", "or", "th", "percent", "pct", "infinity", "inf", "sqrt", " m", "s", "units", "e", "i",
             "x", "=", ",", ";", ":", ".", "%", "(", ")", "[", "]", "^", "_", "/", "!", "|", "<", ">", "~", " "]
    strings = set()
    while len(strings) < 150:
        s = "".join(r.choice(words) if r.random() < 0.4 else r.choice(alphabet) for _ in range(r.randint(1, 12)))
        if verify._fast_identical(s, s):
            strings.add(s)
    wrong = [s for s in sorted(strings) if not symbolic_equal(s, s, timeout=TIMEOUT)]
    assert not wrong, wrong[:10]
