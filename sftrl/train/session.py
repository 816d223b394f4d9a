"""What a run holds while it trains, as explicit parts.

Owns: `Rngs` (independent streams derived from the run seed), `Policy` (the frozen bundle a step
reads: model, tokenizer, KL reference and the functions bound to them once), `Streams` (problem
streams), `TrainState` (what `fit` threads from step to step: counters, the entropy controller,
ReLIFT's buffer, skipped updates), `Session` (those parts plus the optimisers and the run
directory) with `Session.build`, and `frozen_reference`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import numpy as np
import torch

from sftrl.algos import entropy
from sftrl.algos.algo import Algo, Controllers
from sftrl.algos.kl_control import make_kl_controller
from sftrl.config import Config
from sftrl.data.streams import ProblemStream, demo_batch
from sftrl.data.tasks import load_problems
from sftrl.data.tasks.prompts import TEMPLATES, completion_target
from sftrl.lm import rollout
from sftrl.lm.models import AdaptersOff, autocast, device_from, is_lora, load_policy, render_prompt, shard
from sftrl.parallel import dist, sharding
from sftrl.runlog import RunDir
from sftrl.train.compute import param_count
from sftrl.train.optim import Optimizers
from sftrl.train.relift import make_buffer


@dataclass
class Rngs:
    """Independent streams derived from the run seed (STYLE rule 7)."""

    data: np.random.Generator       # order of training problems
    sample: torch.Generator         # rollout sampling
    eval: torch.Generator           # evaluation sampling (pass@k), separate so eval never shifts training
    init_seed: int                  # model initialisation
    expert: np.random.Generator     # order of the expert demonstration stream (CHORD)


def make_rngs(seed: int, rank: int = 0) -> Rngs:
    data, sample, ev, init, expert = np.random.SeedSequence(seed).spawn(5)
    as_int = lambda ss: int(ss.generate_state(1)[0])  # noqa: E731
    rngs = Rngs(data=np.random.default_rng(data), sample=torch.Generator().manual_seed(as_int(sample)),
                eval=torch.Generator().manual_seed(as_int(ev)), init_seed=as_int(init),
                expert=np.random.default_rng(expert))
    if rank:                                      # each process samples its own completions
        rngs.sample.manual_seed(rngs.sample.initial_seed() + 7919 * rank)
    return rngs


@dataclass(frozen=True)
class Policy:
    """What a step reads of the model: the policy (trained in place), its tokenizer, the frozen KL
    reference (None until RL starts, or when no KL is kept), and what is bound to them once."""

    model: torch.nn.Module
    tokenizer: object
    ref: object | None
    sample: Callable        # (model, prompts, n, gen) -> Rollout: the rollout engine
    render: Callable        # (problem, template name) -> prompt text, chat template applied
    template: str           # the training task's prompt template
    max_len: int            # demonstrations are cut to this many tokens
    precision: Callable     # () -> the autocast context every forward runs in

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @cached_property
    def n_params(self) -> int:
        """Parameters a token's forward pass multiplies by (for the compute/* estimates)."""
        return param_count(self.model)

    def prompt(self, problem) -> str:
        return self.render(problem, self.template)

    def demos(self, problems: list):
        """Prompt + demonstration rows of `problems` (a Rollout-shaped batch)."""
        device = next(self.model.parameters()).device
        return demo_batch(self.tokenizer, [self.prompt(p) for p in problems],
                          [completion_target(p) for p in problems], max_len=self.max_len, device=device)


@dataclass
class Streams:
    """The seeded problem streams a run draws from."""

    train: ProblemStream
    expert: ProblemStream           # CHORD's expert demonstrations, in an order of their own

    def expert_batch(self, k: int) -> list:
        """This rank's block of the next `k` expert problems."""
        return dist.shard(self.expert.next(k))


@dataclass
class TrainState:
    """What `fit` threads from step to step (and checkpoints save): counters, controllers, buffers."""

    ctls: Controllers               # the entropy bonus and the KL coefficient
    buffer: object                  # sftrl.train.relift: SFTBuffer, or NullBuffer when unused
    step: int = 0
    kind_steps: dict = field(default_factory=dict)   # steps done per kind (sft, rl): schedules read these
    skipped: int = 0                # non-finite updates skipped, in total
    skipped_run: int = 0            # ... and in a row


@dataclass
class Session:
    """A run's parts: config, run directory, policy bundle, streams, RNGs, optimisers, state."""

    cfg: Config
    run: RunDir
    policy: Policy
    algo: Algo
    streams: Streams
    rngs: Rngs
    optims: Optimizers
    state: TrainState
    train_problems: list
    eval_sets: list                 # [(TaskConfig, problems)]
    last_groups: object = None      # the last RL step's groups (samples.jsonl)

    @property
    def model(self):
        return self.policy.model

    @property
    def ref(self):
        return self.policy.ref

    @classmethod
    def build(cls, cfg: Config, run: RunDir) -> "Session":
        device = device_from(cfg.device)
        dist.init_from_env(device)
        rngs = make_rngs(cfg.seed, dist.world()[0])
        train = load_problems(cfg.task, "train")
        eval_sets = [(cfg.task, load_problems(cfg.task, "test", cfg.eval.n))] + \
            [(t, load_problems(t, "test", cfg.eval.n)) for t in cfg.eval.extra_tasks]
        model, tokenizer = load_policy(cfg.model, seed=rngs.init_seed, device=device)
        if cfg.dist.strategy == "fsdp":
            model = shard(model)                          # one process: unchanged
        ro = cfg.rl.rollout
        if ro.engine == "vllm" and cfg.steps_of("rl"):
            from sftrl.lm.rollout_vllm import require_vllm
            require_vllm()                                # refused before any training, with what is missing
        sample = rollout.make_sampler(ro.engine, tokenizer, max_new_tokens=ro.max_new_tokens,
                                      temperature=ro.temperature, top_p=ro.top_p,
                                      vllm_memory=ro.vllm_gpu_memory, seed=cfg.seed)
        render = lambda problem, template: render_prompt(  # noqa: E731
            tokenizer, TEMPLATES[template](problem), cfg.model.chat_template)
        policy = Policy(model=model, tokenizer=tokenizer, ref=None, sample=sample, render=render,
                        template=cfg.task.template, max_len=cfg.sft.max_len,
                        precision=lambda: autocast(cfg.model, device))
        algo = Algo.from_config(cfg.rl)
        hy = cfg.rl.hybrid
        a = cfg.rl.algo
        state = TrainState(ctls=Controllers(entropy.make_controller(a.entropy.mode, a.entropy.kwargs),
                                            make_kl_controller(a.kl)),
                           buffer=make_buffer(algo.buffered, order=hy.buffer_order,
                                              trigger=hy.buffer_trigger or ro.prompts_per_step))
        return cls(cfg=cfg, run=run, policy=policy, algo=algo,
                   streams=Streams(ProblemStream(train, rngs.data), ProblemStream(train, rngs.expert)),
                   rngs=rngs, optims=Optimizers(model, lambda kind: cfg.steps_of("rl" if kind == "buffer" else kind)),
                   state=state, train_problems=train, eval_sets=eval_sets)

    def fresh_policy(self, device=None):
        """A new, unsharded policy built from the config (weights to be loaded by the caller)."""
        return load_policy(self.cfg.model, seed=self.rngs.init_seed,
                           device=device or next(self.model.parameters()).device)[0]


def frozen_reference(model, fresh=None):
    """The KL reference: a frozen copy of the policy as it enters RL. For LoRA whose adapters are
    still zero there, the same weights with adapters disabled (no second copy); after an SFT phase
    has moved them, a frozen copy with the adapters merged into the weights (peft's merge: base +
    delta, the sum the policy's own forward computes, so the two agree exactly at that moment).
    A sharded policy gets a sharded copy: `fresh()` (a new unsharded policy) is sharded the same
    way and each rank copies its own shards, so no rank ever holds the full reference; sharded
    LoRA keeps the adapters-off reference (docs/ALGORITHMS.md)."""
    if is_lora(model):
        if sharding.is_sharded(model) or not adapters_moved(model):
            return AdaptersOff(model)
        return copy.deepcopy(model).merge_and_unload().eval().requires_grad_(False)
    if sharding.is_sharded(model):
        ref = shard(fresh().eval().requires_grad_(False))
        ref.load_state_dict(model.state_dict())         # DTensor shards into the same layout: local copies
        return ref
    return copy.deepcopy(model).eval().requires_grad_(False)


def adapters_moved(model) -> bool:
    """Whether any LoRA adapter of `model` differs from its fresh state (peft starts B at zero)."""
    return any(bool(p.detach().ne(0).any()) for n, p in model.named_parameters() if "lora_B" in n)
