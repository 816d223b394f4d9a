"""Reading an experiment directory into per-run records (no torch, no trainer).

Owns: `load_experiment`, which reads `sweep.json` (or, without one, every run directory below
the folder) and each run's config.yaml, provenance.json, final.json, metrics.jsonl and eval.jsonl
into `Run` records with metrics as columns aligned on steps (NaN where a step has no value).
Only runs with DONE count as data; failed (ERROR) and unfinished runs are kept with their status
and first error line so the report can list them. A torn last line is skipped and noted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sftrl import runlog, yamlio
from sftrl.experiment.doc import setting


@dataclass
class Run:
    run_id: str
    path: Path
    method: str                                   # label in the report (a grid point is its own label)
    params: dict
    seed: int
    status: str                                   # done | failed | incomplete
    error: str | None = None
    base_method: str = ""                         # the sweep's method name
    config: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    final: dict = field(default_factory=dict)
    steps: np.ndarray = field(default_factory=lambda: np.zeros(0))
    metrics: dict = field(default_factory=dict)   # key -> [len(steps)] float array (NaN = absent)
    phases: list = field(default_factory=list)    # phase of each metrics line
    evals: list = field(default_factory=list)     # eval.jsonl records
    warnings: list = field(default_factory=list)

    def samples(self, kind: str | None = None) -> list[dict]:
        """samples.jsonl records (read on demand: they can be large), optionally of one kind."""
        return [r for r in runlog.read_jsonl(self.path / runlog.SAMPLES, self.warnings)
                if kind is None or r.get("kind") == kind]


@dataclass
class Experiment:
    path: Path
    name: str
    metric: str | None
    baseline: str | None
    methods: list
    grid: dict
    sensitivity: list
    seeds: list
    runs: list
    study: dict | None = None

    @property
    def done(self) -> list[Run]:
        return [r for r in self.runs if r.status == "done"]

    def method_runs(self, method: str) -> list[Run]:
        """Finished runs of `method` (a sweep method at its own settings, or a grid point), by seed."""
        return sorted((r for r in self.done if r.method == method and (not r.params or set(r.params) <= set(self.grid))),
                      key=lambda r: r.seed)


def _columns(records: list[dict]) -> tuple[np.ndarray, dict, list]:
    steps = np.array([r.get("step", i + 1) for i, r in enumerate(records)], dtype=float)
    keys = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    cols = {}
    for k in keys - {"step"}:
        cols[k] = np.array([r.get(k) if isinstance(r.get(k), (int, float)) else np.nan for r in records], dtype=float)
    return steps, cols, [r.get("phase") for r in records]


def load_run(path: Path, run_id: str, method: str | None = None, params: dict | None = None,
             seed: int | None = None) -> Run:
    warnings: list = []
    config = runlog.read_config(path)
    status, error, final = runlog.run_status(path)
    run = Run(run_id=run_id, path=path, method=method or config.get("name") or run_id, params=params or {},
              base_method=method or config.get("name") or run_id,
              seed=int(seed if seed is not None else config.get("seed", 0)), status=status, error=error,
              config=config, warnings=warnings)
    if status != "done":
        return run
    run.final = final
    run.provenance = runlog.read_json(path / runlog.PROVENANCE) or {}
    run.steps, run.metrics, run.phases = _columns(runlog.read_jsonl(path / runlog.METRICS, warnings))
    run.evals = runlog.read_jsonl(path / runlog.EVAL, warnings)
    return run


def load_experiment(path: str | Path) -> Experiment:
    """The experiment at `path`: a sweep's directory (sweep.json) or any folder of run directories."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory; give an experiment directory (sftrl sweep/study --out)")
    manifest = path / "sweep.json"
    study = yamlio.load((path / "study.yaml").read_text()) if (path / "study.yaml").is_file() else None
    if manifest.is_file():
        m = json.loads(manifest.read_text())
        runs = [load_run(path / r["dir"], r["run_id"], r["method"], r["params"], r["seed"]) for r in m["runs"]]
        sens = m.get("sensitivity") or []
        sens = sens if isinstance(sens, list) else [sens]
        grid = m.get("grid") or {}
        methods = list(m.get("methods") or {})
        if grid:       # every grid point of a method is compared as a method of its own
            for r in runs:
                if r.params and set(r.params) <= set(grid):
                    r.method = grid_label(r.base_method, r.params)
            methods = list(dict.fromkeys(r.method for r in runs if not r.params or set(r.params) <= set(grid)))
        return Experiment(path=path, name=m.get("name") or path.name, metric=m.get("metric"),
                          baseline=m.get("baseline"), methods=methods,
                          grid=m.get("grid") or {}, sensitivity=sens, seeds=list(m.get("seeds") or []),
                          runs=runs, study=study)
    dirs = sorted(p.parent for p in path.rglob(runlog.CONFIG) if runlog.CHECKPOINTS not in p.parts)
    if not dirs:
        raise ValueError(f"{path} holds no run directories (no config.yaml below it)")
    runs = [load_run(d, d.relative_to(path).as_posix()) for d in dirs]
    methods = list(dict.fromkeys(r.method for r in runs))
    return Experiment(path=path, name=path.name, metric=None, baseline=None, methods=methods, grid={},
                      sensitivity=[], seeds=sorted({r.seed for r in runs}), runs=runs, study=study)


# -- data helpers -------------------------------------------------------------------------------------
def final_value(run: Run, key: str):
    v = run.final.get(key)
    return float(v) if isinstance(v, (int, float)) and v is not None else None


def final_values(runs: list[Run], key: str) -> tuple[list[int], np.ndarray]:
    pairs = [(r.seed, final_value(r, key)) for r in runs if final_value(r, key) is not None]
    return [s for s, _ in pairs], np.array([v for _, v in pairs], dtype=float)


def config_at(tree: dict, key: str):
    """Value at a dotted key of a nested config (None when absent)."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def grid_label(method: str, params: dict) -> str:
    """'grpo [β = 0.04, T = 0.7]': a grid point's method label (read by people; unique per point)."""
    return method + " [" + ", ".join(setting(k, v) for k, v in params.items()) + "]"


def flatten(tree, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}; lists stay values."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict) and v:
                out.update(flatten(v, key + "."))
            else:
                out[key] = v
    return out
