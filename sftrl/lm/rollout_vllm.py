"""vLLM as the rollout engine (optional extra `sftrl[vllm]`, CUDA only), colocated with the learner.

Owns: `VLLMSampler`, which holds a `vllm.LLM` on the policy's GPU, pushes the policy's current
weights into it before each rollout (`sync`, merged adapters for LoRA), and returns the same
`Rollout` that `sftrl.lm.rollout.sample` returns: prompt-major rows, left-padded prompts, EOS kept in
the completion, truncation flags.

Sampler/learner mismatch: vLLM's kernels give slightly different log-probs than the training
forward. The learner never uses the sampler's log-probs: the ratio's old log-probs are recomputed
by the training forward (as with the built-in engines), so the objective is the on-policy one
evaluated on vLLM's samples.

Status: written against vLLM's documented offline API (`LLM`, `SamplingParams`, colocated weight
loading through the driver worker, as TRL's colocate mode does); it has not been run in this
project's CI, which has no GPU. The tests only check that it is refused cleanly without vLLM.
"""

from __future__ import annotations

import os
import tempfile

import torch

from sftrl.batch import Rollout, encode_prompts


def require_vllm():
    """The vllm module, or a one-line error saying what is missing and how to get it."""
    if not torch.cuda.is_available():
        raise ValueError("rl.rollout.engine=vllm needs a CUDA GPU; on this machine use engine=auto")
    try:
        import vllm
    except ImportError:
        raise ValueError("rl.rollout.engine=vllm needs vLLM: pip install 'sftrl[vllm]' (GPU only), "
                         "or use engine=auto") from None
    return vllm


class VLLMSampler:
    """A colocated vLLM engine serving the current policy."""

    def __init__(self, model, tokenizer, *, gpu_memory_utilization: float = 0.3, max_model_len: int = 2048,
                 seed: int = 0):
        vllm = require_vllm()
        from sftrl.lm.models import save_policy
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")    # engine in this process
        self.tokenizer = tokenizer
        self._dir = tempfile.mkdtemp(prefix="sftrl-vllm-")
        save_policy(model, tokenizer, self._dir)                        # vLLM loads its first weights here
        dtype = next(model.parameters()).dtype
        self.llm = vllm.LLM(model=self._dir, dtype=str(dtype).removeprefix("torch."),
                            gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                            enable_prefix_caching=True, seed=seed)
        self._params = vllm.SamplingParams

    def sync(self, model) -> None:
        """Load the policy's current weights into the engine (adapters merged for the copy only)."""
        worker_model = self.llm.llm_engine.model_executor.driver_worker.model_runner.model
        if hasattr(model, "merge_adapter"):                             # peft: merge, copy out, unmerge
            model.merge_adapter()
            try:
                weights = [(_vllm_name(n), p.detach()) for n, p in model.named_parameters() if "lora_" not in n]
                worker_model.load_weights(weights)
            finally:
                model.unmerge_adapter()
        else:
            worker_model.load_weights([(n, p.detach()) for n, p in model.named_parameters()])
        self.llm.reset_prefix_cache()

    def sample(self, model, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float,
               top_p: float, greedy: bool, gen: torch.Generator | None) -> Rollout:
        self.sync(model)
        seed = int(torch.randint(0, 2 ** 31 - 1, (1,), generator=gen)) if gen is not None else None
        params = self._params(n=n, max_tokens=max_new_tokens, temperature=0.0 if greedy else temperature,
                              top_p=1.0 if greedy else top_p, seed=seed, skip_special_tokens=True)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        device = next(model.parameters()).device
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        rows, finished = [], []
        for out in outputs:                                             # prompt-major, n per prompt
            for c in out.outputs:
                ids = list(c.token_ids)
                done = c.finish_reason == "stop"
                if done and (not ids or ids[-1] != eos):
                    ids.append(eos)                                     # EOS belongs to the completion
                rows.append(ids[:max_new_tokens])
                finished.append(done)
        T = max(1, max(len(r) for r in rows))
        completion_ids = torch.full((len(rows), T), pad, dtype=torch.long)
        completion_mask = torch.zeros(len(rows), T)
        for i, r in enumerate(rows):
            completion_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
            completion_mask[i, :len(r)] = 1.0
        prompt_ids, prompt_mask = encode_prompts(self.tokenizer, prompts, device)
        return Rollout(prompt_ids=prompt_ids.repeat_interleave(n, 0), prompt_mask=prompt_mask.repeat_interleave(n, 0),
                       completion_ids=completion_ids.to(device), completion_mask=completion_mask.to(device),
                       truncated=~torch.tensor(finished, device=device),
                       texts=self.tokenizer.batch_decode(completion_ids, skip_special_tokens=True))


class LazyVLLM:
    """The vLLM engine as a rollout sampler `fn(model, prompts, n, gen) -> Rollout`, started on its
    first call (with that call's model) so configs that never reach an RL step never start it."""

    def __init__(self, tokenizer, *, max_new_tokens: int, temperature: float, top_p: float,
                 gpu_memory_utilization: float, seed: int):
        self.tokenizer, self.engine = tokenizer, None
        self.kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, greedy=False)
        self.gpu_memory_utilization, self.seed = gpu_memory_utilization, seed

    def __call__(self, model, prompts: list[str], n: int, gen: torch.Generator | None) -> Rollout:
        if self.engine is None:
            self.engine = VLLMSampler(model, self.tokenizer, gpu_memory_utilization=self.gpu_memory_utilization,
                                      seed=self.seed)
        return self.engine.sample(model, prompts, n=n, gen=gen, **self.kw)


def _vllm_name(name: str) -> str:
    """A peft parameter name as the plain model names it (base_model.model.X.base_layer.weight -> X.weight)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")
