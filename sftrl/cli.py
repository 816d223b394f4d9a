"""Command line: `sftrl train | eval | config | sweep | report | study`.

Owns: the top-level parser and dispatch only. The training half's commands (train, eval, config)
and the one-line error handling are `sftrl.entry`; the experiment commands (sweep, report, study)
call `sftrl.experiment`. Set SFTRL_DEBUG=1 to see the full traceback of an error.
"""

from __future__ import annotations

import argparse
import sys
import time

from sftrl import entry


def cmd_sweep(a) -> int:
    from sftrl.experiment.progress import ProgressDisplay
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
    entry.add_commands(sub)
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
    st.add_argument("--quick", action="store_true", help="smoke version (under a minute)")
    st.add_argument("--full", action="store_true", help="larger version: 10 seeds, per-seed warm starts, "
                    "200 steps, every hybrid, sensitivity blocks (about 3.5 hours on 2 CPU cores)")
    st.add_argument("--smoke", action="store_true", help="shrink the chosen study to a few steps, 2 seeds "
                    "and a handful of problems: checks that it runs end to end (e.g. a GPU study on a CPU)")
    st.add_argument("--out", help="experiment directory (default runs/<study name>/)")
    st.add_argument("--workers", help="runs at a time ('auto' or N)")
    st.add_argument("--executor", default="local", help="local (subprocesses) or ray")
    st.add_argument("--address", help="Ray cluster address")
    st.set_defaults(fn=cmd_study)
    return p


def main(argv: list[str] | None = None) -> int:
    return entry.run(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
