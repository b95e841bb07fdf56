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


@pytest.mark.parametrize("scaling", [None, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 1024}])
def test_rotary_table_matches_transformers(scaling):
    """`rope_cache` against transformers' LlamaRotaryEmbedding for SmolLM2's shape (θ 100000, head_dim 64), over
    its whole 8192-position context. transformers computes θ_j in float32 (we in float64, then round), so
    angles m·θ_j differ by up to ~m·θ_j·2^-23: measured max 1e-4 at m = 8191; a wrong frequency or pairing is O(1)."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from llamalab.model import rope_cache

    args = PRESETS["smollm2-135m"].replace(rope_scaling=scaling)
    config = LlamaConfig(hidden_size=args.dim, num_attention_heads=args.n_heads, head_dim=args.head_dim,
                         max_position_embeddings=args.max_seq_len,
                         rope_parameters={"rope_type": "default", **(scaling or {}), "rope_theta": args.rope_theta})
    cos, sin = LlamaRotaryEmbedding(config)(torch.zeros(1), torch.arange(args.max_seq_len)[None])
    table, half = rope_cache(args), args.head_dim // 2  # HF's cos/sin repeat the half-width angles twice
    torch.testing.assert_close(table.real, cos[0, :, :half], atol=5e-4, rtol=0)
    torch.testing.assert_close(table.imag, sin[0, :, :half], atol=5e-4, rtol=0)


def test_rotary_table_grows_with_the_positions_used():
    """max_seq_len is a header value (a hostile GGUF may claim 2^32 positions): the model's table starts empty,
    grows when a forward needs more positions (or `ensure_positions` asks), never past max_seq_len, and every
    entry is bit for bit that of the whole table (`rope_cache` of max_seq_len)."""
    from llamalab.generate import Engine
    from llamalab.model import rope_cache

    args = PRESETS["tiny"].replace(max_seq_len=3000)
    whole = torch.view_as_real(rope_cache(args))
    model = Transformer(args).eval()
    model.init_weights(generator=torch.Generator().manual_seed(0))
    assert len(model.freqs_cis) == 0

    def same_as_whole():
        n = len(model.freqs_cis)
        return torch.equal(torch.view_as_real(model.freqs_cis), whole[:n])

    with torch.no_grad():
        model(torch.zeros(1, 5, dtype=torch.long))
        assert len(model.freqs_cis) == 5 and same_as_whole()
        cache = KVCache.allocate(args, batch_size=1, max_len=300)
        for t in range(5, 300, 37):  # decoding with integer positions: the table at least doubles each time
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache, pos=t)
        assert 300 - 37 <= len(model.freqs_cis) <= 2 * 300 and same_as_whole()
    Engine(model, max_len=1500)  # its steps pass positions as a tensor: it sizes the table up front
    assert len(model.freqs_cis) == 1501 and same_as_whole()
    model.ensure_positions(10**12)
    assert len(model.freqs_cis) == args.max_seq_len and same_as_whole()
    model.to(torch.bfloat16)  # a move recomputes the table for the same positions
    assert len(model.freqs_cis) == args.max_seq_len and same_as_whole()
