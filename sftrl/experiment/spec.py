"""What a sweep is: the sweep file's keys, their validation, and the plan of runs it expands to.

Owns: `KEYS`, `Sweep`, `RunSpec`, `load_sweep` and the plan (run ids, overrides, seed-major order).
Pure: nothing here starts a process or writes a file (`sweep.py` runs a plan).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sftrl import yamlio
from sftrl.registry import did_you_mean

KEYS = {
    "name": "experiment name; default output runs/<name>/ (default: the sweep file's stem)",
    "base": "base config, relative to the sweep file or the working directory (required)",
    "overrides": "key=value overrides applied to every run",
    "metric": "headline metric of the report, e.g. eval/arith/acc_strict",
    "baseline": "method the report compares the others against",
    "methods": "name: rl.algo preset | [key=value ...] | null (the base as is); or a list of presets",
    "grid": "key: [values]; the cartesian product is applied to every method",
    "sensitivity": "{method: M, params: {key: [values]}, seeds: N} (or a list of such blocks): one key "
                   "varied at a time around M, over the block's seeds (default: the sweep's)",
    "seeds": "list of seeds, or N meaning [0, ..., N-1]",
    "threads_per_run": "torch threads of each run (default 1)",
    "workers": "runs at a time; auto = cores // threads_per_run (default auto)",
    "retries": "attempts added for a run that crashes (default 0)",
}
NAME = re.compile(r"[A-Za-z0-9._-]+")
RESERVED = {"seed": "list seeds under `seeds:`", "threads": "set `threads_per_run:`",
            "log.progress": "the sweep sets it to plain"}


class SweepError(ValueError):
    """A sweep that cannot run; the message is one line saying what to change."""


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file."""
    name: str
    base: str                          # absolute path of the base config
    methods: dict                      # name -> tuple of overrides
    seeds: tuple
    overrides: tuple = ()
    grid: dict = field(default_factory=dict)   # key -> tuple of values
    sensitivity: tuple | None = None   # ({"method": str, "params": {key: [values]}, "seeds": [...]}, ...)
    metric: str | None = None
    baseline: str | None = None
    threads_per_run: int = 1
    workers: int | str = "auto"
    retries: int = 0
    text: str = ""                     # the sweep as given, copied to EXP_DIR/sweep.yaml


@dataclass(frozen=True)
class RunSpec:
    """One run: `sftrl train BASE *overrides --out path`."""
    run_id: str
    method: str
    params: dict
    seed: int
    overrides: tuple
    path: Path                         # absolute run directory

    @property
    def dir(self) -> str:
        return f"runs/{self.run_id}"

    def record(self) -> dict:
        return {"run_id": self.run_id, "method": self.method, "params": dict(self.params),
                "seed": self.seed, "overrides": list(self.overrides), "dir": self.dir}


# -- reading a sweep -----------------------------------------------------------------------------
def load_sweep(source, *, cwd: str | Path | None = None) -> Sweep:
    """A sweep from a YAML file path or a dict (a dict's `base` is relative to `cwd`)."""
    cwd = Path(cwd or os.getcwd())
    if isinstance(source, dict):
        plain = json.loads(json.dumps(source, default=str))      # tuples and paths as YAML can hold them
        return parse(plain, yaml.safe_dump(plain, sort_keys=False), cwd, cwd, "sweep")
    path = Path(source)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r} not found; give a YAML file (examples in configs/sweeps/)")
    text = path.read_text()
    try:
        data = yamlio.load(text)
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: a sweep is a mapping of keys ({', '.join(KEYS)})")
    return parse(data, text, path.parent, cwd, path.stem)


def parse(data: dict, text: str, root: Path, cwd: Path, default_name: str) -> Sweep:
    """Check every key of a sweep mapping; the first problem is a one-line SweepError."""
    for key in data:
        if key not in KEYS:
            raise SweepError(f"unknown sweep key {key!r}; {did_you_mean(key, KEYS)}")
    name = str(data.get("name") or default_name)
    if not NAME.fullmatch(name):
        raise SweepError(f"sweep name {name!r} may only use letters, digits, '.', '_' and '-'")
    methods = _methods(data.get("methods"))
    sw = Sweep(
        name=name, base=_base(data.get("base"), root, cwd), methods=methods,
        seeds=_seeds(data.get("seeds", 1)), overrides=_overrides(data.get("overrides") or [], "overrides"),
        grid=_grid(data.get("grid") or {}, "grid"),
        sensitivity=_sensitivity(data.get("sensitivity"), methods, _seeds(data.get("seeds", 1))),
        metric=_metric(data.get("metric")), baseline=_member(data.get("baseline"), methods, "baseline"),
        threads_per_run=_int(data.get("threads_per_run", 1), "threads_per_run", 1),
        workers=data.get("workers", "auto") if data.get("workers", "auto") == "auto"
        else _int(data["workers"], "workers", 1),
        retries=_int(data.get("retries", 0), "retries", 0), text=text)
    if not plan_points(sw):
        raise SweepError("the sweep has no runs; give at least one method")
    return sw


def _base(base, root: Path, cwd: Path) -> str:
    if not isinstance(base, str) or not base:
        raise SweepError("sweep key 'base' is required: the config every run starts from, "
                         "e.g. base: configs/grpo_arith.yaml")
    for folder in (root, cwd):
        if (folder / base).is_file():
            return str((folder / base).resolve())
    where = f"in {cwd}" if root == cwd else f"next to the sweep file ({root}) or in {cwd}"
    raise SweepError(f"sweep base {base!r} not found {where}; give a config file path relative to "
                     f"the sweep file or the working directory")


def _overrides(items, where: str) -> tuple:
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise SweepError(f"{where} must be a list of key=value strings, got {items!r}")
    for item in items:
        key = item.split("=", 1)[0] if isinstance(item, str) else ""
        if not isinstance(item, str) or "=" not in item or not key:
            raise SweepError(f"{where}: {item!r} is not of the form key=value (e.g. sft.optim.lr=3e-4)")
        if key in RESERVED:
            raise SweepError(f"{where}: {item!r} sets {key!r}, which the sweep controls; {RESERVED[key]}")
    return tuple(items)


def _methods(methods) -> dict:
    if isinstance(methods, list):                       # [grpo, dr_grpo]: presets by name
        methods = {m: m for m in methods}
    if not isinstance(methods, dict) or not methods:
        raise SweepError("sweep key 'methods' is required: name: preset or [key=value ...], "
                         "e.g. methods: {grpo: [rl.algo.preset=grpo]}")
    out = {}
    for name, spec in methods.items():
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise SweepError(f"method name {name!r} may only use letters, digits, '.', '_' and '-'")
        if isinstance(spec, str) and "=" not in spec:
            spec = [f"rl.algo.preset={spec}"]
        out[name] = _overrides([] if spec is None else [spec] if isinstance(spec, str) else spec,
                               f"method {name!r}")
    return out


def _grid(grid, where: str) -> dict:
    if not isinstance(grid, dict):
        raise SweepError(f"{where} must map keys to lists of values, e.g. {{rl.algo.kl.coef: [0.0, 0.04]}}")
    for key, values in grid.items():
        if not isinstance(key, str) or not re.fullmatch(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*", key):
            raise SweepError(f"{where}: {key!r} is not a dotted config key (e.g. rl.algo.kl.coef)")
        if key in RESERVED:
            raise SweepError(f"{where}: {key!r} is controlled by the sweep; {RESERVED[key]}")
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: {key} needs a non-empty list of values, e.g. [0.0, 0.04]")
    return {k: tuple(v) for k, v in grid.items()}


def _sensitivity(sens, methods: dict, seeds: tuple) -> tuple | None:
    """One block {method, params, seeds?} or a list of them: each key of a block is varied one at
    a time around its method, over the block's seeds (default: the sweep's)."""
    if sens is None:
        return None
    blocks = sens if isinstance(sens, list) else [sens]
    out = []
    for i, block in enumerate(blocks):
        where = f"sensitivity[{i}]" if isinstance(sens, list) else "sensitivity"
        if not isinstance(block, dict):
            raise SweepError(f"{where} must be {{method: NAME, params: {{key: [values]}}, seeds: N}}")
        for key in block:
            if key not in ("method", "params", "seeds"):
                raise SweepError(f"unknown {where} key {key!r}; {did_you_mean(key, ['method', 'params', 'seeds'])}")
        method = _member(block.get("method"), methods, f"{where}.method")
        params = _grid(block.get("params") or {}, f"{where}.params")
        if method is None or not params:
            raise SweepError(f"{where} needs a method and params, e.g. {{method: grpo, params: "
                             f"{{rl.algo.kl.coef: [0, 0.04]}}}}")
        out.append({"method": method, "params": {k: list(v) for k, v in params.items()},
                    "seeds": list(_seeds(block["seeds"]) if "seeds" in block else seeds)})
    return tuple(out)


def _metric(metric):
    if metric is not None and (not isinstance(metric, str) or "/" not in metric):
        raise SweepError(f"metric {metric!r} is not a metric key; write e.g. eval/arith/acc_strict")
    return metric


def _member(name, methods: dict, where: str):
    if name is not None and name not in methods:
        raise SweepError(f"{where} {name!r} is not a method of this sweep; {did_you_mean(name, methods)}")
    return name


def _seeds(seeds) -> tuple:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        if seeds < 1:
            raise SweepError(f"seeds: {seeds} runs nothing; give a count >= 1 or a list")
        return tuple(range(seeds))
    if not isinstance(seeds, list) or not seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in seeds) or len(set(seeds)) < len(seeds):
        raise SweepError(f"seeds must be a count or a list of distinct integers, got {seeds!r}")
    return tuple(seeds)


def _int(value, key: str, low: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise SweepError(f"{key} must be an integer >= {low}, got {value!r}")
    return value


# -- the plan ------------------------------------------------------------------------------------
def value_text(v) -> str:
    """A value as the override parser reads it back: 0.04, 1e-05, true, null, [1, 2]."""
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, (int, float, str)):
        return repr(v) if isinstance(v, float) else str(v)
    return json.dumps(v)


def plan_points(sw: Sweep) -> list[tuple[str, dict, tuple]]:
    """(method, params, seeds) triples: every method x the grid's product over all seeds, then the
    one-at-a-time sensitivity points over their block's seeds; a (method, params) pair already
    present only gains the seeds it lacked."""
    grid = sw.grid or {}
    points = [(m, dict(zip(grid, combo)), sw.seeds) for m in sw.methods
              for combo in itertools.product(*grid.values())]
    for block in sw.sensitivity or ():
        points += [(block["method"], {k: v}, tuple(block["seeds"])) for k, vs in block["params"].items() for v in vs]
    merged: dict[str, list] = {}
    for m, params, seeds in points:
        key = json.dumps([m, params], sort_keys=True, default=str)
        if key in merged:
            merged[key][2] = tuple(dict.fromkeys((*merged[key][2], *seeds)))
        else:
            merged[key] = [m, params, tuple(seeds)]
    return [tuple(x) for x in merged.values()]


def short_keys(keys) -> dict:
    """Each key's last two components, more where two keys would otherwise read the same."""
    keys = list(dict.fromkeys(keys))
    out = {}
    for key in keys:
        parts, n = key.split("."), 2
        while n < len(parts) and any(o != key and o.split(".")[-n:] == parts[-n:] for o in keys):
            n += 1
        out[key] = ".".join(parts[-n:])
    return out


def run_ids(items: list[tuple[str, dict, int]], short: dict) -> list[str]:
    """Readable ids `method__key=value__s<seed>`; a 6-hex hash is appended only to ids that
    would otherwise collide (or exceed 120 characters)."""
    def readable(m, params, seed):
        text = "__".join([m, *(f"{short[k]}={value_text(v)}" for k, v in params.items()), f"s{seed}"])
        return re.sub(r"[^A-Za-z0-9._=-]+", "-", text)

    def digest(item):
        return hashlib.sha1(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()[:6]
    ids = [readable(*item) for item in items]
    counts = Counter(ids)
    return [f"{i[:113]}-{digest(item)}" if counts[i] > 1 or len(i) > 120 else i
            for i, item in zip(ids, items)]


def experiment_dir(sw: Sweep, out_dir=None) -> Path:
    return Path(out_dir or Path("runs") / sw.name).resolve()


def plan_runs(sw: Sweep, exp: Path) -> list[RunSpec]:
    points = plan_points(sw)
    all_seeds = list(dict.fromkeys(seed for _, _, seeds in points for seed in seeds))
    items = [(m, params, seed) for seed in all_seeds for m, params, seeds in points if seed in seeds]  # seed-major
    short = short_keys(k for _, params, _ in points for k in params)
    out = []
    for run_id, (m, params, seed) in zip(run_ids(items, short), items):
        overrides = (*(o.replace("{seed}", str(seed)) for o in sw.overrides), *sw.methods[m],
                     *(f"{k}={value_text(v)}" for k, v in params.items()),
                     f"seed={seed}", f"threads={sw.threads_per_run}", "log.progress=plain")
        out.append(RunSpec(run_id, m, params, seed, overrides, exp / "runs" / run_id))
    return out


def plan(sweep, out_dir=None) -> list[RunSpec]:
    """The runs of a sweep (file path, dict or Sweep) in execution order. Seed-major, so paired
    comparisons across methods complete as early as possible."""
    sw = sweep if isinstance(sweep, Sweep) else load_sweep(sweep)
    return plan_runs(sw, experiment_dir(sw, out_dir))
