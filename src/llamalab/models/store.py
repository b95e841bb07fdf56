"""A checkpoint's files into the library's store: blobs, a tree, and what the manifest says about it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from .. import library
from ..errors import LlamalabError
from ..formats import detect_format, load_state, resolve


def _files(fmt: str, path: Path) -> tuple[dict[str, Path], str | None]:
    """(relative path → source file, the entry the loaders read inside the tree; None: the tree itself)."""
    if fmt == "gguf":
        return {"model.gguf": path}, "model.gguf"
    files = {str(p.relative_to(path)): p for p in sorted(path.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts)}
    return files, None


def _quantization(state, extra: dict) -> str:
    """How the matrices are stored: the most common type among the 2-D tensors (Q4_1, int4, bfloat16, ...)."""
    types = {k: str(v.dtype).removeprefix("torch.") for k, v in state.items()} | extra.get("tensor_types", {})
    matrices = [str(types[k]) for k, v in state.items() if v.dim() == 2]
    return Counter(matrices).most_common(1)[0][0] if matrices else "unknown"


def describe(path: Path) -> dict:
    """What the manifest says about a checkpoint besides its files: format, quantization, config, template."""
    src = load_state(path, lazy=True)
    meta = src.extra.get("metadata", {})
    tok = src.tokenizer()
    a = src.args
    return {"format": src.format, "quantization": _quantization(src.state, src.extra),
            "parameters": sum(v.numel() for v in src.state.values()),
            "config": {"dim": a.dim, "n_layers": a.n_layers, "n_heads": a.n_heads, "n_kv_heads": a.kv_heads,
                       "vocab_size": a.vocab_size, "max_seq_len": a.max_seq_len, "rope_theta": a.rope_theta},
            "template": tok.chat_template if tok is not None else None,
            "license": meta.get("general.license") or meta.get("license"),
            "family": meta.get("general.architecture") or meta.get("model_type") or "llama"}


def store(src, root: Path) -> dict:
    """The checkpoint `src`'s files as blobs and a tree (under `library.locked`): its manifest, not yet named."""
    fmt, path = detect_format(resolve(src))
    info = describe(path)
    sources, entry = _files(fmt, path)
    if not sources:
        raise LlamalabError(f"{src}: no files to import")
    files, size = library.add_files(sources, root)
    return {"files": files, "entry": entry, "digest": library.add_tree(files, root), "size": size,
            "source": str(Path(src).resolve()), "modified": time.time(), **info}
