"""Fuzzing the verifier with adversarial completions: nothing raises, nothing hangs past its bound,
nothing is executed, answers are deterministic and invariant where they must be, and rewards are
the same in the main thread, in 8 threads and in worker processes.

Regression examples (`@example`) pin what fuzzing found: 20,000 unclosed '\\boxed{' took one
scan of the text each (quadratic: >10 s at 140 kB); flexible extraction cut a number in two at its
TAIL window edge (so appending a space changed the answer); NUL and zero-width characters around
an answer made a correct answer wrong; a verifier started from a daemonic pool worker (or from a
script without a __main__ guard) raised instead of answering.
"""

import multiprocessing as mp
import random
import re
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sftrl.data import verify, verify_worker
from sftrl.data.tasks.base import Problem
from sftrl.data.rewards import REWARDS
from sftrl.data.verify import TAIL, extract_flexible, extract_strict, is_correct, is_equiv, score_batch, to_number

RUNS: Counter = Counter()
"""Examples actually run, per fuzz test (counted inside the test bodies, so shrinking and
explicit examples count and an early stop of hypothesis does not inflate the total)."""
FUZZ_TESTS = ("extractors", "to_number", "is_equiv", "scoring", "prefix_noise", "towers", "deep_latex")
EXTRACT_BOUND = 0.5
"""Seconds any extraction or to_number call may take, 100 kB inputs included (measured: <20 ms)."""
MARGIN = 0.5
"""Seconds a symbolic check may run past its `timeout` (pipe round trip, scheduling)."""
STARTUP = 20.0
"""Extra seconds allowed to a call that had to start a math-verify worker (measured: ~0.5 s)."""
TIMEOUT = 0.5
"""The `timeout` argument used by the fuzz tests."""
WORKER_TIMEOUT = 5.0
"""Seconds the worker gets to confirm a fast path's verdict (such pairs take milliseconds)."""
PRINTABLE_ASCII = re.compile(r"[ -~]*")
SHALLOW = 10
"""\\frac nesting in the many-example symbolic tests: math-verify needs seconds from about 15
levels on, so deeper nesting (up to 200) has its own test with fewer examples."""
SENTINEL_DIR = Path(tempfile.gettempdir()) / "sftrl-fuzz-sentinel"
SENTINEL_DIR.mkdir(exist_ok=True)
PWNED = SENTINEL_DIR / "pwned"
"""Every code payload below would create this file if anything executed it."""


def fuzz(max_examples: int):
    """Hypothesis settings of a fuzz test: wall time is measured by the tests themselves."""
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                    print_blob=True)


# -- building blocks ------------------------------------------------------------------------------
DIGIT_SETS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "０１２３４５６７８９", "⁰¹²³⁴⁵⁶⁷⁸⁹",
              "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗", "०१२३४५६७८९"]
INVISIBLE = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad", "\x00", "\x07", "\x1b"]
PAYLOADS = [
    f"__import__('os').system('touch {PWNED}')",
    f"open('{PWNED}', 'w').write('x')",
    f"exec(\"open('{PWNED}', 'w')\")",
    f"eval(\"__import__('os').system('touch {PWNED}')\")",
    f"$(touch {PWNED})", f"`touch {PWNED}`", f"\\immediate\\write18{{touch {PWNED}}}",
    f"import os; os.system('touch {PWNED}')",
    f"1+__import__('pathlib').Path('{PWNED}').touch()",
    f"(lambda: __import__('os').system('touch {PWNED}'))()",
    f"\\frac{{__import__('os').system('touch {PWNED}')}}{{2}}",
    f"Symbol('x').__class__.__mro__[-1].__subclasses__() or open('{PWNED}','w')",
]
TOWERS = ["9^9^9^9", "10**10**10", "9^{9^{9^{9}}}", "10^{10^{10}}", "2^{2^{2^{2^{2^{2}}}}}",
          "(10^{10})^{10^{10}}", "10^{10^{10^{10}}}!", "99^{99^{99}}"]
GOLDS = ["7", "-3", "0", "1,234", "0.5", "3.50", "\\frac{1}{2}", "x+1", "\\sqrt{2}", "١٢", "1e5",
         "\\infty", "{1, 2}", "", " "]


@st.composite
def numbers(draw) -> str:
    """Plain and pathological number strings."""
    kind = draw(st.sampled_from(["int", "huge", "exp", "decimal", "frac", "unicode", "signed"]))
    if kind == "int":
        return str(draw(st.integers(-10**12, 10**12)))
    if kind == "huge":                                   # up to 10^5 digits
        block = draw(st.text("0123456789", min_size=1, max_size=8))
        return block * draw(st.integers(1, 100_000 // len(block)))
    if kind == "exp":
        return draw(st.sampled_from(["1e999999", "1e-999999", "9e99999999999", "1E400", "-1e308"]))
    if kind == "decimal":
        return "0." + draw(st.text("0123456789", min_size=1, max_size=6)) * draw(st.integers(1, 20_000))
    if kind == "frac":
        return f"\\frac{{{draw(st.integers(-99, 99))}}}{{{draw(st.integers(-99, 99))}}}"
    if kind == "unicode":
        digits = draw(st.sampled_from(DIGIT_SETS))
        return "".join(digits[int(c)] for c in str(draw(st.integers(0, 10**9))))
    return draw(st.sampled_from(["+", "-", "--", "+-", "$", "\\(", ""])) + str(draw(st.integers(0, 999)))


@st.composite
def nested_latex(draw, max_depth: int = 200) -> str:
    """\\frac inside \\frac up to `max_depth` deep, sometimes with braces dropped or added."""
    depth = draw(st.integers(1, max_depth))
    text = "\\frac{" * depth + "1}{2}" * depth
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(text) - 1))
        text = text[:cut] + draw(st.sampled_from(["", "{", "}", "}}}", "{{{"])) + text[cut + 1:]
    return text


@st.composite
def pieces(draw, towers: bool = False, max_depth: int = 200) -> str:
    """One adversarial answer-like string."""
    options = [numbers(), nested_latex(max_depth), st.sampled_from(PAYLOADS), st.text(max_size=40),
               st.sampled_from(GOLDS), st.sampled_from(["\\boxed{", "}", "{", "####", "\\fbox{", "$"])]
    if towers:
        options.append(st.sampled_from(TOWERS))
    return draw(st.one_of(options))


@st.composite
def completions(draw, towers: bool = False, max_depth: int = 200) -> str:
    """A model output: noise around answer-like pieces, placed bare, after '####' or in \\boxed{}."""
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        piece = draw(pieces(towers, max_depth))
        style = draw(st.sampled_from(["bare", "hash", "boxed", "sentence", "lines"]))
        parts.append({"bare": piece, "hash": f"\n#### {piece}", "boxed": f"\\boxed{{{piece}}}",
                      "sentence": f"The answer is {piece}.",
                      "lines": f"#### {piece}\n" * draw(st.integers(1, max(1, 5000 // (len(piece) + 6))))
                      }[style])
    text = draw(st.text(max_size=30)).join(parts)
    if draw(st.integers(0, 9)) == 0:                     # 100 kB outputs
        text = draw(st.text(min_size=1, max_size=20)) * draw(st.integers(1, 100_000 // 20)) + text
    if draw(st.booleans()):                              # invisible characters anywhere
        for _ in range(draw(st.integers(1, 5))):
            at = draw(st.integers(0, len(text)))
            text = text[:at] + draw(st.sampled_from(INVISIBLE)) + text[at:]
    return text


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def within(fn, *args, bound_timeout: float | None = None, calls: int = 1, **kwargs):
    """(fn(*args, **kwargs), whether it returned within its bound): EXTRACT_BOUND for calls with no
    symbolic check, else `calls` checks of `bound_timeout` each. A second, uncached measurement
    absorbs a process that a loaded machine descheduled; a real overrun repeats (and the repeat
    must give the same result)."""
    first = None
    for attempt in range(2):
        before = worker_state()
        out, took = timed(fn, *args, **kwargs)
        first = out if attempt == 0 else first
        bound = EXTRACT_BOUND + (0 if bound_timeout is None else calls * symbolic_bound(bound_timeout, before))
        if took < bound:
            return first, out == first
        verify._equiv_cached.cache_clear()
    return first, False


def worker_state() -> tuple[int, bool]:
    return verify_worker.worker_starts(), verify_worker.worker_ready()


def symbolic_bound(timeout: float, before: tuple[int, bool]) -> float:
    """The bound of a call: its timeout plus a margin, plus start-up where the call had to wait
    for a worker's imports (it started one, or the one started after a timeout was not ready)."""
    starts, ready = before
    waits = verify_worker.worker_starts() - starts + (not ready)
    return timeout + MARGIN + STARTUP * waits


@pytest.fixture(scope="module", autouse=True)
def warm_worker():
    PWNED.unlink(missing_ok=True)
    assert is_equiv("x+1", "1+x")                     # the worker's imports are paid here, once
    yield
    assert not PWNED.exists()


# -- extraction -----------------------------------------------------------------------------------
@fuzz(3000)
@given(text=completions(towers=True))
@example(text="x" * 10 + "\\boxed{" * 20_000)                  # was quadratic: >10 s
@example(text="12345" + "x" * (TAIL - 4))                      # a number cut at the TAIL edge
@example(text="\x00#### 5\x00")
@example(text="#### 7\n" * 20_000)
def test_extractors(text):
    RUNS["extractors"] += 1
    for fn in (extract_strict, extract_flexible):
        got, in_time = within(fn, text)
        assert got is None or isinstance(got, str)
        assert in_time, (fn.__name__, len(text))
        assert fn(text) == got                                    # deterministic
        assert fn(text + " \n\t ") == got                         # trailing whitespace changes nothing
    assert extract_strict(text + "\n#### 7") == "7"
    assert extract_strict(text + "\n\\boxed{7}") == "7"
    assert extract_flexible(text + "\n#### 7") == "7"


def test_known_answers_of_the_regression_examples():
    assert extract_strict("x" * 10 + "\\boxed{" * 20_000) is None
    assert extract_strict("\\boxed{" * 20_000 + "\\boxed{3}") == "3"
    assert extract_strict("\\boxed{1}\\boxed{2{}}\\boxed{") == "2{}"
    assert extract_flexible("12345" + "x" * (TAIL - 4)) == "12345"
    assert extract_flexible("12345" + "x" * (TAIL - 4) + " ") == "12345"
    assert is_correct("\x00#### 5\x00", "5") and is_correct("#### \u200b42\ufeff", "42")
    assert to_number("1\u200b000") == 1000 and to_number("\u2060-7\u00ad") == -7


# -- numbers --------------------------------------------------------------------------------------
@fuzz(2500)
@given(s=st.one_of(pieces(towers=True), completions()), noise=st.lists(
    st.tuples(st.integers(0, 10**6), st.sampled_from(INVISIBLE)), max_size=4))
@example(s="9" * 100_000, noise=[])
@example(s="0." + "3" * 100_000, noise=[])
@example(s="1/" * 200 + "1", noise=[])
def test_to_number(s, noise):
    RUNS["to_number"] += 1
    got, in_time = within(to_number, s)
    assert got is None or isinstance(got, Fraction)
    assert in_time
    assert to_number(s) == got
    for at, ch in noise:                                          # unseen characters are ignored
        at %= len(s) + 1
        s = s[:at] + ch + s[at:]
    assert to_number(s) == got


@pytest.mark.parametrize("s, value", [
    ("١٢", 12), ("０.５", Fraction(1, 2)), ("𝟏,𝟐𝟑𝟒", 1234), ("-٣/٤", Fraction(-3, 4)),
    ("¹²", None), ("1e999999", None), ("9" * 401, None), ("\\frac{1}{0}", None), ("--1", None),
])
def test_unicode_digits_are_digits_superscripts_are_not(s, value):
    # decision: Unicode decimal digits (Arabic-Indic, full-width, mathematical) read as the
    # number a reader sees; superscripts are exponents, not digits, so they are not numbers
    assert to_number(s) == value


# -- equivalence ----------------------------------------------------------------------------------
@fuzz(1500)
@given(pred=st.one_of(pieces(max_depth=SHALLOW), completions(max_depth=SHALLOW)),
       gold=st.one_of(st.sampled_from(GOLDS), pieces(max_depth=SHALLOW)))
@example(pred="٧", gold="7")
@example(pred="x = 9", gold="9")
@example(pred="0.333333", gold="1/3")
@example(pred="\\frac{" * 200 + "1}{2}" * 200, gold="1")
def test_is_equiv(pred, gold):
    RUNS["is_equiv"] += 1
    got, in_time = within(is_equiv, pred, gold, timeout=TIMEOUT, bound_timeout=TIMEOUT)
    assert isinstance(got, bool)
    assert in_time, (pred[:80], gold[:80])
    assert is_equiv(pred, gold, timeout=TIMEOUT) is got
    fast = verify._fast_verdict(pred, gold)
    if fast is None:
        return
    # a fast path answers only inside its grammar (printable ASCII around which only space and '$'
    # go), and there gives the worker's verdict: math-verify's, with no fast path
    assert got is fast
    assert PRINTABLE_ASCII.fullmatch(pred.strip()) and PRINTABLE_ASCII.fullmatch(gold.strip())
    if len(pred) <= verify_worker.MAX_CHARS and len(gold) <= verify_worker.MAX_CHARS:
        assert worker_verdict(pred, gold) in (fast, None), (pred[:80], gold[:80])


def worker_verdict(pred: str, gold: str) -> bool | None:
    """The worker's verdict within WORKER_TIMEOUT, or None where it did not answer in time (it
    was replaced): identical strings such as 20 nested parentheses take math-verify seconds."""
    starts = verify_worker.worker_starts()
    verdict = verify_worker.symbolic_equal(pred, gold, timeout=WORKER_TIMEOUT)
    return None if verify_worker.worker_starts() != starts else verdict


# -- whole completions and the reward functions ---------------------------------------------------
@fuzz(1000)
@given(texts=st.lists(completions(max_depth=SHALLOW), min_size=1, max_size=4), golds=st.data())
def test_scoring(texts, golds):
    RUNS["scoring"] += 1
    answers = [golds.draw(st.sampled_from(GOLDS)) for _ in texts]
    problems = [Problem(id=str(i), prompt="q", answer=a) for i, a in enumerate(answers)]
    for mode in ("strict", "flexible"):
        scored, in_time = within(score_batch, texts, answers, mode, timeout=TIMEOUT, bound_timeout=TIMEOUT,
                                 calls=len(texts))
        assert in_time
        assert all(isinstance(x, bool) for x in scored)
        assert scored == [is_correct(t, a, mode, timeout=TIMEOUT) for t, a in zip(texts, answers)]
        rewards = REWARDS["correctness"](texts, problems, mode=mode, correct=1.0, wrong=-1.0, timeout=TIMEOUT)
        assert rewards == [1.0 if ok else -1.0 for ok in scored]
    assert REWARDS["format"](texts, problems) == [float(extract_strict(t) is not None) for t in texts]


@fuzz(2500)
@given(noise=st.text(max_size=200), big=st.integers(0, 3), gold=st.integers(-10**6, 10**6))
@example(noise="}}}{{{\\frac{", big=0, gold=3)
@example(noise="12,", big=1, gold=-4)
def test_prefix_noise_keeps_a_correct_answer_correct(noise, big, gold):
    noise *= 1 + big * 200                                        # up to ~120 kB of noise
    assume("####" not in noise and "box" not in noise)            # no answer marker in the noise
    RUNS["prefix_noise"] += 1                                     # counted only when it runs
    for answer in (f"\n#### {gold}", f"\\boxed{{{gold}}}", f"#### {gold:,}"):
        assert is_correct(noise + answer, str(gold), timeout=TIMEOUT)
        assert is_correct(noise + answer, str(gold), "flexible", timeout=TIMEOUT)
    assert is_correct(noise + f" {gold}", str(gold), "flexible", timeout=TIMEOUT)


# -- hangs: the worker is killed, replaced, and answers correctly afterwards ----------------------
@fuzz(8)
@given(tower=st.sampled_from(["9^{9^{9^{9}}}", "10^{10^{10}}", "99^{99^{99}}"]), salt=st.integers(2, 10**6))
def test_towers_time_out_and_the_worker_recovers(tower, salt):
    RUNS["towers"] += 1
    starts = verify_worker.worker_starts()
    got, in_time = within(is_equiv, f"{tower}+{salt}", f"{salt}", timeout=0.3, bound_timeout=0.3)
    assert got is False and in_time                               # it never finishes in time
    assert verify_worker.worker_starts() > starts                 # the worker was killed and replaced
    # a fresh pair (no cache): sqrt(2 s^2)/s = sqrt(2), only math-verify can show it
    ok, in_time = within(is_equiv, f"\\frac{{\\sqrt{{{2 * salt * salt}}}}}{{{salt}}}", "\\sqrt{2}",
                         bound_timeout=2.0)
    assert ok is True and in_time and verify_worker.worker_ready()


@fuzz(12)
@given(pred=nested_latex(), gold=st.sampled_from(GOLDS))
def test_deep_latex_is_bounded(pred, gold):
    RUNS["deep_latex"] += 1
    got, in_time = within(is_equiv, pred, gold, timeout=0.3, bound_timeout=0.3)
    assert isinstance(got, bool) and in_time


def test_worker_restarts_exactly_once_per_timeout():
    verify._equiv_cached.cache_clear()                            # every check below reaches the worker
    before = verify_worker.worker_starts()
    assert is_equiv("10^{10^{10}}+1", "3", timeout=0.3) is False
    assert verify_worker.worker_starts() == before + 1
    assert is_equiv("\\frac{\\sqrt{8}}{2}", "\\sqrt{2}") is True
    assert is_equiv("(x+1)^2", "x^2+2x+1") is True
    assert verify_worker.worker_starts() == before + 1            # healthy calls start nothing


def test_payloads_execute_nothing():
    texts = [f"{wrap}" for p in PAYLOADS for wrap in (p, f"#### {p}", f"\\boxed{{{p}}}", f"answer: {p} 3")]
    golds = ["0", "x", PAYLOADS[0], "\\frac{1}{2}"]
    for t in texts:
        extract_strict(t), extract_flexible(t), to_number(t)
        for g in golds:
            is_equiv(t, g, timeout=TIMEOUT)
            is_equiv(extract_strict(t), g, timeout=TIMEOUT)
    score_batch(texts, ["0"] * len(texts), timeout=TIMEOUT)
    assert not PWNED.exists() and list(SENTINEL_DIR.iterdir()) == []


def test_score_batch_refuses_misaligned_lists():
    with pytest.raises(ValueError, match="2 completions but 1 answers; pass one answer per completion"):
        score_batch(["#### 1", "#### 2"], ["1"])


# -- the same rewards in threads and in processes --------------------------------------------------
def adversarial_batch(n: int, seed: int) -> tuple[list[str], list[Problem]]:
    """A fixed batch built from the same blocks as the strategies, with an explicit generator;
    two towers (they never finish, so every context must time out on them)."""
    rng = random.Random(seed)
    blocks = PAYLOADS + GOLDS + ["\\boxed{" * 3000, "9" * 50_000, "\\frac{" * 150 + "1}{2}" * 150,
                                 "#### ١٢", "\\boxed{\\frac{\\sqrt{8}}{2}}", "#### 0.50", "\\boxed{x + 1}",
                                 "#### 1\u200b234", "\x00#### 7", "(x+1)^2"]
    texts = []
    for i in range(n):
        text = rng.choice(["", "#### ", "\\boxed{"]) + rng.choice(blocks) + rng.choice(["", "}", "\n"])
        texts.append(rng.choice(["", "Let me think. ", "#### 9\n" * 50]) + text)
    texts[n // 3] = "\\boxed{9^{9^{9^{9}}}}"
    texts[2 * n // 3] = "#### 10^{10^{10}}"
    answers = [rng.choice(["7", "12", "1234", "\\frac{\\sqrt{2}}{1}", "1+x", "x^2+2x+1", "0.5", "9"])
               for _ in range(n)]
    return texts, [Problem(id=str(i), prompt="q", answer=a) for i, a in enumerate(answers)]


def rewards_of(batch: tuple[list[str], list[Problem]]) -> list[float]:
    """Both rewards of a batch, strict and flexible correctness; runs in any thread or process."""
    texts, problems = batch
    return (REWARDS["correctness"](texts, problems, timeout=1.0)
            + REWARDS["correctness"](texts, problems, mode="flexible", timeout=1.0)
            + REWARDS["format"](texts, problems))


def _chunks(texts, problems, k):
    return [(texts[i::k], problems[i::k]) for i in range(k)]


def _unchunk(parts: list[list[float]], n: int, k: int) -> list[float]:
    out = [0.0] * (3 * n)
    for i, part in enumerate(parts):
        rows = list(range(i, n, k))
        for block in range(3):
            for j, row in enumerate(rows):
                out[block * n + row] = part[block * len(rows) + j]
    return out


@pytest.mark.slow
def test_rewards_match_across_threads_and_processes():
    texts, problems = adversarial_batch(120, seed=0)
    n = len(texts)
    verify._equiv_cached.cache_clear()
    main_thread = rewards_of((texts, problems))
    assert 0 < sum(main_thread[:n]) < n                          # some right, some wrong
    verify._equiv_cached.cache_clear()                           # the others must recompute
    with ThreadPoolExecutor(8) as pool:
        threaded = _unchunk(list(pool.map(rewards_of, _chunks(texts, problems, 8))), n, 8)
    assert threaded == main_thread
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as pool:
        spawned = _unchunk(list(pool.map(rewards_of, _chunks(texts, problems, 2))), n, 2)
    assert spawned == main_thread
    # daemonic pool workers (multiprocessing forbids them children), forked from a process whose
    # own verifier worker is running: each must start its own, not share the parent's pipe
    ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    verify._equiv_cached.cache_clear()                           # forked children inherit the cache
    with ctx.Pool(2) as pool:
        pooled = _unchunk(pool.map(rewards_of, _chunks(texts, problems, 2)), n, 2)
    assert pooled == main_thread
    assert not PWNED.exists()


def test_zz_examples_run_in_total(capsys):
    if not all(RUNS[name] for name in FUZZ_TESTS):
        pytest.skip("the example count needs every fuzz test of this file in the same session")
    total = sum(RUNS[name] for name in FUZZ_TESTS)
    with capsys.disabled():
        print(f"\nverifier fuzzing: {total} examples run ({dict(RUNS)})")
    assert total >= 10_000
    assert not PWNED.exists()
