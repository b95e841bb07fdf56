"""The model library's workflow: read a checkpoint into the library (`import_model`), list, show, copy, remove.

    import_model("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")      # then: llamalab generate --model smollm2
    listing()       # [{"name": "smollm2:latest", "size": ..., "format": "gguf", "quantization": "Q4_1", ...}]

    create("terse", Path("Modelfile").read_text(), base_dir=Path("."))   # ollama's Modelfile (modelfile.py)

`store.py` puts a checkpoint's files into the store, `create.py` makes a model of a Modelfile. The store itself
(blobs by sha256, manifests by name) is `llamalab.library`; `runtime.load_runnable` resolves a name that is no
path through it, with what its Modelfile gave it (`library.preset`).
"""

from __future__ import annotations

from pathlib import Path

from .. import library
from .create import create
from .store import describe, store

__all__ = ["copy", "create", "describe", "import_model", "listing", "remove", "show", "store"]


def import_model(src, name: str, root: Path | None = None) -> dict:
    """Read the checkpoint `src` (a .gguf file, an HF or Meta directory, a `quantize` directory) into the
    library as `name`; the same bytes are stored once. Returns the manifest."""
    root = root or library.home()
    library.split_name(name)  # a bad name fails before any bytes move
    with library.locked(root):
        manifest = store(src, root)
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
