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
from ..bounded import read_json
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
        manifest = read_json(path)
    except (OSError, ValueError) as e:
        raise LlamalabError(f"cannot read dataset manifest {path}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != VERSION or "sources" not in manifest:
        raise LlamalabError(f"{path} is not a llamalab dataset manifest (version {VERSION})")
    check_manifest(manifest, path)
    return manifest, path.parent


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def check_manifest(manifest: dict, path: Path) -> None:
    """Every key the readers use is there with the right type, and every shard lies inside the dataset
    directory; else one LlamalabError naming what is wrong (missing held-out entries default to none)."""
    def bad(what):
        raise LlamalabError(f"dataset manifest {path}: {what}; re-run `llamalab data prepare`")
    if manifest.get("dtype") not in ("uint16", "uint32"):
        bad(f"dtype must be uint16 or uint32, not {manifest.get('dtype')!r}")
    vocab = manifest.get("vocab_size")
    if not _count(vocab) or vocab < 1 or vocab > np.iinfo(manifest["dtype"]).max + 1:
        bad(f"vocab_size must be a positive integer that {manifest['dtype']} can hold, not {vocab!r}")
    if not isinstance(manifest["sources"], dict):
        bad("sources must map names to their shards")
    root = path.parent.resolve()
    for name, src in manifest["sources"].items():
        if not isinstance(src, dict) or not _count(src.get("tokens")) or not isinstance(src.get("shards"), list):
            bad(f"source {name!r} needs a token count (tokens) and a list of shards")
        src.setdefault("val_tokens", 0)
        src.setdefault("val_shards", [])
        if not _count(src["val_tokens"]) or not isinstance(src["val_shards"], list):
            bad(f"source {name!r} has a malformed held-out part (val_tokens, val_shards)")
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for shard in src["shards"] + src["val_shards"]:
            if not isinstance(shard, dict) or not isinstance(shard.get("file"), str) or not _count(shard.get("tokens")):
                bad(f"source {name!r}: each shard needs a file name and a token count, got {shard!r}")
            file = (root / shard["file"]).resolve()
            if not file.is_relative_to(root):
                bad(f"source {name!r}: shard {shard['file']!r} lies outside the dataset directory")
            if file.is_file() and file.stat().st_size != shard["tokens"] * itemsize:
                bad(f"source {name!r}: shard {shard['file']!r} claims {shard['tokens']:,} tokens but its file holds "
                    f"{file.stat().st_size // itemsize:,}")
        for part, shards in (("tokens", src["shards"]), ("val_tokens", src["val_shards"])):
            if src[part] != sum(shard["tokens"] for shard in shards):
                bad(f"source {name!r}: {part} {src[part]:,} is not the sum of its shards' token counts")


def write_manifest(root: Path, manifest: dict) -> Path:
    path = Path(root) / MANIFEST
    write_bytes(path, (json.dumps(manifest, indent=1) + "\n").encode())
    return path
