"""Command line: `sftrl train | eval | config | sweep` (report and study join as they exist).

Owns: argument parsing and turning expected failures into one-line errors (exit code 2).
Set SFTRL_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _split_args(items: list[str]) -> tuple[str | None, list[str]]:
    """'[FILE] [key=value ...]' -> (file or None, overrides)."""
    if items and "=" not in items[0]:
        return items[0], items[1:]
    bad = [x for x in items if "=" not in x]
    if bad:
        raise ValueError(f"{bad[0]!r} is neither a config file (it must come first) nor key=value")
    return None, items


def cmd_config(a) -> int:
    from sftrl.config import explain, load_config, to_yaml
    if a.explain:
        for key, typ, default, meaning in explain():
            print(f"{key:<40} {typ:<28} {default:<22} {meaning}")
        return 0
    path, overrides = _split_args(a.args)
    if a.check:
        return check_runs(path, a.check)
    print(to_yaml(load_config(path, overrides)), end="")
    return 0


def check_runs(path: str | None, source: str) -> int:
    """Validate many runs against one config file in one process: `source` ('-' = stdin) is a
    JSON object {run_id: [key=value, ...]}. Sweeps call this before starting any run."""
    from sftrl.config import load_config
    runs = json.loads(sys.stdin.read() if source == "-" else Path(source).read_text())
    for run_id, overrides in runs.items():
        try:
            load_config(path, overrides)
        except (ValueError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise ValueError(f"run {run_id}: {msg}") from None
    print(f"{len(runs)} run config(s) valid")
    return 0


def default_out(name: str, seed: int) -> Path:
    return Path("runs") / name / f"{time.strftime('%Y%m%d-%H%M%S')}-s{seed}"


def cmd_train(a) -> int:
    from sftrl.config import load_config
    from sftrl.runlog import check_writable
    path, overrides = _split_args(a.args)
    if path is None:
        raise ValueError("sftrl train needs a config file first, e.g. sftrl train configs/sft_arith.yaml")
    from sftrl.dist import launcher_overrides
    cfg = load_config(path, [*overrides, *launcher_overrides(os.environ)])
    out = Path(a.out) if a.out else default_out(cfg.name, cfg.seed)
    if (out / "DONE").exists():
        raise ValueError(f"{out} already holds a finished run (DONE); choose another --out")
    from sftrl.models import check_model_name, device_from
    device_from(cfg.device)                      # absent CUDA or a bad model path: fail before the
    check_model_name(cfg.model.name)             # run directory is created
    check_writable(out)
    from sftrl.train import fit
    final = fit(cfg, out, argv=sys.argv)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in final.items()}, indent=1))
    print(f"run directory: {out}")
    return 0


def cmd_eval(a) -> int:
    from sftrl.config import build_config, load_yaml
    run = Path(a.run_dir)
    if not (run / "config.yaml").is_file() or not (run / "model").is_dir():
        raise ValueError(f"{run} is not a finished run directory (needs config.yaml and model/)")
    data = load_yaml(run / "config.yaml")
    cfg = build_config(data, [f"model.name={(run / 'model').resolve()}", *a.overrides])
    from sftrl.runlog import RunDir
    from sftrl.train import Session, quiet_libraries
    quiet_libraries()
    s = Session(cfg, RunDir(run))
    metrics, _ = s.evaluate_all()
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=1))
    return 0


def cmd_sweep(a) -> int:
    from sftrl.experiment.executors import ProgressDisplay
    from sftrl.experiment.sweep import load_sweep, run_sweep
    sw = load_sweep(a.sweep)
    workers = int(a.workers) if a.workers and a.workers.isdigit() else a.workers
    result = run_sweep(sw, a.out, executor=a.executor, address=a.address, workers=workers,
                       progress=None if a.dry_run else ProgressDisplay(sw.name), dry_run=a.dry_run)
    print(result.table())
    if result.interrupted:
        print("sweep stopped; run the same command again to finish it (finished runs are kept)", file=sys.stderr)
    return result.exit_code


def cmd_report(a) -> int:
    from sftrl.experiment.report import write_report
    html_path, md_path = write_report(a.exp_dir, metric=a.metric, baseline=a.baseline, out=a.out, seed=a.seed)
    print(f"report: {html_path}\nmarkdown: {md_path}")
    return 0


def cmd_study(a) -> int:
    from sftrl.experiment.study import StudyError, load_study, results_table, run_study, smoke
    if a.quick and a.full:
        raise ValueError("choose one of --quick and --full")
    spec = load_study("quick" if a.quick else "full" if a.full else a.study)
    if a.smoke:
        spec = smoke(spec)
    t0 = time.time()
    workers = int(a.workers) if a.workers and a.workers.isdigit() else a.workers
    try:
        exp = run_study(spec, a.out, workers=workers, executor=a.executor, address=a.address)
    except StudyError as e:
        raise ValueError(str(e)) from None
    print(results_table(exp, spec["metric"]))
    print(f"study {spec['name']}: {(time.time() - t0) / 60:.1f} min; report: {exp / 'report.html'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sftrl", description="SFT + RL for small reasoning models, "
                                "with studies that report their uncertainty.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one run: sftrl train CONFIG [key=value ...] [--out DIR]")
    t.add_argument("args", nargs="*", metavar="CONFIG_AND_OVERRIDES")
    t.add_argument("--out", help="run directory (default runs/<name>/<time>-s<seed>); an unfinished "
                   "one with a checkpoint and the same config is resumed from its newest checkpoint")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a finished run's model: sftrl eval RUN_DIR [key=value ...]")
    e.add_argument("run_dir")
    e.add_argument("overrides", nargs="*", help="e.g. eval.k=8 eval.n=100")
    e.set_defaults(fn=cmd_eval)
    c = sub.add_parser("config", help="print the resolved config: sftrl config [FILE] [key=value ...]")
    c.add_argument("args", nargs="*")
    c.add_argument("--explain", action="store_true", help="list every key with type, default and meaning")
    c.add_argument("--check", metavar="RUNS_JSON", help="validate many runs at once: a JSON object "
                   "{run_id: [key=value, ...]} in a file, or '-' for stdin")
    c.set_defaults(fn=cmd_config)
    w = sub.add_parser("sweep", help="run seeds x methods x grids: sftrl sweep SWEEP.yaml [--out DIR]")
    w.add_argument("sweep", help="sweep file (see configs/sweeps/)")
    w.add_argument("--out", help="experiment directory (default runs/<sweep name>/)")
    w.add_argument("--executor", default="local", help="local (subprocesses) or ray")
    w.add_argument("--address", help="Ray cluster address (default: start a local Ray)")
    w.add_argument("--workers", help="runs at a time (overrides the sweep file; 'auto' or N)")
    w.add_argument("--dry-run", action="store_true", help="validate and list the runs; train nothing")
    w.set_defaults(fn=cmd_sweep)
    r = sub.add_parser("report", help="write the HTML + Markdown report of an experiment: sftrl report EXP_DIR")
    r.add_argument("exp_dir", help="a sweep or study directory, or any folder of run directories")
    r.add_argument("--metric", help="headline metric (default: the sweep's, else the first */acc_strict)")
    r.add_argument("--baseline", help="method the others are compared against (default: the sweep's)")
    r.add_argument("--out", help="HTML path (default EXP_DIR/report.html; the .md goes beside it)")
    r.add_argument("--seed", type=int, default=0, help="seed of the bootstrap generator (default 0)")
    r.set_defaults(fn=cmd_report)
    st = sub.add_parser("study", help="run the SFT vs RL vs hybrid study and write its report: "
                        "sftrl study [NAME|FILE] [--quick|--full] [--out DIR]")
    st.add_argument("study", nargs="?", default="default", help="default (built in), quick, full, or a "
                    "study YAML file such as configs/studies/real-smollm2.yaml")
    st.add_argument("--quick", action="store_true", help="smoke version (about 2 minutes)")
    st.add_argument("--full", action="store_true", help="larger version: 10 seeds, per-seed warm starts (about 2 hours)")
    st.add_argument("--smoke", action="store_true", help="shrink the chosen study to a few steps, 2 seeds "
                    "and a handful of problems: checks that it runs end to end (e.g. a GPU study on a CPU)")
    st.add_argument("--out", help="experiment directory (default runs/<study name>/)")
    st.add_argument("--workers", help="runs at a time ('auto' or N)")
    st.add_argument("--executor", default="local", help="local (subprocesses) or ray")
    st.add_argument("--address", help="Ray cluster address")
    st.set_defaults(fn=cmd_study)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.fn(a)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        if os.environ.get("SFTRL_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"sftrl {a.cmd}: error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
