"""`llamalab create NAME -f Modelfile`: a library model made of another and what the Modelfile gives it.

The new manifest names the base's blobs and tree (no bytes copied: FROM a path imports that checkpoint's
files into the store once, FROM a library name reuses its files) and carries a `preset`: the parameters, the
system prompt, the messages, the template and the adapter (its files stored as blobs and a tree too). A model
made FROM a created model starts from that one's preset; the new Modelfile's values win. `runtime.load_runnable`
applies the preset's adapter and template; generation takes its parameters, system prompt and messages as
defaults that a request's own values override.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from .. import library
from ..errors import LlamalabError
from .modelfile import Modelfile, parse, render
from .store import store


def _base(m: Modelfile, base_dir: Path, root: Path) -> tuple[dict, str]:
    """(the base's manifest, how the Modelfile names it): a path (relative to the Modelfile) or a library name."""
    path = Path(m.base).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if path.exists():
        return store(path, root), str(path.resolve())
    if library.looks_like_name(m.base) and library.full_name(m.base) in library.names(root):
        entry = dict(library.manifest(m.base, root))
        return entry, library.full_name(m.base)
    have = ", ".join(library.names(root)) or "none"
    raise LlamalabError(f"Modelfile line {m.base_line}: FROM {m.base}: no such file or directory ({path}), and no "
                        f"model of that name in the library (it has: {have})")


def _adapter(m: Modelfile, base_dir: Path, root: Path) -> dict:
    path = Path(m.adapter).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_dir():
        raise LlamalabError(f"Modelfile line {m.adapter_line}: ADAPTER {m.adapter}: no such directory ({path}); "
                            "give a LoRA adapter directory (ours or peft's: adapter_config.json + weights)")
    sources = {str(p.relative_to(path)): p for p in sorted(path.rglob("*")) if p.is_file()}
    files, size = library.add_files(sources, root)
    return {"files": files, "digest": library.add_tree(files, root), "size": size, "source": str(path.resolve())}


def _preset(m: Modelfile, inherited: dict, adapter: dict | None) -> dict:
    preset = dict(inherited)
    preset["parameters"] = {**inherited.get("parameters", {}), **m.parameters}
    for key in ("system", "template"):
        if getattr(m, key) is not None:
            preset[key] = getattr(m, key)
    if m.messages:
        preset["messages"] = m.messages
    if adapter is not None:
        if inherited.get("adapter"):
            raise LlamalabError(f"Modelfile line {m.adapter_line}: the base model has an adapter already; "
                                "llamalab runs one adapter per model (merge one first with `llamalab lora merge`)")
        preset["adapter"] = adapter
    return preset


def create(name: str, modelfile: str | Modelfile, *, base_dir: Path | None = None, root: Path | None = None,
           progress: Callable[[str], object] = lambda status: None) -> dict:
    """Make the library model `name` of a Modelfile (its text, or a parsed `Modelfile`); paths in it are relative
    to `base_dir` (default: the current directory). `progress` gets ollama's status lines. Returns the manifest."""
    root = root or library.home()
    library.split_name(name)
    m = parse(modelfile) if isinstance(modelfile, str) else modelfile
    base_dir = Path(base_dir or ".")
    with library.locked(root):
        progress("reading model metadata")
        base, named = _base(m, base_dir, root)
        progress("creating adapter layer" if m.adapter else "using existing layers")
        adapter = _adapter(m, base_dir, root) if m.adapter else None
        preset = _preset(m, base.get("preset") or {}, adapter)
        entry = {**base, "preset": preset, "modified": time.time(), "parent": named,
                 "modelfile": render(m, named)}
        if m.license:
            entry["license"] = "\n".join(m.license)
        progress("writing manifest")
        library.write_manifest(name, entry, root)
    progress("success")
    return {"name": library.full_name(name), **entry}
