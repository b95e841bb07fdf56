"""GGUF writing and reading. References: the `gguf` package's own reader (what llama.cpp's Python side
uses) for what we write; the original float weights (within each type's quantization error) for what
we read in F16/BF16/Q8_0/Q4_0/Q4_1."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFWriter
from gguf.quants import quantize

import llamalab
from llamalab import formats
from llamalab.config import ModelArgs
from tiny import random_state

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_seq_len=64,
                 norm_eps=1e-5, rope_theta=500000.0)


@pytest.mark.parametrize("tied", [False, True])
def test_f32_round_trip_bit_identical_and_readable_by_gguf(tied, tmp_path):
    args = ARGS.replace(tie_embeddings=tied)
    state = random_state(args)
    out = formats.save(state, args, tmp_path / "m.gguf", "gguf", gguf_type="f32")
    reader = GGUFReader(out)  # the reference reader
    meta = {k: f.contents() for k, f in reader.fields.items()}
    assert meta["general.architecture"] == "llama"
    assert (meta["llama.embedding_length"], meta["llama.block_count"], meta["llama.feed_forward_length"],
            meta["llama.attention.head_count"], meta["llama.attention.head_count_kv"],
            meta["llama.rope.dimension_count"], meta["llama.context_length"]) == (64, 2, 64 * 3, 4, 2, 16, 64)
    assert meta["llama.rope.freq_base"] == 500000.0
    names = {t.name for t in reader.tensors}
    assert ("output.weight" in names) == (not tied) and "blk.1.ffn_gate.weight" in names
    emb = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert np.array_equal(np.asarray(emb.data), state["tok_embeddings.weight"].numpy())
    back, args2, _ = formats.gguf.load_state(out)
    assert back.keys() == state.keys() and all(torch.equal(state[k], back[k]) for k in state)
    assert args2.tie_embeddings == tied and args2.hidden_dim == args.hidden_dim and args2.norm_eps == 1e-5


@pytest.mark.parametrize("gguf_type, tol", [("f16", 1e-3), ("q8_0", 2e-2)])
def test_f16_and_q8_0_export(gguf_type, tol, tmp_path):
    state = random_state(ARGS, seed=1)
    out = formats.save(state, ARGS, tmp_path / "m.gguf", "gguf", gguf_type=gguf_type)
    types = {t.name: t.tensor_type for t in GGUFReader(out).tensors}
    assert types["blk.0.attn_q.weight"] == {"f16": Q.F16, "q8_0": Q.Q8_0}[gguf_type]
    assert types["blk.0.attn_norm.weight"] == Q.F32  # norms stay F32, as llama.cpp writes them
    back = llamalab.load(out).model.state_dict()
    for k, w in state.items():
        assert (back[k] - w).abs().max().item() <= tol * w.abs().max().item(), k


def test_reads_f16_bf16_q8_0_q4_0_q4_1(tmp_path):
    """A GGUF written with the gguf package's own writer/quantizer, one tensor type per matrix."""
    args = ARGS.replace(tie_embeddings=True)
    state = random_state(args, seed=2)
    kinds = [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]
    w = GGUFWriter(tmp_path / "mixed.gguf", "llama")
    for key, value in [("block_count", 2), ("embedding_length", 64), ("feed_forward_length", 192),
                       ("attention.head_count", 4), ("attention.head_count_kv", 2), ("context_length", 64)]:
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_float32("llama.rope.freq_base", 500000.0)
    chosen = {}
    for i, (name, t) in enumerate(state.items()):
        gname = formats.gguf.to_gguf(name)
        a = t.numpy()
        if t.ndim == 1:
            w.add_tensor(gname, a)
            continue
        kind = chosen[name] = kinds[i % len(kinds)]
        w.add_tensor(gname, a.astype(np.float16) if kind == Q.F16 else quantize(a, kind), raw_dtype=kind)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    ckpt = llamalab.load(tmp_path / "mixed.gguf")
    assert set(chosen.values()) == set(kinds)
    # worst-case relative error of each block format: 4-bit ≈ 1/15 of the block's range
    tol = {Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1e-2, Q.Q4_0: 0.15, Q.Q4_1: 0.1}
    for name, kind in chosen.items():
        got = ckpt.model.state_dict()[name]
        assert got.shape == state[name].shape
        assert (got - state[name]).abs().max().item() <= tol[kind] * state[name].abs().max().item(), (name, kind)


@pytest.mark.parametrize("as_object", [False, True], ids=["from-gguf-file", "from-tokenizer-object"])
def test_tokenizer_travels_into_gguf(as_object, llama_spm_gguf, tmp_path):
    """llama.cpp's LLaMA vocabulary GGUF as the tokenizer source: its tokenizer.* metadata is copied
    verbatim from the file, or rebuilt from our Tokenizer (`gguf_metadata`) with the same content."""
    from llamalab.tokenizer import load_tokenizer

    args = ARGS.replace(vocab_size=32000, n_layers=1)
    src = load_tokenizer(llama_spm_gguf) if as_object else llama_spm_gguf
    out = formats.save(random_state(args), args, tmp_path / "m.gguf", "gguf", tokenizer_src=src)
    want = GGUFReader(llama_spm_gguf).fields
    got = GGUFReader(out).fields
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        assert got[key].contents() == want[key].contents(), key
    tok = llamalab.load(out).tokenizer
    assert tok is not None and tok.vocab_size == 32000 and tok.add_bos
    assert tok.encode("Hello world") == [15043, 3186]  # llama.cpp's test vector (ggml-vocab-llama-spm.gguf.out)
