"""Task sources: arith generator (solutions, determinism, disjoint splits), reasoning-gym, JSONL, hub."""

import json
import time

import pytest

from sftrl.config import build_config
from sftrl.tasks import load_problems
from sftrl.tasks.arith import generate, solve
from sftrl.tasks.base import Problem
from sftrl.tasks.files import load_jsonl
from sftrl.tasks.rgym import load_rgym


@pytest.mark.parametrize("numbers, ops, steps, value", [
    ([12, 7, 3, 4], ["+", "*", "-"], ["7*3=21", "12+21=33", "33-4=29"], 29),
    ([3, 12, 2], ["-", "*"], ["12*2=24", "3-24=-21"], -21),
    ([3, 12, 2], ["-", "-"], ["3-12=-9", "-9-2=-11"], -11),
    ([2, 3, 4], ["*", "*"], ["2*3=6", "6*4=24"], 24),
    ([5, 0], ["*"], ["5*0=0"], 0),
])
def test_solve_by_hand(numbers, ops, steps, value):
    assert solve(numbers, ops) == (steps, value)


def test_arith_problem_format_and_oracle():
    problems = generate(split="train", n=500, seed=1)
    for p in problems:
        expr = p.prompt[:-1]
        assert p.prompt.endswith("=") and " " not in p.prompt
        assert int(p.answer) == eval(expr)                      # test oracle only, on our own strings
        body, final = p.solution.split(" #### ")
        assert final == p.answer
        for step in body.split(", "):
            lhs, rhs = step.rsplit("=", 1)
            assert eval(lhs.replace("--", "+")) == int(rhs)
        assert 2 <= p.meta["ops"] <= 3 and len(body.split(", ")) == p.meta["ops"]


def test_arith_determinism_and_disjoint_splits():
    a, b = generate(split="train", n=300, seed=5), generate(split="train", n=300, seed=5)
    assert a == b
    assert generate(split="train", n=300, seed=6) != a
    train = {p.prompt for p in generate(split="train", n=20000, seed=5)}
    test = {p.prompt for p in generate(split="test", n=2000, seed=5)}
    assert len(train) == 20000 and len(test) == 2000 and not train & test
    other_seed_test = {p.prompt for p in generate(split="test", n=2000, seed=9)}
    assert not train & other_seed_test                            # disjoint whatever the seeds


@pytest.mark.parametrize("kwargs, message", [
    ({"min_ops": 3, "max_ops": 2}, "min_ops <= max_ops"),
    ({"operators": "+/"}, "must be a non-empty subset"),
    ({"min_operand": 5, "max_operand": 2}, "min_operand <= max_operand"),
])
def test_arith_knob_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(split="train", n=5, seed=0, **kwargs)


def test_arith_impossible_size_fails_instead_of_looping():
    with pytest.raises(ValueError, match="could only make"):
        generate(split="test", n=500, seed=0, min_ops=1, max_ops=1, max_operand=3, operators="+")


@pytest.mark.parametrize("name", ["gsm_symbolic", "basic_arithmetic", "chain_sum"])
def test_reasoning_gym_adapter(name):
    test = load_rgym(split="test", n=5, seed=3, source=name)
    train = load_rgym(split="train", n=20, seed=3, source=name)
    assert load_rgym(split="test", n=5, seed=3, source=name) == test
    assert not {p.prompt for p in test} & {p.prompt for p in train}
    assert all(p.answer for p in test)
    if name == "gsm_symbolic":
        assert all(p.solution.endswith(f"#### {p.answer}") for p in train)
    else:
        assert all(p.solution is None for p in train)


def test_reasoning_gym_unknown_name():
    with pytest.raises(ValueError, match="did you mean 'gsm_symbolic'"):
        build_config({}, ["task.name=reasoning_gym:gsm_symbolc"])


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_jsonl_both_formats(tmp_path):
    gsm = _write(tmp_path / "gsm.jsonl", [{"question": "2+2?", "answer": "2+2=4\n#### 4"},
                                          {"question": "big?", "answer": "so\n#### 1,200"}])
    math = _write(tmp_path / "math.jsonl", [{"problem": "half?", "solution": "It is $\\boxed{\\frac{1}{2}}$."},
                                            {"problem": "p", "solution": "s", "answer": "7"}])
    got = load_jsonl(split="train", n=None, seed=0, source=str(gsm), test_file=str(math))
    assert got == [Problem(id="gsm-1", prompt="2+2?", answer="4", solution="2+2=4\n#### 4"),
                   Problem(id="gsm-2", prompt="big?", answer="1200", solution="so\n#### 1,200")]
    test = load_jsonl(split="test", n=None, seed=0, source=str(gsm), test_file=str(math))
    assert [p.answer for p in test] == ["\\frac{1}{2}", "7"]


@pytest.mark.parametrize("row, message", [
    ("{not json", ":2: not valid JSON"),
    ("[1, 2]", ":2: row is list, not a JSON object"),
    ({"question": "q"}, ":2: missing or non-text key(s) ['answer']"),
    ({"question": "q", "answer": "4"}, ":2: GSM8K answer has no '#### N'"),
    ({"problem": "p", "solution": "no box"}, ":2: MATH row has no 'answer' and no \\boxed{}"),
    ({"text": "x"}, ":2: unknown row format"),
])
def test_jsonl_malformed_rows_name_file_and_line(tmp_path, row, message):
    path = _write(tmp_path / "d.jsonl", [{"question": "ok", "answer": "#### 1"}, row])
    with pytest.raises(ValueError) as info:
        load_jsonl(split="train", n=None, seed=0, source=str(path), test_fraction=0.5)
    assert str(info.value).startswith(str(path) + message[:3]) and message[3:] in str(info.value)


def test_jsonl_missing_and_empty(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        build_config({}, [f"task.name=jsonl:{tmp_path / 'none.jsonl'}"])
    empty = tmp_path / "e.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="has no rows"):
        load_jsonl(split="train", n=None, seed=0, source=str(empty))


def test_load_problems_through_config(tmp_path):
    cfg = build_config({}, ["task.train_size=10", "task.test_size=4"])
    assert len(load_problems(cfg.task, "train")) == 10 and len(load_problems(cfg.task, "test")) == 4
    rows = [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(200)]
    path = _write(tmp_path / "g.jsonl", rows)
    cfg = build_config({}, [f"task.name=jsonl:{path}", "task.train_size=null", "task.test_size=null"])
    train, test = load_problems(cfg.task, "train"), load_problems(cfg.task, "test")
    assert len(train) + len(test) == 200 and not {p.prompt for p in train} & {p.prompt for p in test}
    assert 5 <= len(test) <= 40                                   # ~10% hash holdout


def test_hub_fails_fast():
    cfg = build_config({}, ["task.name=hf:openai/gsm8k:main"])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="cannot reach the Hugging Face hub"):
        load_problems(cfg.task, "train")
    assert time.perf_counter() - t0 < 8
