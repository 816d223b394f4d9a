"""The run configuration: frozen, validated sections, each field documented once in its
`Field(description=...)`.

Owns: `Config` and its sections except RL (`sftrl.config.rl`). Registry names are checked here
at load time so a typo fails before any model is built; the registries themselves live beside
their code. Loading YAML and overrides is `sftrl.config.load`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from sftrl.config.base import Frozen, OptimConfig
from sftrl.config.presets import METHODS
from sftrl.config.rl import RLConfig
from sftrl.registry import RegistryError, did_you_mean


# ---------------------------------------------------------------------------------------------
class TinyModelConfig(Frozen):
    hidden_size: int = Field(64, ge=8, description="Width of the random-init Llama model.")
    num_layers: int = Field(2, ge=1, description="Number of transformer blocks.")
    num_heads: int = Field(4, ge=1, description="Attention heads (hidden_size must divide by it).")
    intermediate_size: int | None = Field(None, description="MLP width; None means 4 x hidden_size.")
    max_positions: int = Field(256, ge=16, description="Longest prompt + completion in tokens.")

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by "
                             f"num_heads={self.num_heads}; pick num_heads that divides it")
        return self


class LoraConfig(Frozen):
    enabled: bool = Field(False, description="Train LoRA adapters (peft) instead of all weights; the "
                          "KL reference is the same model with adapters off (no second copy).")
    r: int = Field(16, ge=1, description="Adapter rank.")
    alpha: float = Field(32.0, gt=0, description="Adapter scale numerator (scale = alpha / r).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] | str = Field("all-linear", description="Modules that get adapters: "
                                            "'all-linear' or names such as [q_proj, v_proj].")


class ModelConfig(Frozen):
    name: str = Field("tiny", description="'tiny' (random-init Llama + character tokenizer), "
                      "'smollm2-135m' (offline SmolLM2-135M-Instruct), a local path, or a hub id.")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig,
                                  description="Sizes of the 'tiny' preset (ignored otherwise).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Parameter dtype; keep float32 on CPU.")
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto", description="Wrap prompts in the tokenizer's chat template: auto = when it has one.")
    cache_dir: str | None = Field(None, description="Where converted models are cached; None = "
                                  "$SFTRL_CACHE or ~/.cache/sftrl.")
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters (peft).")
    autocast: Literal["off", "bf16"] = Field(
        "off", description="Mixed precision: 'bf16' runs forward passes (training, reference, rollouts, "
        "evaluation) under torch.autocast in bfloat16 while weights, gradients and optimiser state stay "
        "in model.dtype; log-softmax and entropy are always computed in float32.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute each decoder layer's activations in backward instead of keeping "
        "them (less memory, ~30% more compute per update).")


class TaskConfig(Frozen):
    name: str = Field("arith", description="Task source: the built-in generator, a reasoning-gym "
                      "dataset, a JSONL file in GSM8K or MATH format, or a hub dataset (needs the hub).")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Task-specific knobs, e.g. "
                                   "arith: {min_ops, max_ops, max_operand, operators}.")
    train_size: int | None = Field(20000, ge=1, description="Training problems (None = all the source has).")
    test_size: int | None = Field(300, ge=1, description="Held-out problems for evaluation.")
    seed: int = Field(1234, description="Seed of the data itself: fixed across run seeds so every "
                      "run sees the same train and test problems.")
    template: str = Field("plain", description="Prompt template (sftrl.data.tasks.prompts.TEMPLATES).")
    label: str | None = Field(None, description="Name used in metric keys; None = derived from name.")

    @field_validator("name")
    @classmethod
    def _known_task(cls, v):
        from sftrl.data.tasks import check_task_name
        check_task_name(v)
        return v

    @field_validator("kwargs")
    @classmethod
    def _known_knobs(cls, v, info):
        if "name" in info.data:                    # a bad name has already been reported
            from sftrl.data.tasks import check_task_kwargs
            check_task_kwargs(info.data["name"], v)
        return v

    @field_validator("template")
    @classmethod
    def _known_template(cls, v):
        from sftrl.data.tasks.prompts import TEMPLATES
        TEMPLATES[v]
        return v

    @property
    def key(self) -> str:
        """Label in metric keys: eval/<key>/acc_strict."""
        if self.label:
            return self.label
        base = self.name.split(":", 1)[-1]
        return Path(base).stem if self.name.startswith(("jsonl:", "hf:")) else base.replace("/", "_")


class SFTConfig(Frozen):
    batch_size: int = Field(64, ge=1, description="Demonstrations per optimiser step.")
    micro_batch_size: int | None = Field(None, description="Rows per forward/backward (gradient "
                                         "accumulation); None = the whole batch at once. Never "
                                         "changes the objective.")
    max_len: int = Field(256, ge=8, description="Demonstrations are cut to this many tokens "
                         "(prompt + completion).")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-3, warmup_steps=20, schedule="cosine",
                                                                     min_lr_ratio=0.1),
                               description="Optimiser of SFT steps.")


class Phase(Frozen):
    kind: Literal["sft", "rl", "alternate"] = Field(description="What the phase runs: sft, rl, or "
                                                    "alternate (rl_steps RL steps, then sft_steps SFT steps, repeated).")
    steps: int = Field(ge=0, description="Optimiser steps in this phase (all kinds counted).")
    rl_steps: int = Field(4, ge=1, description="alternate: RL steps per cycle.")
    sft_steps: int = Field(1, ge=1, description="alternate: SFT steps per cycle.")

    def kind_at(self, i: int) -> str:
        """Step kind of the phase's i-th step (0-based)."""
        if self.kind != "alternate":
            return self.kind
        return "rl" if i % (self.rl_steps + self.sft_steps) < self.rl_steps else "sft"

    def count(self, kind: str) -> int:
        """Steps of `kind` in this phase."""
        if self.kind != "alternate":
            return self.steps if kind == self.kind else 0
        cycle = self.rl_steps + self.sft_steps
        full, rest = divmod(self.steps, cycle)
        rl = full * self.rl_steps + min(rest, self.rl_steps)
        return rl if kind == "rl" else self.steps - rl


class ScheduleConfig(Frozen):
    steps: int = Field(200, ge=1, description="Step budget a `method` splits into phases (used only "
                       "when phases are not written out).")
    sft_frac: float = Field(0.5, ge=0, le=1, description="sft_then_rl: share of the budget spent on SFT first.")
    rl_steps: int = Field(4, ge=1, description="alternate: RL steps per cycle.")
    sft_steps: int = Field(1, ge=1, description="alternate: SFT steps per cycle.")


class EvalConfig(Frozen):
    every: int = Field(0, ge=0, description="Evaluate every N steps (0 = only at the end).")
    n: int | None = Field(None, description="Test problems used (None = all of task.test_size).")
    greedy: bool = Field(True, description="Report greedy pass@1 (strict and flexible extraction).")
    k: int = Field(0, ge=0, description="Samples per problem for pass@k / maj@k (0 = skip sampling).")
    k_n: int | None = Field(None, ge=1, description="Test problems given k samples each: the first k_n of "
                            "the evaluated ones (None = all). Sampling costs k greedy passes, so a large "
                            "greedy set can keep pass@k on a subset.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for pass@k / maj@k.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus threshold for pass@k / maj@k.")
    max_new_tokens: int = Field(64, ge=1, description="Generation cap at evaluation.")
    batch_size: int = Field(256, ge=1, description="Prompts per generation batch.")
    extra_tasks: list[TaskConfig] = Field(default_factory=list, description="More tasks to evaluate "
                                          "(e.g. harder arith levels for out-of-distribution tests).")

    @model_validator(mode="after")
    def _k_fits_batch(self):
        if self.k > self.batch_size:               # one problem's k samples share one generation batch
            raise ValueError(f"k={self.k} is more than batch_size={self.batch_size}: a problem's k "
                             f"samples are generated in one batch (lower eval.k or raise eval.batch_size)")
        return self


class LogConfig(Frozen):
    every: int = Field(1, ge=1, description="Write a metrics line every N steps.")
    samples_every: int = Field(50, ge=0, description="Write rollout completions to samples.jsonl "
                               "every N RL steps (0 = never; evaluations always write theirs).")
    samples_n: int = Field(16, ge=0, description="Rollout completions written each time (whole groups first).")
    progress: Literal["auto", "bar", "plain", "off"] = Field(
        "auto", description="Progress display: bar on a terminal, plain lines otherwise.")
    report_to: list[str] = Field(
        default_factory=list, description="Experiment trackers that also get every metrics and eval "
        "line (same keys and steps), the resolved config and the final numbers: any of "
        "sftrl.trackers.TRACKERS, each an optional extra (pip install 'sftrl[wandb]'). They write "
        "under the run directory (W&B offline), so nothing needs a network.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("report_to")
    @classmethod
    def _trackers_installed(cls, v):
        from sftrl.trackers import check
        check(v)                                     # unknown name or missing package: fail before training
        return list(dict.fromkeys(v))


class CheckpointConfig(Frozen):
    every: int = Field(0, ge=0, description="Save a checkpoint every N steps (0 = never); rerunning "
                       "the same command on the same --out resumes from the newest one exactly.")
    keep: int = Field(2, ge=1, description="Newest checkpoints kept; older ones are deleted.")


class GuardConfig(Frozen):
    nonfinite: Literal["stop", "skip"] = Field(
        "stop", description="A NaN/inf loss or gradient: stop with a clear message (the last "
        "checkpoint stays intact), or skip that update and count it in guard/skipped_steps.")
    max_skips: int = Field(10, ge=0, description="With skip: stop after this many skipped updates in a row.")


class DistConfig(Frozen):
    strategy: Literal["replicate", "fsdp"] = Field(
        "replicate", description="Several processes (torchrun / accelerate launch): 'replicate' keeps a full "
        "copy of weights and AdamW state on every rank and sums gradients (DDP-like); 'fsdp' shards them "
        "over the ranks with FSDP2 (one group per decoder layer, Llama/Qwen2-style models) and gathers the "
        "full weights for rollouts and evaluation. Both compute the same update. One process: ignored. "
        "accelerate launch --use_fsdp sets 'fsdp'.")


class Config(Frozen):
    name: str = Field("run", description="Run name; default output is runs/<name>/<run_id>.")
    seed: int = Field(0, description="Run seed: initialisation, data order and sampling derive from it.")
    device: str = Field("cpu", description="'cpu', 'cuda', 'cuda:N' or 'auto'.")
    threads: int = Field(0, ge=0, description="Torch CPU threads (0 = all cores).")
    deterministic: bool = Field(False, description="torch.use_deterministic_algorithms for exact reruns.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Policy model.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Training task (its test split is evaluated).")
    method: str | None = Field(None, description="Named method (config.presets.METHODS): fills phases "
                               "from `schedule` and rl.algo.preset where they are unset; docs/ALGORITHMS.md "
                               "says what each follows.")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="Budget and "
                                     "shape a `method` turns into phases.")
    phases: list[Phase] = Field(default_factory=lambda: [Phase(kind="sft", steps=600)],
                                description="The schedule, run in order (filled by `method` when unset).")
    sft: SFTConfig = Field(default_factory=SFTConfig, description="SFT step settings.")
    rl: RLConfig = Field(default_factory=RLConfig, description="RL step settings (rollout, reward, algorithm).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation settings.")
    log: LogConfig = Field(default_factory=LogConfig, description="Logging settings.")
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig, description="Checkpoints for exact resume.")
    guard: GuardConfig = Field(default_factory=GuardConfig, description="What a non-finite loss or gradient does.")
    dist: DistConfig = Field(default_factory=DistConfig, description="How several processes share the model.")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_method(cls, data):
        if not isinstance(data, dict) or data.get("method") is None:
            return data
        name = data["method"]
        if name not in METHODS:
            raise RegistryError(f"unknown method {name!r}; {did_you_mean(name, METHODS)}")
        phases, preset = METHODS[name]
        out = dict(data)
        if out.get("phases") is None:
            out["phases"] = phases(ScheduleConfig(**(data.get("schedule") or {})))
        if preset is not None:
            rl = dict(out.get("rl") or {})
            algo = dict(rl.get("algo") or {})
            algo.setdefault("preset", preset)
            out["rl"] = {**rl, "algo": algo}
        return out

    @field_validator("phases")
    @classmethod
    def _some_phase(cls, v):
        if not v:
            raise ValueError("phases is empty; add at least one phase, e.g. [{kind: sft, steps: 300}]")
        return v

    @field_validator("device")
    @classmethod
    def _device_form(cls, v):
        if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", v):  # whether CUDA exists is checked at train time
            raise ValueError(f"unknown device {v!r}; use cpu, cuda, cuda:N or auto")
        return v

    @field_validator("dist")
    @classmethod
    def _fsdp_supported(cls, v, info):
        rl = info.data.get("rl")                    # a bad rl section has already been reported
        if v.strategy == "fsdp" and rl is not None and rl.rollout.engine == "vllm":
            raise ValueError("strategy=fsdp cannot use rl.rollout.engine=vllm (the vLLM engine takes the "
                             "full weights from one process); use rl.rollout.engine=auto, or "
                             "dist.strategy=replicate")
        return v

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.phases)

    def steps_of(self, kind: str) -> int:
        """Optimiser steps of `kind` over the whole run (each kind's LR schedule spans these)."""
        return sum(p.count(kind) for p in self.phases)
