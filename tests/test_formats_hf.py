"""HF safetensors adapter vs transformers' own LlamaForCausalLM (the reference implementation).

Expected values are always transformers' logits on the same weights: either transformers loads the
directory we wrote, or we load the directory transformers wrote (`save_pretrained`).
"""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import llamalab
from llamalab import formats
from llamalab.config import ModelArgs
from llamalab.model import Transformer

CONFIGS = {  # MHA / GQA × tied / untied
    "mha-untied": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=96, multiple_of=32, max_seq_len=64),
    "mha-tied": ModelArgs(dim=64, n_layers=2, n_heads=4, vocab_size=96, multiple_of=32, max_seq_len=64,
                          tie_embeddings=True),
    "gqa-untied": ModelArgs(dim=96, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=80, ffn_dim=160,
                            norm_eps=1e-5, rope_theta=50000.0, max_seq_len=64),
    "gqa-tied": ModelArgs(dim=96, n_layers=3, n_heads=6, n_kv_heads=3, vocab_size=80, ffn_dim=160,
                          max_seq_len=64, tie_embeddings=True),
    "gqa-llama3-rope": ModelArgs(dim=96, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=80, ffn_dim=160,
                                 rope_theta=500000.0, max_seq_len=64, tie_embeddings=True,
                                 rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}),
}


def random_model(args: ModelArgs, seed: int = 0) -> Transformer:
    model = Transformer(args)
    model.init_weights(std=0.1, generator=torch.Generator().manual_seed(seed))  # wide: rotary errors show
    with torch.no_grad():  # non-trivial norm gains, so a misplaced norm shows too
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(hash(name) % 1000))
    return model.eval()


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_export_loads_in_transformers_with_equal_logits(name, tmp_path):
    args = CONFIGS[name]
    ours = random_model(args)
    formats.save(ours.state_dict(), args, tmp_path, "hf")
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    assert isinstance(ref, LlamaForCausalLM)
    tokens = torch.randint(0, args.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1))
    assert (ours(tokens) - ref(tokens).logits).abs().max().item() <= 1e-5
    # and back: our reader undoes the permutation exactly
    again = llamalab.load(tmp_path).model.state_dict()
    assert all(torch.equal(v, again[k]) for k, v in ours.state_dict().items())


@pytest.mark.parametrize("tied", [False, True])
@torch.no_grad()
def test_reads_what_transformers_writes(tied, tmp_path):
    """transformers' own save_pretrained output (sharded, bf16→fp32 free) loads into our model, equal logits."""
    cfg = LlamaConfig(hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=100, max_position_embeddings=64, rms_norm_eps=1e-5,
                      rope_theta=20000.0, tie_word_embeddings=tied)
    torch.manual_seed(0)
    ref = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1) if p.ndim > 1 else p.uniform_(0.5, 1.5)
    ref.save_pretrained(tmp_path, max_shard_size="40KB")  # several shards + index
    assert (tmp_path / "model.safetensors.index.json").exists()
    ckpt = llamalab.load(tmp_path)
    assert ckpt.format == "hf" and ckpt.args.tie_embeddings == tied and ckpt.args.kv_heads == 2
    tokens = torch.randint(0, 100, (2, 33), generator=torch.Generator().manual_seed(2))
    assert (ckpt.model(tokens) - ref(tokens).logits).abs().max().item() <= 1e-5


@torch.no_grad()
def test_sharded_export(tmp_path):
    args = CONFIGS["gqa-untied"]
    ours = random_model(args, seed=3)
    formats.save(ours.state_dict(), args, tmp_path, "hf", max_shard_size=50_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    ref = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    tokens = torch.randint(0, args.vocab_size, (1, 30), generator=torch.Generator().manual_seed(4))
    assert (ours(tokens) - ref(tokens).logits).abs().max().item() <= 1e-5


@torch.no_grad()
def test_smollm2_gguf_to_hf_dir_loads_in_transformers(smollm2_gguf, hf_smollm2, tmp_path):
    """GGUF → ours → HF directory → transformers: same logits as our model and as transformers' own
    GGUF loading; the exported tokenizer encodes like transformers' GGUF tokenizer."""
    from transformers import AutoTokenizer

    from llamalab.cli import main

    assert main(["convert", str(smollm2_gguf), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    ours = llamalab.load(smollm2_gguf, tokenizer=False).model
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    ref_model, ref_tok = hf_smollm2
    text = "<|im_start|>user\nWhat is the capital of France? Answer in one word, then explain.<|im_end|>\n"
    ids = ref_tok(text, add_special_tokens=False)["input_ids"]
    assert AutoTokenizer.from_pretrained(tmp_path / "hf")(text, add_special_tokens=False)["input_ids"] == ids
    x = torch.tensor([ids])
    logits = exported(x).logits
    assert (logits - ours(x)).abs().max().item() <= 1e-4
    assert (logits - ref_model(x).logits).abs().max().item() <= 1e-4
