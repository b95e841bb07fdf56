"""Packed token shards and the manifest that describes them.

A prepared dataset is a directory:

    manifest.json
    <source>/shard-00000.bin, shard-00001.bin, ...   training tokens, documents packed back to back
    <source>/val-00000.bin, ...                        held-out documents (optional)

Each shard is a flat array of token ids (uint16 when the vocabulary fits, else uint32), readable with
`np.memmap` without loading it. Every document ends with EOS (and starts with BOS when the tokenizer
adds one), so documents can be packed without padding, as in the paper.

manifest.json:
    {"version": 1, "dtype": "uint16", "vocab_size": V, "eos_id": E, "tokenizer": {...},
     "sources": {name: {"inputs": [...], "fingerprint": "...",
                        "documents": n, "tokens": n, "shards": [{"file", "tokens", "sha256"}],
                        "val_documents": n, "val_tokens": n, "val_shards": [...]}}}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..atomic import sha256_file, write_bytes
from ..errors import LlamalabError

MANIFEST = "manifest.json"
VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest unsigned type that holds every id."""
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def write_shard(path: Path, tokens: np.ndarray) -> dict:
    """Write one shard atomically; returns its manifest entry (file name relative to the dataset root
    is filled in by the caller)."""
    write_bytes(path, np.ascontiguousarray(tokens).tobytes())
    return {"tokens": int(tokens.size), "sha256": sha256_file(path)}


def read_manifest(path: str | Path) -> tuple[dict, Path]:
    """Read `<dir>/manifest.json` (or the manifest file itself); returns (manifest, dataset root)."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    if not path.is_file():
        raise LlamalabError(f"no prepared dataset at {path}: run `llamalab data prepare --out DIR ...` first")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LlamalabError(f"cannot read dataset manifest {path}: {e}") from None
    if manifest.get("version") != VERSION or "sources" not in manifest:
        raise LlamalabError(f"{path} is not a llamalab dataset manifest (version {VERSION})")
    return manifest, path.parent


def write_manifest(root: Path, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    write_bytes(path, (json.dumps(manifest, indent=1) + "\n").encode())
    return path
