"""The pretraining data loader: a weighted mixture of packed token streams, checkpointable.

Every global batch (batch_size × world_size sequences) is drawn the same way whatever the world size:
1. Sources. Each source gets its quota of the batch so that, cumulatively, its count of sequences
   stays within one sequence of weight × total (largest-remainder apportionment of the running
   deficit). Independent draws per sequence would miss a 2% source's share by ~3% (relative) even
   after 10M tokens of 128-token windows; apportionment hits it exactly. The batch's sequence order
   is then shuffled by a Generator seeded with (seed, step).
2. Windows. A source's packed stream is cut into windows of seq_len + 1 tokens (consecutive windows
   share one token: the last target of one is the first input of the next). Each source walks
   through a permutation of its windows — sampling without replacement within an epoch — and
   draws a fresh permutation, seeded with (seed, source, epoch), when it wraps around.
Rank r takes rows [r·B, (r+1)·B) of the global batch, so ranks partition it.

The whole state is the step and each source's count of sequences drawn (epoch = count // windows,
position = count % windows); `state_dict()` is a small JSON-able dict and a loader restored from it
yields the next batches bit-identically. split="val" reads the held-out shards in file order
(no permutation) so held-out loss is measured on the same windows every time.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import LlamalabError
from .mixture import check_mixture
from .shards import read_manifest


class _Stream:
    """One source's shards as windows of `seq_len + 1` tokens, read through memory maps."""

    def __init__(self, name: str, root: Path, shards: list[dict], dtype: str, seq_len: int):
        self.name, self.seq_len = name, seq_len
        self.maps = []
        for s in shards:
            path = root / s["file"]
            if not path.is_file():
                raise LlamalabError(f"missing shard {path}: re-run `llamalab data prepare`")
            if s["tokens"] > 0:
                self.maps.append(np.memmap(path, dtype=dtype, mode="r"))
        per_shard = [max(0, (m.size - 1) // seq_len) for m in self.maps]
        self.offsets = np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)
        self.windows = int(self.offsets[-1])
        self.tokens = sum(int(m.size) for m in self.maps)

    def read(self, window_ids: np.ndarray) -> np.ndarray:
        """Rows of seq_len + 1 tokens for the given window ids, as int64."""
        out = np.empty((len(window_ids), self.seq_len + 1), dtype=np.int64)
        shard = np.searchsorted(self.offsets, window_ids, side="right") - 1
        starts = (window_ids - self.offsets[shard]) * self.seq_len
        span = np.arange(self.seq_len + 1)
        for k in np.unique(shard):
            rows = np.nonzero(shard == k)[0]
            out[rows] = self.maps[k][starts[rows, None] + span]
        return out


def _apportion(weights: np.ndarray, counts: np.ndarray, n: int) -> np.ndarray:
    """Split n new sequences among sources so each cumulative count stays within one of weight × total."""
    deficit = weights * (counts.sum() + n) - counts
    quota = np.floor(np.clip(deficit, 0, None)).astype(np.int64)
    while quota.sum() > n:  # only when some deficit was negative; take back from the most over-served
        i = np.argmin(np.where(quota > 0, deficit - quota, np.inf))
        quota[i] -= 1
    rest = n - int(quota.sum())
    if rest:
        order = np.argsort(-(deficit - quota), kind="stable")
        quota[order[:rest]] += 1
    return quota


def _source_key(name: str) -> int:
    return zlib.crc32(name.encode())


class TokenLoader:
    """Infinite iterator of (inputs, targets) int64 tensors of shape (batch_size, seq_len)."""

    def __init__(self, data_dir_or_manifest, *, seq_len: int, batch_size: int,
                 mixture: dict[str, float] | None = None, seed: int = 0, rank: int = 0,
                 world_size: int = 1, split: str = "train"):
        if split not in ("train", "val"):
            raise LlamalabError(f"split must be 'train' or 'val', not {split!r}")
        if seq_len < 1 or batch_size < 1:
            raise LlamalabError(f"seq_len and batch_size must be positive (got {seq_len}, {batch_size})")
        if not 0 <= rank < world_size:
            raise LlamalabError(f"rank {rank} is outside world_size {world_size}")
        manifest, root = read_manifest(data_dir_or_manifest)
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, int(seed)
        self.rank, self.world_size, self.split = rank, world_size, split
        self.vocab_size = manifest.get("vocab_size")
        available = manifest["sources"]
        if mixture is None:  # natural mixture: proportional to size
            mixture = {k: float(v["tokens" if split == "train" else "val_tokens"]) for k, v in available.items()}
        check_mixture(mixture, available)
        names = sorted(k for k, w in mixture.items() if w > 0)
        total = sum(mixture[k] for k in names)
        self.mixture = {k: mixture[k] / total for k in names}
        self.weights = np.array([self.mixture[k] for k in names])
        key = "shards" if split == "train" else "val_shards"
        self.streams = [_Stream(k, root, available[k].get(key, []), manifest["dtype"], seq_len) for k in names]
        for s in self.streams:
            if s.windows == 0:
                raise LlamalabError(f"source {s.name!r} has {s.tokens} {split} tokens, fewer than "
                                    f"seq_len + 1 = {seq_len + 1}; use a shorter seq_len or more data")
        self.counts = np.zeros(len(names), dtype=np.int64)
        self.step = 0
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def _permutation(self, i: int, epoch: int) -> np.ndarray:
        if (i, epoch) not in self._perms:
            if len(self._perms) > 2 * len(self.streams):
                self._perms.clear()
            gen = np.random.default_rng([self.seed, _source_key(self.streams[i].name), epoch])
            n = self.streams[i].windows  # int32 when it fits: half the memory, the same permutation
            self._perms[i, epoch] = gen.permutation(np.arange(n, dtype=np.int32 if n < 2**31 else np.int64))
        return self._perms[i, epoch]

    def __iter__(self):
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.global_batch
        quota = _apportion(self.weights, self.counts, n)
        source = np.repeat(np.arange(len(self.streams)), quota)
        seed = self.seed if self.split == "train" else 0
        np.random.default_rng([seed, self.step]).shuffle(source)
        # the k-th sequence of source i in this batch is that source's sequence number counts[i] + k
        seq_no = np.empty(n, dtype=np.int64)
        for i in range(len(self.streams)):
            rows = source == i
            seq_no[rows] = self.counts[i] + np.arange(quota[i])
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        source, seq_no = source[mine], seq_no[mine]
        batch = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for i in np.unique(source):
            rows = np.nonzero(source == i)[0]
            stream = self.streams[i]
            epoch, pos = np.divmod(seq_no[rows], stream.windows)
            window = pos.copy()
            if self.split == "train":
                for e in np.unique(epoch):
                    sel = epoch == e
                    window[sel] = self._permutation(i, int(e))[pos[sel]]
            batch[rows] = stream.read(window)
        self.counts += quota
        self.step += 1
        batch = torch.from_numpy(batch)
        return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()

    def epochs(self) -> dict[str, float]:
        """Epochs consumed so far per source (sequences drawn / windows available)."""
        return {s.name: float(c) / s.windows for s, c in zip(self.streams, self.counts)}

    def state_dict(self) -> dict:
        return {
            "version": 1, "split": self.split, "seed": self.seed, "seq_len": self.seq_len,
            "step": self.step, "global_batch": self.global_batch,
            "sources": {s.name: {"weight": float(w), "sequences": int(c), "epoch": int(c // s.windows),
                                 "position": int(c % s.windows)}
                        for s, w, c in zip(self.streams, self.weights, self.counts)},
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("split", "seed", "seq_len"):
            if state.get(key) != getattr(self, key):
                raise LlamalabError(f"data loader state has {key}={state.get(key)!r} but this loader has "
                                    f"{getattr(self, key)!r}; resume with the same data settings")
        saved = state["sources"]
        if sorted(saved) != [s.name for s in self.streams] or any(
                abs(saved[s.name]["weight"] - w) > 1e-9 for s, w in zip(self.streams, self.weights)):
            raise LlamalabError(f"data loader state was saved with mixture "
                                f"{ {k: v['weight'] for k, v in saved.items()} }, this run uses {self.mixture}")
        self.step = int(state["step"])
        self.counts = np.array([saved[s.name]["sequences"] for s in self.streams], dtype=np.int64)
