"""TokenLoader: mixture shares, sampling without replacement, resume, rank slices.

The synthetic streams encode their own provenance: token = source_index * 1_000_000 + position in the
stream, so every expected value below is read off the tokens themselves (not from the loader's code).
"""

import json

import numpy as np
import pytest
import torch

from llamalab.data.loader import TokenLoader
from llamalab.errors import LlamalabError
from token_data import write_token_dataset

# The paper's Table 1 sampling proportions (LLaMA paper, Table 1), the reference for the share test.
TABLE1 = {"CommonCrawl": 67.0, "C4": 15.0, "Github": 4.5, "Wikipedia": 4.5, "Books": 4.5,
          "ArXiv": 2.5, "StackExchange": 2.0}
BIG = 1_000_000


def _dataset(tmp_path, sizes, *, shard_tokens=1 << 27, val=None):
    streams = {name: i * BIG + np.arange(n) for i, (name, n) in enumerate(sizes.items())}
    vals = {name: i * BIG + 500_000 + np.arange(n) for i, (name, n) in enumerate((val or {}).items())}
    write_token_dataset(tmp_path, streams, vocab_size=len(sizes) * BIG, val=vals, shard_tokens=shard_tokens)
    return tmp_path, list(sizes)


def test_mixture_shares_over_10M_tokens(tmp_path):
    # sizes differ wildly from the weights, so the shares come from the sampler, not from the data
    root, names = _dataset(tmp_path, {k: 20_000 + 7_919 * i for i, k in enumerate(TABLE1)})
    loader = TokenLoader(root, seq_len=128, batch_size=256, mixture=TABLE1, seed=3)
    seen = np.zeros(len(names))
    total = 0
    while total < 10_000_000:
        x, y = next(loader)
        assert x.dtype == torch.int64 and x.shape == (256, 128) and y.shape == (256, 128)
        src = (x[:, 0] // BIG).numpy()
        seen += np.bincount(src, minlength=len(names)) * x.shape[1]
        total += x.numel()
    assert total >= 10_000_000
    weights = np.array([TABLE1[k] for k in names]) / sum(TABLE1.values())
    share = seen / total
    np.testing.assert_array_less(np.abs(share / weights - 1), 0.01)


def test_windows_are_contiguous_and_sampled_without_replacement(tmp_path):
    # 3 shards of 1000 tokens: windows never straddle a shard, so 3 * floor(999 / 16) = 186 windows
    root, _ = _dataset(tmp_path, {"a": 3000}, shard_tokens=1000)
    T = 16
    loader = TokenLoader(root, seq_len=T, batch_size=31, seed=0)
    starts = []
    for _ in range(12):  # 372 sequences = exactly two epochs of 186 windows
        x, y = next(loader)
        assert torch.equal(x[:, 1:], y[:, :-1])                       # targets = inputs shifted by one
        assert torch.equal(y - x, torch.ones_like(x))                 # one contiguous run of the stream
        first = x[:, 0].numpy()
        assert ((first % 1000) + T + 1 <= 1000).all()                 # inside one shard
        starts += first.tolist()
    expected = sorted(s * 1000 + k * T for s in range(3) for k in range(999 // T))
    assert sorted(starts[:186]) == expected                           # epoch 1: every window once
    assert sorted(starts[186:]) == expected                           # epoch 2: every window again
    assert starts[:186] != starts[186:]                               # ... in a new order


def test_resume_is_bit_exact(tmp_path):
    root, _ = _dataset(tmp_path, {"a": 5000, "b": 3000, "c": 700})
    kw = dict(seq_len=32, batch_size=8, mixture={"a": 0.5, "b": 0.3, "c": 0.2}, seed=11)
    straight = TokenLoader(root, **kw)
    for _ in range(7):
        next(straight)
    state = json.loads(json.dumps(straight.state_dict()))  # must survive JSON
    expected = [next(straight) for _ in range(10)]         # crosses epochs of source c (21 windows)
    resumed = TokenLoader(root, **kw)
    resumed.load_state_dict(state)
    for want, got in zip(expected, (next(resumed) for _ in range(10))):
        assert torch.equal(want[0], got[0]) and torch.equal(want[1], got[1])


def test_ranks_partition_the_global_batch(tmp_path):
    root, _ = _dataset(tmp_path, {"a": 4000, "b": 4000})
    kw = dict(seq_len=16, mixture={"a": 0.7, "b": 0.3}, seed=5)
    single = TokenLoader(root, batch_size=8, **kw)
    ranks = [TokenLoader(root, batch_size=4, rank=r, world_size=2, **kw) for r in range(2)]
    for _ in range(20):
        x, y = next(single)
        parts = [next(r) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), x)
        assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_val_split_reads_heldout_shards_deterministically(tmp_path):
    root, _ = _dataset(tmp_path, {"a": 4000, "b": 4000}, val={"a": 300, "b": 300})
    first = [next(TokenLoader(root, seq_len=16, batch_size=4, split="val", seed=s)) for s in (1, 2)]
    assert torch.equal(first[0][0], first[1][0])                     # seed does not matter for val
    assert ((first[0][0] % BIG) >= 500_000).all()                    # only held-out tokens


def test_bad_inputs(tmp_path):
    with pytest.raises(LlamalabError, match="no prepared dataset"):
        TokenLoader(tmp_path / "nope", seq_len=8, batch_size=2)
    root, _ = _dataset(tmp_path, {"a": 100, "b": 10})
    with pytest.raises(LlamalabError, match="unknown source"):
        TokenLoader(root, seq_len=8, batch_size=2, mixture={"a": 1, "zz": 1})
    with pytest.raises(LlamalabError, match="fewer than seq_len"):
        TokenLoader(root, seq_len=16, batch_size=2)
    with pytest.raises(LlamalabError, match="val tokens"):
        TokenLoader(root, seq_len=8, batch_size=2, mixture={"a": 1}, split="val")
    state = TokenLoader(root, seq_len=8, batch_size=2, mixture={"a": 1}).state_dict()
    with pytest.raises(LlamalabError, match="seq_len"):
        TokenLoader(root, seq_len=4, batch_size=2, mixture={"a": 1}).load_state_dict(state)


def test_state_from_two_ranks_resumes_in_one_process(tmp_path):
    # the state is global (step + per-source counts), so a 2-process run can resume on 1 process
    root, _ = _dataset(tmp_path, {"a": 3000, "b": 2000})
    kw = dict(seq_len=16, mixture={"a": 0.5, "b": 0.5}, seed=9)
    ranks = [TokenLoader(root, batch_size=3, rank=r, world_size=2, **kw) for r in range(2)]
    for _ in range(5):
        for r in ranks:
            next(r)
    assert ranks[0].state_dict() == ranks[1].state_dict()
    single = TokenLoader(root, batch_size=6, **kw)
    single.load_state_dict(ranks[0].state_dict())
    for _ in range(5):
        x, _ = next(single)
        assert torch.equal(torch.cat([next(r)[0] for r in ranks]), x)
