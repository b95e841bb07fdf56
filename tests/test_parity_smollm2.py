"""Our loading of the real SmolLM2-135M-Instruct GGUF vs transformers' loading of the same file.

Reference: transformers' `LlamaForCausalLM` built by `from_pretrained(gguf_file=...)` (its own GGUF
reader + dequantizer, fp32) — the `hf_smollm2` fixture. Nothing here is computed by llamalab alone.
"""

from __future__ import annotations

import pytest
import torch


PROMPTS = [
    "The LLaMA models were trained on publicly available data only: CommonCrawl, C4, GitHub, Wikipedia, "
    "books, ArXiv and StackExchange. Compared with the earlier models, the main difference is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, computed iteratively.\"\"\"\n"
    "    a, b = 0, 1\n    for _ in range(n):\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nExplain in two sentences why the sky is blue during the day.<|im_end|>\n"
    "<|im_start|>assistant\n",
]


@pytest.fixture(scope="module")
def ours(smollm2_fp32):
    return smollm2_fp32


@pytest.fixture(scope="module")
def prompt_ids(hf_smollm2):
    _, tok = hf_smollm2
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert all(len(x) >= 32 for x in ids), [len(x) for x in ids]
    return ids


def test_config_read_from_gguf(ours):
    # expected values: the GGUF's llama.* metadata, as listed by gguf.GGUFReader (see shared asset notes)
    a = ours.args
    assert (a.dim, a.n_layers, a.n_heads, a.kv_heads, a.hidden_dim, a.vocab_size) == (576, 30, 9, 3, 1536, 49152)
    assert a.rope_theta == 100000.0 and a.norm_eps == 1e-5 and a.tie_embeddings
    assert ours.model.num_params() == 134_515_008
    assert ours.model.output.weight is ours.model.tok_embeddings.weight


@torch.no_grad()
def test_logits_match_transformers(ours, hf_smollm2, prompt_ids):
    hf, _ = hf_smollm2
    worst = 0.0
    for ids in prompt_ids:
        x = torch.tensor([ids])
        diff = (ours.model(x) - hf(x).logits).abs().max().item()
        worst = max(worst, diff)
    print(f"\nSmolLM2 fp32 max |logits ours - transformers| over {len(prompt_ids)} prompts: {worst:.3g}")
    assert worst <= 1e-4


@torch.no_grad()
@torch.inference_mode()
def test_greedy_continuations_identical(ours, hf_smollm2, prompt_ids):
    """64 greedy tokens: ours (plain argmax loop over our KV cache) vs transformers' generate()."""
    from llamalab.model import KVCache

    hf, _ = hf_smollm2
    n_new = 64
    for ids in prompt_ids:
        cache = KVCache.allocate(ours.args, 1, len(ids) + n_new)
        logits = ours.model(torch.tensor([ids]), cache=cache, pos=0, last_only=True)
        mine, pos = [], len(ids)
        for _ in range(n_new):
            nxt = int(logits[0, -1].argmax())
            mine.append(nxt)
            logits = ours.model(torch.tensor([[nxt]]), cache=cache, pos=pos)
            pos += 1
        ref = hf.generate(torch.tensor([ids]), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                          pad_token_id=2)[0, len(ids):].tolist()
        assert mine == ref


def test_tokenizer_attached_and_encodes_like_transformers(ours, prompt_ids):
    """load() wires in the GGUF's own vocabulary; reference ids from transformers' GGUF tokenizer."""
    assert ours.tokenizer is not None and ours.tokenizer.vocab_size == 49152 and not ours.tokenizer.add_bos
    assert [ours.tokenizer.encode(p) for p in PROMPTS] == prompt_ids
