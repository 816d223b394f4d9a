"""Answer extraction and equivalence: realistic model outputs and tricky cases, pinned.

`tests/data/verify_cases.tsv` holds labelled pairs of the kinds math-verify's own test suite
covers; `expected` is math-verify's verdict as the worker computes it."""

import csv
import os
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sftrl.data import verify_worker
from sftrl.registry import RegistryError
from sftrl.data.tasks.base import Problem
from sftrl.data.rewards import REWARDS, resolve_reward
from sftrl.data import verify
from sftrl.data.verify import (clean_answer, extract, extract_flexible, extract_strict, is_correct, is_equiv,
                               to_number)

CASES = Path(__file__).parent / "data" / "verify_cases.tsv"
TIMEOUT = 20.0
"""Seconds per check in the labelled-case tests: they take milliseconds; a loaded machine must not
turn a slow reply into a False."""


def labelled_cases() -> list[dict]:
    with CASES.open(encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


@pytest.mark.parametrize("text, strict, flexible", [
    ("7*3=21, 12+21=33 #### 33", "33", "33"),
    ("#### 1,234", "1,234", "1,234"),
    ("so we get #### -7\n", "-7", "-7"),
    ("#### 12\nThat's it!", "12", "12"),
    ("#### 5. ", "5", "5"),
    ("first #### 3 then #### 4", "4", "4"),                       # the last marker wins
    ("The answer is \\boxed{42}.", "42", "42"),
    ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}", "\\frac{1}{2}"),
    ("\\boxed{\\frac{\\sqrt{2}}{2}} and more", "\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt{2}}{2}"),
    ("#### 3 but finally \\boxed{4}", "4", "4"),                  # later \boxed beats earlier ####
    ("\\boxed{4} then #### 5", "5", "5"),
    ("\\boxed{1 + {2}", None, "2"),                                # unbalanced braces: no strict answer
    ("I think it is 17 or maybe 18", None, "18"),
    ("total: 1,234,567 apples", None, "1,234,567"),
    ("it's 3.50 dollars", None, "3.50"),
    ("half is 1/2", None, "1/2"),
    ("drop to -12.", None, "-12"),
    ("no numbers here", None, None),
    ("", None, None),
    ("####", None, None),
    ("#### \n", None, None),
])
def test_extraction(text, strict, flexible):
    assert extract_strict(text) == strict
    assert extract_flexible(text) == flexible
    assert extract(text, "strict") == strict and extract(text, "flexible") == flexible


def test_extract_none_and_bad_mode():
    assert extract_strict(None) is None and extract_flexible(None) is None
    with pytest.raises(ValueError, match="use 'strict' or 'flexible'"):
        extract("x", "loose")


@pytest.mark.parametrize("s, value", [
    ("1,234", 1234), ("-5", -5), ("+3", 3), ("3.50", 3.5), ("0.5", 0.5), ("1/2", 0.5),
    ("\\frac{1}{2}", 0.5), ("\\dfrac{3}{4}", 0.75), ("-\\frac{1}{2}", -0.5), ("$5$", 5), ("5.", 5),
    ("$1,234.00", 1234), (".5", 0.5), ("12,34", None), ("abc", None), ("1/0", None), ("", None),
    ("1e999999999", None), ("9" * 500, None),
])
def test_to_number(s, value):
    got = to_number(s)
    assert (got is None) if value is None else (got == value)


@pytest.mark.parametrize("pred, gold, equal", [
    ("1,234", "1234", True), ("1234", "1,234", True), ("-7", "-7", True), ("-7", "7", False),
    ("0.50", "0.5", True), ("3.5", "7/2", True), ("\\frac{1}{2}", "0.5", True),
    ("0.5", "\\frac{1}{2}", True), ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
    ("x+1", "1+x", True), ("x+2", "1+x", False), ("12", "13", False), ("12 apples", "12", True),
    ("x = 9", "9", True), ("9", "k=9", True), ("50%", "50", True), ("(9)", "9", True), ("9 dollars", "9", False),
    ("\u0663", "3", False), ("9\u200b", "9", False), (None, "3", False), ("", "3", False),
])
def test_equivalence(pred, gold, equal):
    # math-verify's verdict on raw strings: units from its list, assignments, percents and brackets
    # are read; Unicode digits and invisible characters are not (extraction cleans those)
    assert is_equiv(pred, gold, timeout=TIMEOUT) is equal


_CASES = labelled_cases()


def test_labelled_cases_cover_the_kinds_math_verify_tests():
    kinds = Counter(row["category"] for row in _CASES)
    assert {"assignment", "units", "percent", "brackets", "fraction", "thousands", "decimal", "dollar",
            "negative", "set-tuple-interval", "text", "near-miss"} <= set(kinds)
    assert len({(row["pred"], row["gold"]) for row in _CASES}) == len(_CASES)
    assert {row["expected"] for row in _CASES} == {"0", "1"}
    assert all(row["expected"] == "0" for row in _CASES if row["category"] == "near-miss")


@pytest.mark.parametrize("row", _CASES, ids=[f"{i}-{row['category']}" for i, row in enumerate(_CASES)])
def test_is_equiv_gives_math_verifys_verdict_on_the_labelled_cases(row):
    assert is_equiv(row["pred"], row["gold"], timeout=TIMEOUT) is (row["expected"] == "1"), row


def test_the_worker_still_gives_the_labelled_verdicts_where_a_fast_path_answers():
    # the rows the fast paths decide never reach math-verify in the test above; asking the worker
    # here makes a math-verify upgrade that reads one of them differently fail loudly
    fast = [row for row in _CASES if verify._fast_verdict(row["pred"], row["gold"]) is not None]
    assert len(fast) > 100
    wrong = [(row["pred"], row["gold"], row["expected"]) for row in fast
             if verify_worker.symbolic_equal(row["pred"], row["gold"], timeout=TIMEOUT) is not (row["expected"] == "1")]
    assert not wrong


@pytest.mark.parametrize("s, cleaned", [
    ("42", "42"), ("\x00 5\x00", " 5"), ("\u200b42\ufeff", "42"), ("1\u200b000", "1000"), ("\u2060-7\u00ad", "-7"),
    ("\u0661\u0662", "12"), ("\uff10.\uff15", "0.5"), ("\U0001d7cf,\U0001d7d0", "1,2"), ("\u00b9\u00b2", "\u00b9\u00b2"),
    ("a\tb\n", "a\tb\n"), ("\u22129", "\u22129"), ("\\frac{\u0661}{\u0662}", "\\frac{1}{2}"),
])
def test_clean_answer(s, cleaned):
    # invisible characters go, Unicode decimal digits become ASCII; superscripts (exponents, not
    # digits), whitespace and other visible characters stay
    assert clean_answer(s) == cleaned


@pytest.mark.parametrize("text, gold, strict, flexible", [
    ("\x00#### 5\x00", "5", True, True),
    ("#### \u200b42\ufeff", "42", True, True),
    ("#### \u0661\u0662", "12", True, True),
    ("\\boxed{\u0663}", "3", True, True),
    ("\\boxed{4\u200b2}", "42", True, True),
    ("so the answer is \u0661\u0662", "12", False, True),
    ("#### 5.\u200b", "5", True, True),
    ("#### \u00b2", "2", False, False),                                # a superscript is no digit
])
def test_extraction_cleans_the_answer(text, gold, strict, flexible):
    assert is_correct(text, gold, "strict", timeout=TIMEOUT) is strict
    assert is_correct(text, gold, "flexible", timeout=TIMEOUT) is flexible


@pytest.mark.parametrize("text, gold, strict, flexible", [
    ("3*9=27, 27-8=19 #### 19", "19", True, True),
    ("3*9=27, 27-8=19", "19", False, True),                       # no marker: only flexible finds it
    ("#### 1,000", "1000", True, True),
    ("The answer is \\boxed{\\frac{1}{2}}.", "0.5", True, True),
    ("#### 18 because 17", "17", False, False),
])
def test_is_correct_modes(text, gold, strict, flexible):
    assert is_correct(text, gold, "strict") is strict
    assert is_correct(text, gold, "flexible") is flexible


def test_huge_output_is_fast_and_right():
    text = "blah 12 " * 25_000 + "#### 99"                        # 200 kB
    t0 = time.perf_counter()
    assert extract_strict(text) == "99" and is_correct(text, "99")
    assert extract_flexible("7 " * 100_000) == "7"
    assert time.perf_counter() - t0 < 1.0


def test_symbolic_checks_from_threads_match_main_thread():
    pairs = [("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}"), ("x^2+2x+1", "(x+1)^2"),
             ("\\pi", "3.14"), ("2\\sqrt{3}", "\\sqrt{12}"), ("\\frac{3}{6}", "\\frac{1}{2}")] * 4
    main = [is_equiv(p + " ", g) for p, g in pairs]               # trailing space: bypass the cache
    with ThreadPoolExecutor(8) as pool:
        threaded = list(pool.map(lambda pg: is_equiv(pg[0] + "  ", pg[1]), pairs))
    assert threaded == main == [True, True, False, True, True] * 4


def test_worker_launches_from_a_bare_environment(tmp_path):
    # the launch line names the worker module by its package path; when that path went stale the
    # worker died at import and every symbolic check quietly returned False
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", verify_worker._LAUNCH, verify_worker._ROOT], cwd=tmp_path,
                         input='["x+1", "1+x"]\n["2", "3"]\n', capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.stdout.split() == ["ready", "1", "0"], out.stderr[-2000:]
    assert verify_worker.symbolic_equal("x+1", "1+x") is True


def test_pathological_input_times_out_and_worker_recovers():
    t0 = time.perf_counter()
    assert is_equiv("9^{9^{9^{9}}}", "9^{9^{9^{8}}}", timeout=1.0) is False
    assert time.perf_counter() - t0 < 4.0
    assert is_equiv("\\frac{2}{4}", "\\frac{1}{2}") is True      # a fresh worker answers


def _problems(*answers):
    return [Problem(id=str(i), prompt="q", answer=a) for i, a in enumerate(answers)]


def test_reward_functions_values():
    texts = ["#### 3", "#### 4", "3", "\\boxed{5}"]
    probs = _problems("3", "3", "3", "5")
    assert REWARDS["correctness"](texts, probs) == [1.0, 0.0, 0.0, 1.0]
    assert REWARDS["correctness"](texts, probs, correct=1.0, wrong=-1.0) == [1.0, -1.0, -1.0, 1.0]
    assert REWARDS["correctness"](texts, probs, mode="flexible") == [1.0, 0.0, 1.0, 1.0]
    assert REWARDS["format"](texts, probs, value=0.5) == [0.5, 0.5, 0.0, 0.5]


def length_penalty(completions, problems, *, scale=0.1):
    return [-scale * len(c) for c in completions]


def test_custom_and_unknown_rewards():
    fn = resolve_reward("tests.test_verify:length_penalty")
    assert fn(["ab", "abcd"], _problems("1", "1"), scale=0.5) == [-1.0, -2.0]
    with pytest.raises(RegistryError, match="did you mean 'correctness'"):
        resolve_reward("corectness")
    with pytest.raises(ValueError, match="has no attribute"):
        resolve_reward("tests.test_verify:nope")
    with pytest.raises(ValueError, match="cannot import module"):
        resolve_reward("no_such_module_xyz:f")
