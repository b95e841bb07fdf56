"""Meta .pth format: round trips, and model-parallel shards split exactly as Meta's fairscale layers do.

The 2-shard reference files are built here by hand from the Meta/fairscale rules (ColumnParallelLinear
splits dim 0, RowParallelLinear dim 1, LLaMA-1 ParallelEmbedding the embedding dim 1, norms replicated),
not with our writer.
"""

from __future__ import annotations

import json

import pytest
import torch

import llamalab
from llamalab import formats
from llamalab.config import ModelArgs
from tiny import random_state

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_seq_len=64)


@pytest.mark.parametrize("args", [ARGS, ARGS.replace(tie_embeddings=True), ARGS.replace(ffn_dim=200)],
                         ids=["untied", "tied", "explicit-ffn"])
def test_round_trip_bit_identical(args, tmp_path):
    state = random_state(args)
    formats.save(state, args, tmp_path, "meta")
    back, args2, _ = formats.meta.load_state(tmp_path)
    assert back.keys() == state.keys()
    assert all(torch.equal(state[k], back[k]) for k in state)
    assert (args2.hidden_dim, args2.kv_heads, args2.tie_embeddings) == (args.hidden_dim, 2, args.tie_embeddings)


def test_two_model_parallel_shards_merge_exactly(tmp_path):
    state = random_state(ARGS, seed=1)
    full = dict(state)
    dims = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}
    ref = tmp_path / "ref"
    ref.mkdir()
    for rank in range(2):
        shard = {}
        for name, w in full.items():
            d = dims.get(name.split(".")[-2])
            shard[name] = w.clone() if d is None else w.chunk(2, dim=d)[rank].clone()
        torch.save(shard, ref / f"consolidated.{rank:02d}.pth")
    (ref / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                                 "multiple_of": 32, "norm_eps": 1e-6, "vocab_size": -1}))
    ckpt = llamalab.load(ref)
    assert ckpt.format == "meta" and ckpt.args.vocab_size == 96  # -1 (LLaMA-1): read off the tensors
    merged = ckpt.model.state_dict()
    assert all(torch.equal(full[k], merged[k]) for k in full)
    # our writer splits the same way: identical shard files content
    formats.save(state, ARGS, tmp_path / "ours", "meta", shards=2)
    for rank in range(2):
        a = torch.load(ref / f"consolidated.{rank:02d}.pth", weights_only=True)
        b = torch.load(tmp_path / "ours" / f"consolidated.{rank:02d}.pth", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_llama1_rope_freqs_buffer_is_ignored(tmp_path):
    state = random_state(ARGS, seed=2)
    torch.save({**state, "rope.freqs": torch.ones(8)}, tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps({"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                                                      "multiple_of": 32, "norm_eps": 1e-6, "vocab_size": 96}))
    sd = llamalab.load(tmp_path).model.state_dict()
    assert all(torch.equal(state[k], sd[k]) for k in state)


def test_load_casts_to_requested_dtype(tmp_path):
    formats.save(random_state(ARGS), ARGS, tmp_path, "meta")
    ckpt = llamalab.load(tmp_path, dtype=torch.bfloat16)
    assert {p.dtype for p in ckpt.model.parameters()} == {torch.bfloat16}
    assert not ckpt.model.training and ckpt.tokenizer is None
    assert ckpt.model(torch.tensor([[1, 2, 3]])).shape == (1, 3, ARGS.vocab_size)
