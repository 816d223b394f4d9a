"""Rewards per second of `is_equiv` on a fixed batch of distinct typical (pred, gold) pairs.

    python benchmarks/bench_verify.py [--rev REV] [--pairs 2000] [--repeats 3]

The batch (seeded) mixes what a reward sees on GSM8K/MATH-style answers: 35% the right number in
the gold's format, 25% a wrong number, 10% the right number in another format ('1,234', 'N.0',
'$N$', 'N.00', '2N/2'), 15% text around a number ('x = N', 'N cm', 'N%', '(N)', 'N dollars',
'The answer is N', 'n=N', 'N apples'; 60% of them right), 5% yes/no/letter answers and 10%
'\\frac' golds. Every pair is distinct and the cache is cleared before each pass, so every pair is
computed: this is the uncached rate (RL batches repeat pairs, which the cache answers for free).
Each pass gets a fresh math-verify worker, started and warmed before timing.

Each verifier runs in its own process: this checkout's, and with --rev that of git revision REV
(its `sftrl` package from `git archive`; the module is sftrl/verify.py before the package split,
sftrl/data/verify.py after). Prints the rates (median of --repeats passes), their ratio and how
many verdicts differ, then one JSON line.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def batch(n: int, seed: int = 3) -> list[tuple[str, str]]:
    """n distinct (pred, gold) pairs in the mix of the module docstring."""
    rng = random.Random(seed)
    pairs, seen = [], set()
    while len(pairs) < n:
        g = rng.randint(2, 99999)
        r = rng.random()
        gold = str(g)
        if r < 0.35:
            pred = gold
        elif r < 0.60:
            pred = str(g + rng.choice([-1, 1, 2, 10, -g // 2 or 1]))
        elif r < 0.70:
            pred = rng.choice([f"{g:,}", f"{g}.0", f"${g}$", f"{g}.00", f"{g * 2}/2"])
        elif r < 0.85:
            v = g if rng.random() < 0.6 else g + 1
            pred = rng.choice([f"x = {v}", f"{v} cm", f"{v}%", f"({v})", f"{v} dollars",
                               f"The answer is {v}", f"n={v}", f"{v} apples"])
        elif r < 0.90:
            pred, gold = rng.choice([("yes", "yes"), ("no", "yes"), ("Yes", "yes"), ("B", "A"),
                                     ("A", "A"), ("even", "odd")])
            pred += " " * rng.randint(0, 3)                         # keeps these pairs distinct
        else:
            a, b = rng.randint(1, 50), rng.randint(2, 60)
            gold = f"\\frac{{{a}}}{{{b}}}"
            pred = rng.choice([gold, f"\\frac{{{2 * a}}}{{{2 * b}}}", f"{a}/{b}", f"\\frac{{{a + 1}}}{{{b}}}",
                               f"\\dfrac{{{a}}}{{{b}}}", f"\\frac{{{a}\\sqrt{{2}}}}{{{b}}}"])
        if (pred, gold) not in seen:
            seen.add((pred, gold))
            pairs.append((pred, gold))
    return pairs


def module_of(tree: Path) -> str:
    """The verifier's module in the sftrl package under `tree`."""
    return "sftrl.data.verify" if (tree / "sftrl" / "data" / "verify.py").exists() else "sftrl.verify"


def measure(tree: Path, pairs: list[tuple[str, str]], repeats: int) -> dict:
    """Time `is_equiv` over `pairs` in this process, with the sftrl package under `tree`."""
    verify = importlib.import_module(module_of(tree))
    if not Path(verify.__file__).resolve().is_relative_to(tree.resolve()):     # an installed sftrl won
        raise SystemExit(f"imported {verify.__file__}, not the verifier under {tree}")
    worker = sys.modules[verify.symbolic_equal.__module__]._WORKER
    seconds, startups, verdicts, worker_ok = [], [], None, True
    for _ in range(repeats):
        worker.close()                                # a fresh worker: sympy's caches start empty too
        t0 = time.perf_counter()
        worker_ok &= verify.symbolic_equal("(x+1)^2", "x^2+2x+1", timeout=60.0)    # start, import, warm
        startups.append(time.perf_counter() - t0)
        verify._equiv_cached.cache_clear()
        t0 = time.perf_counter()
        verdicts = [verify.is_equiv(p, g) for p, g in pairs]
        seconds.append(time.perf_counter() - t0)
    return {"module": verify.__name__, "worker_ok": worker_ok, "worker_startup_s": round(min(startups), 2),
            "seconds": [round(s, 3) for s in seconds], "verdicts": verdicts}


def run_side(path: Path, pairs_file: Path, repeats: int) -> dict:
    """`measure` in a fresh process with `path` as the only sftrl on the path."""
    env = {**os.environ, "PYTHONPATH": str(path)}
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--side", str(path), "--pairs-file",
                          str(pairs_file), "--repeats", str(repeats)],
                         env=env, cwd=path, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


def summary(name: str, side: dict, n: int) -> dict:
    rate = n / statistics.median(side["seconds"])
    print(f"{name:>10}: {rate:8.0f} rewards/s  (passes {side['seconds']} s; {sum(side['verdicts'])} of {n} "
          f"rewarded; {side['module']}; worker {'ok' if side['worker_ok'] else 'NOT ANSWERING'})")
    return {"rewards_per_s": round(rate, 1), "seconds": side["seconds"], "rewarded": sum(side["verdicts"]),
            "worker_ok": side["worker_ok"], "module": side["module"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", help="also measure the verifier of this git revision")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    ap.add_argument("--pairs-file", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        pairs = [tuple(p) for p in json.loads(Path(args.pairs_file).read_text())]
        print(json.dumps(measure(Path(args.side), pairs, args.repeats)))
        return
    pairs = batch(args.pairs)
    result = {"pairs": len(pairs), "loadavg_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        pairs_file = Path(tmp) / "pairs.json"
        pairs_file.write_text(json.dumps(pairs))
        sides = {"this": run_side(ROOT, pairs_file, args.repeats)}
        if args.rev:
            old = Path(tmp) / "rev"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.rev, "sftrl"], cwd=ROOT, capture_output=True, check=True)
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            sides[args.rev] = run_side(old, pairs_file, args.repeats)
    for name, side in sides.items():
        result[name] = summary(name, side, len(pairs))
    if args.rev:
        this, rev = sides["this"], sides[args.rev]
        differ = [(p, g, a) for (p, g), a, b in zip(pairs, this["verdicts"], rev["verdicts"]) if a != b]
        ratio = result["this"]["rewards_per_s"] / result[args.rev]["rewards_per_s"]
        print(f"     ratio: {ratio:.3f} (this / {args.rev}); verdicts differ on {len(differ)} of {len(pairs)} pairs, "
              f"{sum(a for _, _, a in differ)} of them rewarded here only")
        for p, g, a in differ[:8]:
            print(f"            {p!r} vs {g!r}: {a} here")
        result.update(ratio=round(ratio, 3), verdicts_differ=len(differ),
                      rewarded_here_only=sum(a for _, _, a in differ))
    result["loadavg_after"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
