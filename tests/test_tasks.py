"""Task sources: arith generator (solutions, determinism, disjoint splits), reasoning-gym, JSONL, hub."""

import hashlib
import json
import re
import time

import pytest

from sftrl.config import build_config
from sftrl.data.tasks import load_problems
from sftrl.data.tasks.arith import generate, parse, solve
from sftrl.data.tasks.base import Problem
from sftrl.data.tasks.files import last_boxed, load_hub, load_jsonl
from sftrl.data.tasks.rgym import load_rgym

STEP = re.compile(r"^(-?\d+)([+\-*])(-?\d+)=(-?\d+)$")


# ---------------------------------------------------------------- arith: worked by hand
@pytest.mark.parametrize("expression, steps, value", [
    ("12+7*3-4", ["7*3=21", "12+21=33", "33-4=29"], 29),
    ("3-12*2", ["12*2=24", "3-24=-21"], -21),
    ("3-12-2", ["3-12=-9", "-9-2=-11"], -11),
    ("3-12+2*5", ["2*5=10", "3-12=-9", "-9+10=1"], 1),
    ("2*3*4", ["2*3=6", "6*4=24"], 24),
    ("20-3*7+2*2", ["3*7=21", "2*2=4", "20-21=-1", "-1+4=3"], 3),
    ("5*0", ["5*0=0"], 0),
    ("7", [], 7),
])
def test_solve_by_hand(expression, steps, value):
    assert solve(expression) == (steps, value)


def test_parse_and_its_errors():
    assert parse("12+7*3-4") == ([12, 7, 3, 4], ["+", "*", "-"])
    for bad in ["", "1+", "+1", "1 + 2", "1/2", "-3+1", "1++2"]:
        with pytest.raises(ValueError, match=re.escape(f"arith: cannot parse {bad!r};")):
            parse(bad)


def test_arith_pinned_problems():
    # the data behind docs/LOG.md: a change here silently changes every logged result
    assert [p.prompt for p in generate(split="train", n=4, seed=1234)] == \
        ["9*12+11-15=", "1*5*8*1=", "20-5*14=", "0+11+9-4="]
    first = generate(split="test", n=1, seed=1234)[0]
    assert first == Problem(id="arith-" + hashlib.blake2b(b"3*9-8", digest_size=6).hexdigest(),
                            prompt="3*9-8=", answer="19", solution="3*9=27, 27-8=19 #### 19")
    assert first.meta == {"ops": 2}


def test_arith_problem_format_and_oracle():
    problems = generate(split="train", n=1000, seed=1)
    for p in problems:
        expr = p.prompt[:-1]
        assert p.prompt.endswith("=") and re.fullmatch(r"\d+([+\-*]\d+)+", expr)
        assert int(p.answer) == eval(expr)                  # test oracle only, on our own strings
        body, final = p.solution.split(" #### ")
        assert final == p.answer
        steps = [STEP.match(s).groups() for s in body.split(", ")]
        for a, op, b, c in steps:
            assert eval(f"({a}){op}({b})") == int(c)
        ops = [op for _, op, _, _ in steps]
        assert ops == sorted(ops, key=lambda o: o != "*")  # every product before any sum
        assert int(steps[-1][3]) == int(p.answer) and len(steps) == p.meta["ops"]
        assert all(0 <= x <= 20 for x in parse(expr)[0])
    assert {p.meta["ops"] for p in problems} == {2, 3}
    assert len({p.id for p in problems}) == len({p.prompt for p in problems}) == 1000


def test_arith_determinism_and_disjoint_splits():
    a, b = generate(split="train", n=300, seed=5), generate(split="train", n=300, seed=5)
    assert a == b and [p.meta for p in a] == [p.meta for p in b]
    assert len({p.prompt for p in a} & {p.prompt for p in generate(split="train", n=300, seed=6)}) < 30
    train = {p.prompt for p in generate(split="train", n=20000, seed=5)}
    test = {p.prompt for p in generate(split="test", n=2000, seed=5)}
    assert len(train) == 20000 and len(test) == 2000 and not train & test
    assert not train & {p.prompt for p in generate(split="test", n=2000, seed=9)}   # any seeds
    small_train = {p.prompt for p in generate(split="train", n=3000, seed=5, max_ops=2)}
    assert not small_train & test                         # and any knobs


@pytest.mark.parametrize("kwargs, message", [
    ({"min_ops": 3, "max_ops": 2}, "arith: need 1 <= min_ops <= max_ops, got min_ops=3, max_ops=2"),
    ({"min_ops": 0}, "arith: need 1 <= min_ops <= max_ops, got min_ops=0, max_ops=3"),
    ({"operators": "+/"}, "arith: operators='+/' must be a non-empty subset of '+-*'"),
    ({"operators": ""}, "arith: operators='' must be a non-empty subset of '+-*'"),
    ({"min_operand": 5, "max_operand": 2}, "arith: need 0 <= min_operand <= max_operand, got 5..2"),
    ({"min_operand": -1}, "arith: need 0 <= min_operand <= max_operand, got -1..20"),
    ({"max_ops": "3"}, "arith: max_ops='3' must be an integer"),
    ({"split": "val"}, "arith: split must be 'train' or 'test', got 'val'"),
    ({"n": None}, "arith: a generator has no 'all problems'; set task.train_size and task.test_size"),
])
def test_arith_knob_errors(kwargs, message):
    args = {"split": "train", "n": 5, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        generate(**args)


def test_arith_capacity_exact_and_immediate():
    # 1 op of '+' over 0..9: 100 expressions; count the test bucket independently
    test_exprs = [f"{a}+{b}" for a in range(10) for b in range(10)
                  if int.from_bytes(hashlib.blake2b(f"{a}+{b}".encode(), digest_size=8).digest(), "big") % 10 == 0]
    assert len(test_exprs) == 7
    knobs = dict(min_ops=1, max_ops=1, max_operand=9, operators="+")
    got = generate(split="test", n=7, seed=0, **knobs)       # exactly exhausts the split
    assert sorted(p.prompt[:-1] for p in got) == sorted(test_exprs)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"^arith: 8 test problems asked but these knobs allow only 7 "
                                         r"distinct test expressions; widen"):
        generate(split="test", n=8, seed=0, **knobs)
    with pytest.raises(ValueError, match=r"allow at most 5334336 distinct expressions in both splits"):
        generate(split="train", n=10**7, seed=0)            # 21^3*3^2 + 21^4*3^3
    assert time.perf_counter() - t0 < 2


# ---------------------------------------------------------------- reasoning_gym
@pytest.mark.parametrize("name", ["gsm_symbolic", "basic_arithmetic", "chain_sum"])
def test_reasoning_gym_adapter(name):
    test = load_rgym(split="test", n=5, seed=3, source=name)
    train = load_rgym(split="train", n=300, seed=3, source=name)
    assert load_rgym(split="test", n=5, seed=3, source=name) == test
    assert load_rgym(split="train", n=300, seed=3, source=name) == train
    assert load_rgym(split="train", n=300, seed=4, source=name) != train
    assert len(test) == 5 and len(train) == 300
    assert not {p.prompt for p in test} & {p.prompt for p in train}
    assert len({p.id for p in train}) == 300 and all(p.answer for p in test + train)
    if name == "gsm_symbolic":                # worked chain of thought, one marker, exact answer
        for p in train:
            assert p.solution.endswith(f"\n#### {p.answer}") and p.solution.count("####") == 1
            assert len(p.solution.splitlines()) >= 3
    else:
        assert all(p.solution is None for p in train)
    if name == "chain_sum":                   # the question's own sum is the answer
        for p in train:
            expr = re.fullmatch(r"State the final answer to the following arithmetic problem: (.*) =",
                                p.prompt).group(1)
            assert str(eval(expr)) == p.answer              # test oracle only


def test_reasoning_gym_disjoint_at_scale_and_kwargs():
    test = {p.prompt for p in load_rgym(split="test", n=300, seed=1234, source="chain_sum")}
    train = {p.prompt for p in load_rgym(split="train", n=3000, seed=1234, source="chain_sum")}
    assert len(test) == 300 and len(train) == 3000 and not test & train
    four = load_rgym(split="train", n=50, seed=0, source="chain_sum", min_terms=4, max_terms=4)
    assert all(len(re.findall(r"\d+", p.prompt)) == 4 for p in four)


@pytest.mark.parametrize("kwargs, message", [
    ({"min_term": 3}, "reasoning_gym:chain_sum: unknown task.kwargs key 'min_term'; did you mean 'min_terms'"),
    ({"min_terms": 5, "max_terms": 2},
     "reasoning_gym:chain_sum: bad task.kwargs {'min_terms': 5, 'max_terms': 2} (max_terms must be >= min_terms)"),
    ({"size": 3}, "reasoning_gym:chain_sum: set the size through task.train_size and task.test_size"),
])
def test_reasoning_gym_bad_kwargs(kwargs, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        load_rgym(split="train", n=3, seed=0, source="chain_sum", **kwargs)


def test_reasoning_gym_unknown_name_and_impossible_size():
    with pytest.raises(ValueError, match=r"^config key 'task.name': unknown reasoning_gym dataset 'gsm_symbolc'; "
                                         r"did you mean 'gsm_symbolic'"):
        build_config({}, ["task.name=reasoning_gym:gsm_symbolc"])
    with pytest.raises(ValueError, match=r"^reasoning_gym:chain_sum: could only make \d+ distinct test "
                                         r"problems of 500"):
        load_rgym(split="test", n=500, seed=0, source="chain_sum", min_terms=2, max_terms=2,
                  min_digits=1, max_digits=1)


# ---------------------------------------------------------------- JSONL
def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("text, want", [
    ("so $\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
    ("\\boxed{1} then \\boxed{ {a}{b} }", "{a}{b}"),
    ("no box", None),
    ("\\boxed{\\frac{1}{2}", None),                        # unbalanced
])
def test_last_boxed(text, want):
    assert last_boxed(text) == want


def test_jsonl_both_formats(tmp_path):
    gsm = _write(tmp_path / "gsm.jsonl", [{"question": "2+2?", "answer": "2+2=4\n#### 4"}, "",
                                          {"question": "big?", "answer": "so\n#### 1,200 "}])
    math = _write(tmp_path / "math.jsonl", [{"problem": "half?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
                                            {"problem": "p", "solution": "s", "answer": 7},
                                            {"question": "q", "answer": "x #### 3 #### -5"}])
    got = load_jsonl(split="train", n=None, seed=0, source=str(gsm), test_file=str(math))
    assert got == [Problem(id="gsm-1", prompt="2+2?", answer="4", solution="2+2=4\n#### 4"),
                   Problem(id="gsm-3", prompt="big?", answer="1200", solution="so\n#### 1,200 ")]
    test = load_jsonl(split="test", n=None, seed=0, source=str(gsm), test_file=str(math))
    assert test == [Problem(id="math-1", prompt="half?", answer="\\frac{1}{2}",
                            solution="It is $\\boxed{\\frac{1}{2}}$."),
                    Problem(id="math-2", prompt="p", answer="7", solution="s"),
                    Problem(id="math-3", prompt="q", answer="-5", solution="x #### 3 #### -5")]
    assert load_jsonl(split="test", n=2, seed=0, source=str(gsm), test_file=str(math)) == test[:2]


@pytest.mark.parametrize("row, message", [
    ("{not json", "not valid JSON: Expecting property name enclosed in double quotes at column 2 "
                  "(write one JSON object per line)"),
    ("[1, 2]", "row is list, not a JSON object (write one object per line)"),
    ({"question": "q"}, "GSM8K row has no 'answer' key (GSM8K rows need 'question' and 'answer' as strings)"),
    ({"answer": "#### 1"}, "GSM8K row has no 'question' key (GSM8K rows need 'question' and 'answer' as strings)"),
    ({"question": "q", "answer": 4}, "GSM8K row's 'answer' is int, not text (GSM8K rows need 'question' "
                                     "and 'answer' as strings)"),
    ({"question": "q", "answer": "4"}, "GSM8K answer has no '#### N' final line (end the answer with "
                                       "'#### <number>')"),
    ({"question": "q", "answer": "4 ####  "}, "GSM8K answer has nothing after its last '####' (write the "
                                              "final answer after it: '#### <number>')"),
    ({"problem": "p"}, "MATH row has no 'solution' key (MATH rows need 'problem' and 'solution' as strings)"),
    ({"problem": "p", "solution": "no box"}, "MATH row has no 'answer' and no \\boxed{} in its solution "
                                             "(add an 'answer' key)"),
    ({"problem": "p", "solution": "s", "answer": " "},
     "MATH row's answer ' ' is empty or not a value (give 'answer' as text or a number, or a non-empty \\boxed{})"),
    ({"text": "x"}, "unknown row format with keys ['text'] (GSM8K needs question/answer, MATH needs "
                    "problem/solution)"),
])
def test_jsonl_malformed_rows_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "d.jsonl", [{"question": "ok", "answer": "#### 1"}, "", row])
    with pytest.raises(ValueError) as info:
        load_jsonl(split="train", n=None, seed=0, source=str(path))
    assert str(info.value) == f"{path}:3: {message}"


def test_jsonl_missing_empty_and_bad_knobs(tmp_path):
    missing = tmp_path / "none.jsonl"
    named = re.escape(repr(str(missing)))
    with pytest.raises(ValueError, match=f"^config key 'task.name': task file {named} not found; check the path "
                                         f"after 'jsonl:'$"):
        build_config({}, [f"task.name=jsonl:{missing}"])
    empty = _write(tmp_path / "e.jsonl", ["", "  "])
    with pytest.raises(ValueError, match="has no rows; it needs one JSON object per line$"):
        load_jsonl(split="train", n=None, seed=0, source=str(empty))
    good = _write(tmp_path / "g.jsonl", [{"question": "q", "answer": "#### 1"}])
    with pytest.raises(ValueError, match="not found; check task.kwargs.test_file$"):
        load_jsonl(split="test", n=None, seed=0, source=str(good), test_file=str(missing))
    with pytest.raises(ValueError, match=r"^jsonl: test_fraction=1.5 must be a number between 0 and 1"):
        load_jsonl(split="train", n=None, seed=0, source=str(good), test_fraction=1.5)


def test_load_problems_through_config(tmp_path):
    cfg = build_config({}, ["task.train_size=10", "task.test_size=4", "task.kwargs={max_ops: 2}"])
    train, test = load_problems(cfg.task, "train"), load_problems(cfg.task, "test")
    assert train == generate(split="train", n=10, seed=cfg.task.seed, max_ops=2) and len(test) == 4
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(200)]
    path = _write(tmp_path / "g.jsonl", rows)
    cfg = build_config({}, [f"task.name=jsonl:{path}", "task.train_size=null", "task.test_size=null"])
    train, test = load_problems(cfg.task, "train"), load_problems(cfg.task, "test")
    assert sorted(p.prompt for p in train + test) == sorted(r["question"] for r in rows)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    assert 5 <= len(test) <= 40                               # ~10% hash holdout
    assert [p.id for p in train] == sorted((p.id for p in train), key=lambda s: int(s.split("-")[1]))
    assert load_problems(cfg.task, "train", n=3) == train[:3]  # file order, first n
    cfg = build_config({}, [f"task.name=jsonl:{path}", "task.kwargs={test_fraction: 0.5}"])
    assert 70 <= len(load_problems(cfg.task, "test")) <= 130


# ---------------------------------------------------------------- hub
@pytest.mark.parametrize("offline_env", [True, False])
def test_hub_fails_fast(monkeypatch, offline_env):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if offline_env:
        monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = build_config({}, ["task.name=hf:openai/gsm8k:main"])
    import sftrl.lm.models  # noqa: F401  (torch's import time is not what is timed here)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"^cannot reach the Hugging Face hub for 'openai/gsm8k' \(offline\?\); "
                                         r"download it as JSONL and use jsonl:<path>$"):
        load_problems(cfg.task, "train")
    assert time.perf_counter() - t0 < (0.5 if offline_env else 5)


def test_hub_rows_through_datasets(tmp_path, monkeypatch):
    """The hf: path with a real `datasets.load_dataset` on a local folder (the hub check aside)."""
    import datasets
    import sftrl.lm.models
    monkeypatch.setattr(sftrl.lm.models, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    folder = tmp_path / "ds"
    folder.mkdir()
    _write(folder / "train.jsonl", [{"question": "q1", "answer": "a\n#### 1"},
                                    {"question": "q2", "answer": "#### 2,000"}])
    _write(folder / "test.jsonl", [{"question": "t", "answer": "#### 3"}])
    src = str(folder)
    assert load_hub(split="train", n=None, seed=0, source=src) == [
        Problem(id=f"{src}-train-0", prompt="q1", answer="1", solution="a\n#### 1"),
        Problem(id=f"{src}-train-1", prompt="q2", answer="2000", solution="#### 2,000")]
    assert [p.answer for p in load_hub(split="test", n=5, seed=0, source=src)] == ["3"]
    assert len(load_hub(split="train", n=1, seed=0, source=src)) == 1
