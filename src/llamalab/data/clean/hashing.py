"""Stable 64-bit hashes of words, lines and word n-grams (the same in every process and run).

Strings are hashed with BLAKE2b, each distinct one once per process; n-grams combine their word hashes
with a polynomial and a splitmix64 finalizer, vectorized over the whole document.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)
_C1, _C2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_POLY = np.uint64(0x9E3779B97F4A7C15)
_PUNCT = {}
_CACHE: dict[str, int] = {}
CACHE_SIZE = 1 << 20


def hash_str(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def hash_strings(strings: list[str]) -> np.ndarray:
    """uint64 hash of each string; a process hashes each distinct string once (bounded cache)."""
    if len(_CACHE) > CACHE_SIZE:
        _CACHE.clear()
    for s in set(strings).difference(_CACHE):
        _CACHE[s] = hash_str(s)
    return np.fromiter(map(_CACHE.__getitem__, strings), dtype=np.uint64, count=len(strings))


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: every input bit affects every output bit."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _C1
        x = (x ^ (x >> np.uint64(27))) * _C2
        return x ^ (x >> np.uint64(31))


def ngram_hashes(word_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hash of every run of `n` consecutive words (fewer than n words: none)."""
    count = len(word_hashes) - n + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    acc = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(n):
            acc = acc * _POLY + word_hashes[k:k + count]
    return mix64(acc)


def _punct_table() -> dict:
    """str.translate table: upper case → lower, digits → 0, punctuation and symbols → space."""
    if not _PUNCT:
        import sys
        import unicodedata

        for i in range(sys.maxunicode + 1):
            c = chr(i)
            cat = unicodedata.category(c)
            if cat.startswith(("P", "S")):
                _PUNCT[i] = " "
            elif cat == "Nd":
                _PUNCT[i] = "0"
    return _PUNCT


def _ascii_table() -> bytes:
    table = bytearray(range(256))
    for i in range(128):
        c = chr(i)
        if c.isdigit():
            table[i] = ord("0")
        elif not (c.isalnum() or c.isspace()) or c == "_":
            table[i] = ord(" ")
    table[ord("A"):ord("Z") + 1] = bytes(range(ord("a"), ord("z") + 1))
    return bytes(table)


_ASCII = _ascii_table()
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")


def simplify(text: str) -> str:
    """CCNet's normalization for dedup: lower case, every digit 0, punctuation and symbols as spaces
    (line breaks kept). ASCII characters go through a bytes table, only the others through the
    Unicode one."""
    out = text.encode("utf-8").translate(_ASCII).decode("utf-8")  # multi-byte sequences are all ≥ 0x80
    if out.isascii():
        return out
    return _NON_ASCII.sub(_fold, out)


def _fold(m) -> str:
    return m.group().lower().translate(_punct_table())


def words(text: str) -> list[str]:
    return simplify(text).split()
