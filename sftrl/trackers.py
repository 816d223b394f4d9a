"""Experiment trackers: what a run writes to metrics.jsonl and eval.jsonl, also sent to
TensorBoard, Weights & Biases, trackio or MLflow (`log.report_to`, any subset).

Owns: `TRACKERS` (name -> `Tracker`: the modules it needs, the extra that installs them, how to
open a run), `check` (config time: known names, installed packages), `open_all` and `Trackers`
(the fan-out `RunDir` feeds). Each tracker gets the same namespaced keys at the same step, the
resolved config once, and the final numbers as `final/<key>`; every package is imported only when
its tracker opens. Nothing needs a network, and everything stays under the run directory unless
the tracker's own environment variable says otherwise:
  tensorboard  event files in RUN/tensorboard/        (tensorboard --logdir runs/)
  wandb        an offline run in RUN/wandb/            (WANDB_MODE, WANDB_DIR; wandb sync to upload)
  trackio      trackio's local store, project = run name (TRACKIO_DIR; trackio show)
  mlflow       a SQLite store RUN/mlflow.db            (MLFLOW_TRACKING_URI; mlflow ui --backend-store-uri)
Deviations: MLflow allows no '@' in a name, so `pass@4` is logged there as `pass_at_4`; values
that are not finite numbers (NaN, strings such as `phase`) are not sent to any tracker.
Does not decide what is logged or when (`sftrl.train.fit` and `RunDir` do).
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from sftrl.registry import Registry, RegistryError, did_you_mean


@dataclass(frozen=True)
class Tracker:
    """One experiment tracker."""

    modules: tuple[str, ...]
    """Modules it imports (checked with importlib.util.find_spec before training)."""
    extra: str
    """The optional dependency of sftrl that installs them: pip install 'sftrl[<extra>]'."""
    open: Callable
    """(run_dir, *, project, name, config) -> a writer with log(metrics, step) and finish(final, step)."""


TRACKERS = Registry("tracker")
"""Tracker name -> `Tracker`."""


def numbers(record: dict) -> dict[str, float]:
    """The finite numeric values of a log record, without its step."""
    out = {}
    for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
            out[key] = float(value)
    return out


def flatten(config: dict, prefix: str = "") -> dict:
    """{'rl': {'algo': {'preset': 'grpo'}}} -> {'rl.algo.preset': 'grpo'}; lists stay values."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# -- the four trackers -------------------------------------------------------------------------------
class _TensorBoard:
    """Scalar summaries written with tensorboard's own event-file writer (no TensorFlow, no torch)."""

    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict):
        from tensorboard.compat.proto.summary_pb2 import Summary
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self._summary = Summary
        self._writer = EventFileWriter(str(run_dir / "tensorboard"))
        text = "```json\n" + json.dumps(config, indent=1) + "\n```"   # shown in the TEXT tab
        self._text("config", text, 0)

    def _event(self, step: int, values: list) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        self._writer.add_event(Event(step=step, wall_time=time.time(), summary=self._summary(value=values)))
        self._writer.flush()                          # a killed run keeps every logged step

    def _text(self, tag: str, text: str, step: int) -> None:
        from tensorboard.compat.proto.summary_pb2 import SummaryMetadata
        from tensorboard.compat.proto.tensor_pb2 import TensorProto
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
        meta = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text"))
        tensor = TensorProto(dtype=7, string_val=[text.encode()],                # 7 = DT_STRING
                             tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]))
        self._event(step, [self._summary.Value(tag=tag, metadata=meta, tensor=tensor)])

    def log(self, metrics: dict, step: int) -> None:
        self._event(step, [self._summary.Value(tag=k, simple_value=v) for k, v in metrics.items()])

    def finish(self, final: dict, step: int) -> None:
        self.log({f"final/{k}": v for k, v in final.items()}, step)
        self._writer.close()


class _Wandb:
    """An offline W&B run in RUN/wandb (WANDB_MODE=online, with an account, logs live instead)."""

    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict):
        import wandb
        settings = wandb.Settings(console="off", x_disable_stats=True, silent=True)
        self._run = wandb.init(mode=os.environ.get("WANDB_MODE", "offline"), project=project, name=name,
                               dir=os.environ.get("WANDB_DIR", str(run_dir)), config=config,
                               settings=settings, reinit="create_new")

    def log(self, metrics: dict, step: int) -> None:
        self._run.log(metrics, step=step)

    def finish(self, final: dict, step: int) -> None:
        self._run.summary.update({f"final/{k}": v for k, v in final.items()})
        self._run.finish()


class _Trackio:
    """A run in trackio's local SQLite store (its dashboard: `trackio show --project NAME`)."""

    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict):
        import trackio
        self._run = trackio.init(project=project, name=name, config=config, auto_log_cpu=False,
                                 auto_log_gpu=False)

    def log(self, metrics: dict, step: int) -> None:
        self._run.log(metrics, step=step)

    def finish(self, final: dict, step: int) -> None:
        import trackio
        self._run.log({f"final/{k}": v for k, v in final.items()}, step=step)
        current = getattr(getattr(trackio, "context_vars", None), "current_run", None)
        if current is not None and current.get() is self._run:
            trackio.finish()                          # also clears it, so trackio's exit hook does not finish it again
        else:
            self._run.finish()


class _MLflow:
    """An MLflow run through `MlflowClient` (no global tracking state); params are the flattened config."""

    def __init__(self, run_dir: Path, *, project: str, name: str, config: dict):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        self._client = MlflowClient(tracking_uri=uri)
        found = self._client.get_experiment_by_name(project)
        exp = found.experiment_id if found else self._client.create_experiment(project)
        self._id = self._client.create_run(exp, run_name=name).info.run_id
        params = [Param(k, (v if isinstance(v, str) else json.dumps(v))[:6000])     # MLflow's value limit
                  for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):          # MLflow takes at most 100 params per batch
            self._client.log_batch(self._id, params=params[i:i + 100])

    def log(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        self._client.log_batch(self._id, metrics=[Metric(k.replace("@", "_at_"), v, now, step)
                                                  for k, v in metrics.items()])

    def finish(self, final: dict, step: int) -> None:
        self.log({f"final/{k}": v for k, v in final.items()}, step)
        self._client.set_terminated(self._id)


TRACKERS.register("tensorboard")(Tracker(("tensorboard",), "tensorboard", _TensorBoard))
TRACKERS.register("wandb")(Tracker(("wandb",), "wandb", _Wandb))
TRACKERS.register("trackio")(Tracker(("trackio",), "trackio", _Trackio))
TRACKERS.register("mlflow")(Tracker(("mlflow", "sqlalchemy"), "mlflow", _MLflow))


# -- checking and fan-out ------------------------------------------------------------------------------
def missing(name: str) -> list[str]:
    """Modules tracker `name` needs that are not installed."""
    out = []
    for module in TRACKERS[name].modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            out.append(module)
    return out


def check(names: list[str]) -> None:
    """Fail before training on an unknown tracker or one whose package is not installed."""
    for name in names:
        if name not in TRACKERS:
            raise RegistryError(f"log.report_to: unknown tracker {name!r}; {did_you_mean(name, TRACKERS)}")
        absent = missing(name)
        if absent:
            raise ValueError(f"tracker {name!r} needs {', '.join(absent)}, which is not installed: "
                             f"pip install 'sftrl[{TRACKERS[name].extra}]'")


class Trackers:
    """Every open tracker of a run; `log` takes a metrics.jsonl or eval.jsonl record."""

    def __init__(self, writers: list):
        self.writers = writers
        self.step = 0
        self.closed = not writers

    def log(self, record: dict) -> None:
        self.step = int(record.get("step", self.step))
        values = numbers(record)
        if values:
            for w in self.writers:
                w.log(values, self.step)

    def finish(self, final: dict) -> None:
        """Log the final numbers and close every tracker (once; later calls do nothing)."""
        if self.closed:
            return
        self.closed = True
        values = numbers(final)
        for w in self.writers:
            w.finish(values, int(final.get("step", self.step)))


def open_all(names: list[str], run_dir: Path, *, project: str, name: str, config: dict) -> Trackers:
    """Open the trackers `names` for one run; a run that ends without `finish` (an exception, a
    kill by signal that Python sees) still closes them at exit, so what was logged is kept."""
    check(names)
    writers = [TRACKERS[n].open(Path(run_dir), project=project, name=name, config=config) for n in names]
    trackers = Trackers(writers)
    if writers:
        atexit.register(trackers.finish, {})
    return trackers
