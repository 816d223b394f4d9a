"""The training half's commands: `sftrl train | eval | config`, as functions that return an exit code.

Owns: those three commands' arguments and bodies, and `run`, which turns expected failures into
one-line errors (exit code 2; SFTRL_DEBUG=1 shows the traceback). `sftrl.cli` adds the experiment
commands on top; a forked sweep run calls `main` directly, so the experiment half never imports
the command line it is started from. Heavy modules (torch, the trainer) are imported inside the
commands, so `--help` and config checks stay fast.
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
    from sftrl.parallel.dist import launcher_overrides
    cfg = load_config(path, [*overrides, *launcher_overrides(os.environ)])
    out = Path(a.out) if a.out else default_out(cfg.name, cfg.seed)
    if (out / "DONE").exists():
        raise ValueError(f"{out} already holds a finished run (DONE); choose another --out")
    from sftrl.lm.models import check_model_name, device_from
    device_from(cfg.device)                      # absent CUDA or a bad model path: fail before the
    check_model_name(cfg.model.name)             # run directory is created
    check_writable(out)
    from sftrl.train.fit import fit
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
    from sftrl.train.fit import Session, evaluate_all, quiet_libraries
    quiet_libraries()
    metrics, _ = evaluate_all(Session.build(cfg, RunDir(run)))
    print(json.dumps({k: round(v, 4) for k, v in metrics.items()}, indent=1))
    return 0


def preload() -> None:
    """Import everything a training run imports (torch, transformers' Llama and auto classes, the
    trainer) without running any torch computation, so processes forked afterwards start at once
    and inherit no started thread pool."""
    import sftrl.train.fit  # noqa: F401
    from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM,  # noqa: F401
                              PreTrainedTokenizerFast)


def add_commands(sub) -> None:
    """Add train, eval and config to an argparse subparsers object."""
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


def run(a) -> int:
    """Call the parsed command `a.fn(a)`; expected failures become one line on stderr, exit code 2."""
    try:
        return a.fn(a)
    except (ValueError, KeyError, OSError, RuntimeError) as e:
        if os.environ.get("SFTRL_DEBUG"):
            raise
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        print(f"sftrl {a.cmd}: error: {msg.splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2


def main(argv: list[str]) -> int:
    """`sftrl train|eval|config ...` without the experiment commands (what a forked sweep run calls)."""
    p = argparse.ArgumentParser(prog="sftrl")
    add_commands(p.add_subparsers(dest="cmd", required=True))
    return run(p.parse_args(argv))
