"""Document deduplication on datatrove's stages: exact (a hash of the whole text) and near-duplicate
(MinHash + LSH, Broder 1997), one document of each duplicate cluster kept.

For MinHash, datatrove's bucket and filter stages run unchanged; clustering keeps each cluster's first
document (datatrove keeps an arbitrary one); the signature stage is ours:
word 5-grams of CCNet-normalized text, hashed once per distinct word and combined vectorized, and
`num_perm` multiply-shift hash functions applied in blocks — an order of magnitude faster than one
Python hash call per shingle. The LSH bands × rows are chosen for the threshold the way datasketch's
MinHashLSH chooses them (minimum of equally weighted false-positive and false-negative areas).
"""

from __future__ import annotations

import struct

import numpy as np
from datatrove.pipeline.dedup.exact_dedup import (ExactDedupConfig, ExactDedupFilter, ExactDedupSignature,
                                                  ExactFindDedups)
from datatrove.pipeline.dedup.minhash import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster,
                                              MinhashDedupFilter, MinhashDedupSignature)
from datatrove.utils.binaryio import read_tuples_from_file
from datatrove.utils.hashing import HashConfig

from .hashing import hash_strings, ngram_hashes, words
from .stage import CorpusStage, Pass, SimpleWordTokenizer

SHA1_64 = HashConfig(precision=64, hash_fc="sha1")
NUM_PERM = 128
SHINGLE = 5
BLOCK = 4096  # shingles per block when applying the hash functions


def document_text(doc) -> str:
    return doc.text


def exact_dedup(work: str) -> CorpusStage:
    config = ExactDedupConfig(content_getter=document_text, hash_config=SHA1_64)
    sig, dups = f"{work}/exact/sig", f"{work}/exact/dups"
    return CorpusStage("exact dedup", ExactDedupSignature(sig, config),
                       find=[Pass("exact dedup: find", [ExactFindDedups(sig, dups, config)], 1)],
                       filter=ExactDedupFilter(dups, config))


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with bands·rows ≤ num_perm minimizing the false-positive area below the
    threshold plus the false-negative area above it of P(candidate | s) = 1 − (1 − s^r)^b."""
    s_lo, s_hi = np.linspace(0, threshold, 201), np.linspace(threshold, 1, 201)
    best, best_err = (1, 1), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1 - (1 - s_lo ** r) ** b, s_lo)
            fn = np.trapezoid((1 - s_hi ** r) ** b, s_hi)
            if fp + fn < best_err:
                best, best_err = (b, r), fp + fn
    return best


class FastMinhashSignature(MinhashDedupSignature):
    """datatrove's signature stage (same files, same sorting) with vectorized shingling and hashing."""

    def __init__(self, folder: str, config: MinhashConfig):
        super().__init__(folder, config, language=SimpleWordTokenizer())
        gen = np.random.RandomState(config.seed)
        self._a = gen.randint(1, 2**63, size=self.num_hashes, dtype=np.uint64) | np.uint64(1)
        self._b = gen.randint(0, 2**63, size=self.num_hashes, dtype=np.uint64)

    def get_shingles(self, text: str) -> np.ndarray:
        return shingles(text, self.config.n_grams)

    def get_signature(self, shingles: np.ndarray) -> list[list[int]]:
        return np.split(signature(shingles, self._a, self._b), self.config.num_buckets)


def shingles(text: str, n: int = SHINGLE) -> np.ndarray:
    """Hashes of the word n-grams of CCNet-normalized text (a shorter text: one shingle of all its words)."""
    w = words(text)
    if not w:
        return np.zeros(0, dtype=np.uint64)
    return ngram_hashes(hash_strings(w), min(n, len(w)))


def signature(shingles: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min over shingles x of (a·x + b mod 2^64) >> 32, for each of the len(a) hash functions."""
    sig = np.full(len(a), np.iinfo(np.uint64).max, dtype=np.uint64)
    buf = np.empty((min(BLOCK, len(shingles)), len(a)), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for i in range(0, len(shingles), BLOCK):
            x = shingles[i:i + BLOCK, None]
            block = buf[:len(x)]
            np.multiply(x, a, out=block)
            np.add(block, b, out=block)
            np.minimum(sig, block.min(axis=0), out=sig)
    return (sig >> np.uint64(32)).astype(np.uint32)


class FirstKeptCluster(MinhashDedupCluster):
    """datatrove's clustering of the LSH matches (union-find over documents), keeping the *first*
    document of each cluster — lowest task, then position — as query-then-insert LSH does, instead of
    an arbitrary root."""

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        parent: dict[tuple[int, int], tuple[int, int]] = {}

        def find(x):
            root = x
            while parent.get(root, root) != root:
                root = parent[root]
            while x != root:  # path compression
                parent[x], x = root, parent[x]
            return root

        with self.track_time():
            for dup_file in self.input_folder.list_files(glob_pattern="*.dups"):
                with self.input_folder.open(dup_file, "rb") as f:
                    for f1, d1, f2, d2 in read_tuples_from_file(f, "4I", lines_to_buffer=self.lines_to_buffer):
                        a, b = find((f1, d1)), find((f2, d2))
                        if a != b:
                            parent[max(a, b)] = min(a, b)  # the root is always the cluster's first document
            with self.output_folder.get_output_file_manager(mode="wb") as out:
                for node in sorted(parent):
                    if find(node) != node:
                        out.write(f"{node[0]:06d}.remove", struct.pack("<I", node[1]))
                        self.stat_update("to_remove")


def near_dedup(work: str, threshold: float = 0.8, num_perm: int = NUM_PERM) -> CorpusStage:
    bands, rows = lsh_params(threshold, num_perm)
    config = MinhashConfig(n_grams=SHINGLE, num_buckets=bands, hashes_per_bucket=rows,
                           hash_config=HashConfig(precision=32, hash_fc="sha1"))
    sig, buckets, clusters = (f"{work}/minhash/{d}" for d in ("sig", "buckets", "clusters"))
    return CorpusStage("near dedup", FastMinhashSignature(sig, config),
                       find=[Pass("near dedup: buckets", [MinhashDedupBuckets(sig, buckets, config=config)], bands),
                             Pass("near dedup: cluster", [FirstKeptCluster(buckets, clusters, config=config)], 1)],
                       filter=MinhashDedupFilter(clusters))
