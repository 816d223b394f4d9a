"""What touches an nn.Module: loading models and tokenizers (`models`), the layer-by-layer decoder
(`decoder`), per-token log-probs and entropies (`logprobs`), and sampling (`rollout`,
`rollout_vllm`)."""
