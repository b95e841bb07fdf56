"""Synthetic token datasets for the loader and trainer tests: streams of ids written straight into shards."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llamalab.data.shards import VERSION, token_dtype, write_manifest, write_shard


def write_token_dataset(root: str | Path, sources: dict[str, np.ndarray], *, vocab_size: int,
                        eos_id: int | None = None, val: dict[str, np.ndarray] | None = None,
                        shard_tokens: int = 1 << 27) -> Path:
    """Write already-tokenized streams as a dataset (one or more shards per source) and its manifest, as
    `llamalab.data.prepare` lays it out from text."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(vocab_size)
    manifest = {"version": VERSION, "dtype": dtype.name, "vocab_size": vocab_size, "eos_id": eos_id,
                "tokenizer": None, "sources": {}}
    for name, tokens in sources.items():
        (root / name).mkdir(exist_ok=True)
        entry = {"inputs": [], "fingerprint": None, "documents": None}
        for split, arr in (("", tokens), ("val_", (val or {}).get(name))):
            if arr is None:
                entry.update({f"{split}tokens": 0, f"{split}shards": []})
                continue
            arr = np.asarray(arr).astype(dtype)
            shards = []
            for k, lo in enumerate(range(0, arr.size, shard_tokens)):
                file = f"{name}/{'val' if split else 'shard'}-{k:05d}.bin"
                shards.append({"file": file, **write_shard(root / file, arr[lo:lo + shard_tokens])})
            entry.update({f"{split}tokens": int(arr.size), f"{split}shards": shards})
        manifest["sources"][name] = entry
    return write_manifest(root, manifest)
