"""The run directory: the only interface between the training half and the experiment half.

Owns: the layout below (its file names), the writer (atomic writes, JSONL appends, provenance)
and the one reader the experiment half uses (`read_json`, `read_jsonl`, `read_config`,
`run_status`). Does not own checkpoint contents (the trainer decides what state to save; this
module only writes files safely). Imports neither torch nor the trainer.

    <run>/config.yaml       fully resolved config (every default written out)
    <run>/provenance.json   git sha, versions, hardware, command line, seed, start/end time
    <run>/metrics.jsonl     one line per logged step
    <run>/eval.jsonl        one line per evaluation
    <run>/samples.jsonl     completions with extracted answers, rewards, lengths
    <run>/final.json        headline numbers
    <run>/model/            final weights and tokenizer
    <run>/DONE              written last
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = "config.yaml"
PROVENANCE = "provenance.json"
METRICS = "metrics.jsonl"
EVAL = "eval.jsonl"
SAMPLES = "samples.jsonl"
FINAL = "final.json"
MODEL = "model"
DONE = "DONE"
ERROR = "ERROR"
"""Written by a sweep for a run that failed: first line the error, then the command and stderr."""
CHECKPOINTS = "checkpoints"
"""Folder of a run's checkpoints (`sftrl.train.checkpoints` writes what goes inside)."""
LOGS = (METRICS, EVAL, SAMPLES)
"""The append-only logs, truncated to the resumed step when a run resumes."""


def umask() -> int:
    """The process's file-creation mask (Linux reads it from /proc, elsewhere it is set and reset)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def shareable(path: Path) -> Path:
    """Give `path` the mode a plain `open()` or `mkdir()` would (0644 / 0755 under umask 022).

    `tempfile.mkstemp` and `mkdtemp` create 0600 / 0700 entries, so a file renamed into place
    from one would be unreadable to colleagues sharing a results folder."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~umask())
    return Path(path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path` (mode as
    `open()` would give it: 0644 under umask 022)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        shareable(Path(tmp))
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(obj):
    """JSON cannot hold NaN/inf portably: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj) -> str:
    return json.dumps(_clean(obj), separators=(",", ":"), allow_nan=False)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(_clean(obj), indent=1, allow_nan=False) + "\n")


def append_jsonl(path: Path, record: dict) -> None:
    """Append one line with a single write(2) on an O_APPEND descriptor, so lines never interleave
    and a killed writer leaves at most one torn last line (which readers skip)."""
    data = (dumps(record) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def check_writable(directory: Path) -> Path:
    """Create `directory` or fail in one line before any training time is spent."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".write_probe"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise OSError(f"run directory {str(directory)!r} is not writable ({e.strerror}); "
                      f"choose another with --out DIR") from None
    return directory


def git_sha(start: Path | None = None) -> str | None:
    """The commit of the checkout holding the sftrl sources (None outside git)."""
    here = Path(start or Path(__file__).resolve().parent)
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        sha = out.stdout.strip()
        if out.returncode != 0 or not sha:
            return None
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions(names=("sftrl", "torch", "transformers", "tokenizers", "accelerate", "peft",
                            "datasets", "math-verify", "reasoning-gym", "numpy", "scipy")) -> dict:
    from importlib import metadata
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": sys.version.split()[0],
            "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        pass
    return info


def truncate_jsonl(path: Path, max_step: int) -> None:
    """Keep only complete lines whose "step" is at most `max_step` (a resumed run recomputes the
    rest); rewritten atomically, so a kill during this loses nothing."""
    path = Path(path)
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:                 # a torn last line
            continue
        if isinstance(record, dict) and record.get("step", 0) <= max_step:
            keep.append(line)
    atomic_write_text(path, "".join(x + "\n" for x in keep))


def has_checkpoint(run_dir: Path) -> bool:
    folder = Path(run_dir) / CHECKPOINTS
    return folder.is_dir() and any(p.name.startswith("step-") for p in folder.iterdir())


class RunDir:
    """Paths and safe writers of one run directory."""

    writes = True

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.trackers = None
        """Experiment trackers (`sftrl.trackers.Trackers`) fed every metrics and eval line, then final."""

    def track(self, trackers) -> None:
        """Send every later metrics.jsonl and eval.jsonl line, and the final numbers, to `trackers`."""
        self.trackers = trackers

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def done(self) -> bool:
        return self.file(DONE).exists()

    def start(self, config_yaml: str, *, seed: int, argv: list[str] | None = None) -> None:
        """Write config.yaml and provenance.json at the start of a run."""
        check_writable(self.path)
        atomic_write_text(self.file(CONFIG), config_yaml)
        atomic_write_json(self.file(PROVENANCE), {
            "git_sha": git_sha(), "versions": package_versions(), "hardware": hardware(),
            "argv": list(argv if argv is not None else sys.argv), "cwd": os.getcwd(), "seed": seed,
            "start_time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "end_time": None,
        })

    def resume(self, *, argv: list[str] | None, step: int) -> None:
        """Note a resume in provenance.json (command line, time, step resumed from)."""
        prov_path = self.file(PROVENANCE)
        prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
        prov.setdefault("resumes", []).append({"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                               "argv": list(argv if argv is not None else sys.argv)})
        atomic_write_json(prov_path, prov)

    def log(self, name: str, record: dict) -> None:
        append_jsonl(self.file(name), record)
        if self.trackers is not None and name in (METRICS, EVAL):
            self.trackers.log(record)

    def finish(self, final: dict) -> None:
        """final.json, the end time in provenance.json, then DONE last (trackers get final first)."""
        if self.trackers is not None:
            self.trackers.finish(final)
        atomic_write_json(self.file(FINAL), final)
        prov_path = self.file(PROVENANCE)
        prov = json.loads(prov_path.read_text()) if prov_path.exists() else {}
        prov["end_time"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_json(prov_path, prov)
        atomic_write_text(self.file(DONE), time.strftime("%Y-%m-%dT%H:%M:%S%z") + "\n")


class QuietRunDir(RunDir):
    """The run directory as seen by processes other than rank 0: readable, never written."""

    writes = False

    def start(self, *args, **kwargs) -> None:
        pass

    def resume(self, *args, **kwargs) -> None:
        pass

    def track(self, trackers) -> None:
        pass

    def log(self, name: str, record: dict) -> None:
        pass

    def finish(self, final: dict) -> None:
        pass


# -- reading: what the experiment half sees of a run -----------------------------------------------
def read_json(path: Path) -> dict | None:
    """A JSON object file, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: Path, warnings: list) -> list[dict]:
    """The records of a JSONL log; an unreadable line (a torn last write) is skipped and noted
    in `warnings`."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for i, line in enumerate(path.read_text(errors="replace").splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            out.append(record)
        else:
            warnings.append(f"{path}:{i + 1}: unreadable line skipped (torn write?)")
    return out


def read_config(run: Path) -> dict:
    """The run's resolved config as a plain mapping ({} when missing or unreadable)."""
    import yaml

    from sftrl import yamlio
    try:
        data = yamlio.load((Path(run) / CONFIG).read_text()) if (Path(run) / CONFIG).is_file() else {}
    except (OSError, yaml.YAMLError):
        data = {}
    return data if isinstance(data, dict) else {}


def run_status(run: Path) -> tuple[str, str | None, dict | None]:
    """(status, first error line, final.json) of a run directory: done (DONE and a readable
    final.json), failed (ERROR, or DONE without final.json) or incomplete."""
    run = Path(run)
    final = read_json(run / FINAL)
    if (run / DONE).exists():
        return ("done", None, final) if final is not None else ("failed", "final.json is missing or unreadable", None)
    if (run / ERROR).is_file():
        return "failed", ((run / ERROR).read_text().splitlines() or ["(empty ERROR file)"])[0], None
    return "incomplete", "no DONE: the run did not finish", None
