"""The model library's workflow: read a checkpoint into the library (`import_model`), list, show, copy, remove.

    import_model("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")      # then: llamalab generate --model smollm2
    listing()       # [{"name": "smollm2:latest", "size": ..., "format": "gguf", "quantization": "Q4_1", ...}]

The store itself (blobs by sha256, manifests by name) is `llamalab.library`; `runtime.load_runnable` resolves
a name that is no path through it.
"""

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


def import_model(src, name: str, root: Path | None = None) -> dict:
    """Read the checkpoint `src` (a .gguf file, an HF or Meta directory, a `quantize` directory) into the
    library as `name`; the same bytes are stored once. Returns the manifest."""
    root = root or library.home()
    library.split_name(name)  # a bad name fails before any bytes move
    fmt, path = detect_format(resolve(src))
    info = describe(path)
    sources, entry = _files(fmt, path)
    if not sources:
        raise LlamalabError(f"{src}: no files to import")
    files, size = {}, 0
    with library.locked(root):
        for rel, file in sources.items():
            files[rel], n = library.add_blob(file, root)
            size += n
        digest = library.add_tree(files, root)
        manifest = {"files": files, "entry": entry, "digest": digest, "size": size,
                    "source": str(Path(src).resolve()), "modified": time.time(), **info}
        library.write_manifest(name, manifest, root)  # the last step: only now does the name list
    return {"name": library.full_name(name), **manifest}


def listing(root: Path | None = None) -> list[dict]:
    return library.entries(root)


def show(name: str, root: Path | None = None) -> dict:
    return {"name": library.full_name(name), **library.manifest(name, root)}


def copy(src: str, dst: str, root: Path | None = None) -> None:
    library.copy(src, dst, root)


def remove(name: str, root: Path | None = None) -> None:
    library.remove(name, root)
