"""Parity with TRL: on identical tensors our loss equals GRPOTrainer's for the matching settings.

Runs only when `trl` is installed (`pip install -e .[trl]`). The inputs are hand-made (prompts,
completions with padding, advantages, perturbed old and reference log-probs) and fed to TRL's own
`_compute_loss`; ours is the registered surrogate + weighting + beta * k3 on the same model.
Prompts are unpadded because TRL leaves position ids to the model, which ignores left padding.
TRL >= 1.x multiplies the KL term by the importance ratio by default (`use_bias_correction_kl`);
DeepSeekMath's k3 term has no such factor, so the comparison turns it off.
"""

import pytest
import torch
from torch.testing import assert_close

trl = pytest.importorskip("trl")

from sftrl.algos.policy import ADVANTAGES, KL, SURROGATES, WEIGHTINGS  # noqa: E402
from sftrl.config.schema import TinyModelConfig  # noqa: E402
from sftrl.lm.logprobs import token_logp_and_entropy  # noqa: E402
from sftrl.lm.models import build_char_tokenizer, save_policy, tiny_model  # noqa: E402

OURS = {"grpo": ("seq_mean_token_mean", {}), "dapo": ("token_mean", {}),
        "dr_grpo": ("const_len", {"max_len": 6})}


def make_trainer(tmp_path, loss_type, beta):
    from datasets import Dataset
    tok = build_char_tokenizer()
    model = tiny_model(TinyModelConfig(hidden_size=32, num_layers=2), len(tok), seed=0,
                       pad_id=tok.pad_token_id, eos_id=tok.eos_token_id)
    save_policy(model, tok, tmp_path / "m")      # TRL reloads the reference from the model's path
    args = trl.GRPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, num_generations=4,
                          max_completion_length=6, beta=beta, epsilon=0.2, loss_type=loss_type,
                          bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False, report_to=[],
                          logging_steps=1, use_bias_correction_kl=False)
    data = Dataset.from_dict({"prompt": ["1+2=", "3*4="]})
    return trl.GRPOTrainer(model=str(tmp_path / "m"), reward_funcs=lambda completions, **kw: [0.0] * len(completions),
                           args=args, train_dataset=data, processing_class=tok)


@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_loss_equals_trl(tmp_path, loss_type, beta):
    trainer = make_trainer(tmp_path, loss_type, beta)
    model = trainer.model.eval()                       # eval: TRL applies no accumulation normaliser
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, 100, (4, 5), generator=g)
    completion_ids = torch.randint(3, 100, (4, 6), generator=g)
    completion_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
    rewards = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    adv = ADVANTAGES["grpo"](rewards, eps=1e-4).reshape(-1)   # TRL: (r - mean) / (std + 1e-4)
    ids = torch.cat([prompt_ids, completion_ids], 1)
    attn = torch.cat([torch.ones(4, 5, dtype=torch.long), completion_mask], 1)
    with torch.no_grad():
        logp_now, _ = token_logp_and_entropy(model, ids, attn.float(), 5)
    old = logp_now + 0.3 * torch.randn(4, 6, generator=g)       # ratios away from 1, some clipped
    ref = logp_now + 0.5 * torch.randn(4, 6, generator=g)
    inputs = {"prompt_ids": prompt_ids, "prompt_mask": torch.ones(4, 5, dtype=torch.long),
              "completion_ids": completion_ids, "completion_mask": completion_mask, "advantages": adv,
              "old_per_token_logps": old, "ref_per_token_logps": ref,
              "num_items_in_batch": completion_mask.sum()}
    theirs = trainer._compute_loss(model, inputs)

    mask = completion_mask.float()
    name, kw = OURS[loss_type]
    logp, _ = token_logp_and_entropy(model, ids, attn.float(), 5)
    per_token = SURROGATES["ppo_clip"](logp, old, adv[:, None], mask) + beta * KL["k3"](logp, ref)
    ours = (per_token * WEIGHTINGS[name](mask, **kw)).sum()
    assert_close(ours, theirs)
    assert theirs.abs() > 1e-2                                   # a non-trivial loss was compared
