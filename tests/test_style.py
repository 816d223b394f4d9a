"""The package's shape as tests: import layers point one way, no import cycles, the experiment half
never imports torch or the trainer, no module over 400 lines, and `rl_step` reads as one stage per
banner with no branch on a config string."""

import ast
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sftrl"
LAYERS = [
    ("sftrl.registry", "sftrl.runlog", "sftrl.yamlio", "sftrl.batch", "sftrl.parallel", "sftrl.trackers"),
    ("sftrl.algos", "sftrl.lm"),
    ("sftrl.data",),
    ("sftrl.config",),
    ("sftrl.train",),
    ("sftrl.entry",),
    ("sftrl.experiment",),
    ("sftrl.cli",),
]
"""Each module may import its own layer and the layers above it in this list, never one below."""
ALLOWED_UP = {("sftrl.experiment.launch", "sftrl.entry")}
"""The one edge that points down the list: a forked sweep run calls the training half's commands
(inside the child process only, and as a lazy import)."""
EXPERIMENT_MAY_IMPORT = ("sftrl.registry", "sftrl.runlog", "sftrl.yamlio", "sftrl.experiment")


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every module (sftrl's or external, top-level name) imported anywhere in `name`, lazily too."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return found


def _internal(name: str) -> set[str]:
    return {m for m in _imports(name) if m in MODULES and m != name}


def _layer(name: str) -> int:
    for i, heads in enumerate(LAYERS):
        if any(name == h or name.startswith(h + ".") for h in heads):
            return i
    raise AssertionError(f"{name} belongs to no layer of tests/test_style.py; add it to LAYERS")


def test_every_module_belongs_to_a_layer():
    for name in MODULES:
        if name != "sftrl":
            _layer(name)


def test_imports_point_one_way():
    upward = [(a, b) for a in MODULES if a != "sftrl" for b in _internal(a)
              if b != "sftrl" and _layer(b) > _layer(a) and (a, b) not in ALLOWED_UP]
    assert not upward, f"imports from a lower layer (see LAYERS): {upward}"


def test_no_import_cycles():
    graph = {m: _internal(m) for m in MODULES}
    state, stack, cycles = {}, [], []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in graph[u]:
            if state.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2
    for m in sorted(graph):
        if m not in state:
            visit(m)
    # a package importing its own submodules (re-exports in __init__) is not a cycle between concepts
    real = [c for c in cycles if not all(x.startswith(c[0] + ".") or x == c[0] for x in c)]
    assert not real, f"import cycles: {real}"


def test_experiment_half_imports_neither_torch_nor_the_trainer():
    for name in (m for m in MODULES if m.startswith("sftrl.experiment")):
        for imp in _imports(name):
            top = imp.split(".")[0]
            assert top not in ("torch", "transformers", "peft", "accelerate"), f"{name} imports {imp}"
            if top == "sftrl" and imp != "sftrl" and (name, imp) not in ALLOWED_UP:
                assert imp.startswith(EXPERIMENT_MAY_IMPORT), f"{name} imports {imp}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_over_400_lines(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= 400, f"{name} has {n} lines; split it by concept"


def test_rl_step_is_short_and_never_compares_a_config_string():
    from sftrl.train.rl_step import rl_step
    tree = ast.parse(inspect.getsource(rl_step))
    fn = tree.body[0]
    assert fn.end_lineno - fn.lineno + 1 <= 70
    compares = [ast.unparse(n) for n in ast.walk(fn) if isinstance(n, ast.Compare) and any(
        isinstance(c, ast.Constant) and isinstance(c.value, str) for c in [n.left, *n.comparators])]
    assert not compares, f"rl_step chooses behaviour by name: {compares}"
    params = list(inspect.signature(rl_step).parameters)
    assert params == ["p", "update", "streams", "cfg", "algo", "ctls", "t", "gen"]
