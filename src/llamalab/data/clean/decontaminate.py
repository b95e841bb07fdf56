"""Decontamination against the evaluation sets llamalab ships tasks for, by GPT-3's method (Brown et al.
2020, appendix C): a training document is contaminated when it shares a 13-gram of lower-cased words
(punctuation ignored) with any benchmark item — question, context, choices, answers, tests.

The index (every benchmark 13-gram hash, with a bit per benchmark) is built once per run from the
task files through `llamalab.eval.tasks`, so it covers exactly what `llamalab eval` scores. Documents
are dropped, or only counted (`mode="report"`); either way the report gives a count per benchmark.
"""

from __future__ import annotations

import io
from dataclasses import astuple, is_dataclass
from pathlib import Path

import numpy as np

from ...atomic import write_bytes
from ...eval.tasks import TASKS, build_items
from .hashing import hash_strings, ngram_hashes, words
from .stage import DocFilter

N = 13


def item_texts(item) -> list[str]:
    """Every string inside an eval item (contexts, choices, prompts, targets, tests)."""
    out = []
    for value in (astuple(item) if is_dataclass(item) else (item,)):
        if isinstance(value, str):
            out.append(value)
        elif isinstance(value, (list, tuple)):
            out += [v for v in value if isinstance(v, str)]
    return out


def benchmark_texts(data_dir: Path, tasks: list[str] | None = None):
    """(task name, texts of one item) for every item of every task."""
    for name in tasks or list(TASKS):
        _, items = build_items(TASKS[name], data_dir, shots=0)
        for item in items:
            yield name, item_texts(item)


def build_index(data_dir: Path, tasks: list[str] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(sorted unique 13-gram hashes, uint32 benchmark bitmask of each, benchmark names)."""
    names, hashes, masks = [], [], []
    for name, texts in benchmark_texts(data_dir, tasks):
        if name not in names:
            names.append(name)
        bit = np.uint32(1 << names.index(name))
        for text in dict.fromkeys(texts):
            h = ngram_hashes(hash_strings(words(text)), N)
            hashes.append(h)
            masks.append(np.full(len(h), bit, dtype=np.uint32))
    h, m = np.concatenate(hashes), np.concatenate(masks)
    order = np.argsort(h, kind="stable")
    h, m = h[order], m[order]
    starts = np.flatnonzero(np.r_[True, h[1:] != h[:-1]])
    return h[starts], np.bitwise_or.reduceat(m, starts), names


def save_index(path, index):
    hashes, masks, names = index
    buf = io.BytesIO()
    np.savez(buf, hashes=hashes, masks=masks, names=np.array(names))
    write_bytes(path, buf.getvalue())


def load_index(path):
    with np.load(path, allow_pickle=False) as z:
        return z["hashes"], z["masks"], [str(n) for n in z["names"]]


def prefilter(hashes: np.ndarray) -> np.ndarray:
    """A 16M-entry table of the hashes' top 24 bits: most 13-grams of a text are ruled out by one lookup
    instead of a binary search."""
    table = np.zeros(1 << 24, dtype=bool)
    table[hashes >> np.uint64(40)] = True
    return table


def contamination(text: str, hashes: np.ndarray, masks: np.ndarray, table: np.ndarray | None = None) -> int:
    """Bitmask of the benchmarks sharing a 13-gram with the text (0: clean)."""
    grams = ngram_hashes(hash_strings(words(text)), N)
    if table is not None and len(grams):
        grams = grams[table[grams >> np.uint64(40)]]
    if not len(grams) or not len(hashes):
        return 0
    pos = np.minimum(np.searchsorted(hashes, grams), len(hashes) - 1)
    hit = hashes[pos] == grams
    return int(np.bitwise_or.reduce(masks[pos[hit]])) if hit.any() else 0


class Decontaminate(DocFilter):
    name = "decontaminate"

    def __init__(self, index_path: str, mode: str = "drop"):
        super().__init__()
        self.index_path, self.mode = index_path, mode
        self._index = None

    def filter(self, doc):
        if self._index is None:
            hashes, masks, names = load_index(self.index_path)
            self._index = hashes, masks, names, prefilter(hashes)
        hashes, masks, names, table = self._index
        bits = contamination(doc.text, hashes, masks, table)
        if not bits:
            return True
        for i, name in enumerate(names):
            if bits >> i & 1:
                self.stat_update(f"benchmark_{name}")
        return self.mode != "drop" or (False, "contaminated")
