"""The model library on disk: models by name (`smollm2`, `smollm2:q4`), ollama's way.

    $LLAMALAB_HOME/models/               (default: $XDG_DATA_HOME/llamalab, else ~/.local/share/llamalab)
        blobs/sha256-<hex>               every file's bytes once, named by their sha256
        trees/<digest>/<relative path>   a checkpoint's layout, hard links to its blobs (what the loaders read)
        manifests/<name>/<tag>.json      {"files": {relative path: sha256}, "format", "quantization", ...}

A name lists once its manifest is written, and the manifest is written last (atomically), after its blobs
and its tree: a half-imported model never lists. Removing a name removes its manifest, then every tree and
blob no manifest names any more. This module knows files only; `llamalab.models` reads checkpoints into it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .atomic import staged_dir, write_text
from .bounded import read_json
from .errors import LlamalabError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,79}")


def home() -> Path:
    """The library's root: $LLAMALAB_HOME/models, else the user's data directory's llamalab/models."""
    if os.environ.get("LLAMALAB_HOME"):
        return Path(os.environ["LLAMALAB_HOME"]).expanduser() / "models"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "llamalab" / "models"


def split_name(name: str) -> tuple[str, str]:
    """(model, tag) of "model[:tag]" (tag "latest" when none), checked."""
    model, colon, tag = str(name).partition(":")
    tag = tag or ("" if colon else "latest")
    if not NAME.fullmatch(model) or not NAME.fullmatch(tag) or model.endswith(".gguf"):
        raise LlamalabError(f"{name!r} is not a model name: use NAME[:TAG] with letters, digits, '.', '_', '-' "
                            "(e.g. smollm2:135m)")
    return model, tag


def full_name(name: str) -> str:
    model, tag = split_name(name)
    return f"{model}:{tag}"


def looks_like_name(text) -> bool:
    """Whether `text` may be a library name (and not a path or a hub id)."""
    return isinstance(text, str) and "/" not in text and "\\" not in text and \
        bool(re.fullmatch(rf"{NAME.pattern}(:{NAME.pattern})?", text)) and not text.endswith(".gguf")


def _manifest_path(name: str, root: Path) -> Path:
    model, tag = split_name(name)
    return root / "manifests" / model / f"{tag}.json"


def names(root: Path | None = None) -> list[str]:
    """Every name in the library, sorted."""
    base = (root or home()) / "manifests"
    return sorted(f"{p.parent.name}:{p.stem}" for p in base.glob("*/*.json")) if base.is_dir() else []


def manifest(name: str, root: Path | None = None) -> dict:
    """The manifest of `name`; an unknown name fails with the names that exist."""
    root = root or home()
    path = _manifest_path(name, root)
    if not path.is_file():
        have = ", ".join(names(root)) or "none yet (add one with `llamalab models import PATH --name NAME`)"
        raise LlamalabError(f"no model named {full_name(name)!r} in the library {root}; it has: {have}")
    return read_json(path)


def entries(root: Path | None = None) -> list[dict]:
    """Every manifest, with its name."""
    return [{"name": n, **manifest(n, root)} for n in names(root)]


def preset(name: str, root: Path | None = None) -> dict:
    """What a Modelfile gave `name` (`llamalab create`): system, parameters, messages, template, and the path of
    its adapter's tree; {} for an imported model."""
    root = root or home()
    found = dict(manifest(name, root).get("preset") or {})
    if found.get("adapter"):
        found["adapter"] = str(root / "trees" / found["adapter"]["digest"])
    return found


def resolve(name: str, root: Path | None = None) -> Path:
    """The path the loaders read for the library model `name` (its tree, or its one file)."""
    root = root or home()
    entry = manifest(name, root)
    tree = root / "trees" / entry["digest"]
    return tree / entry["entry"] if entry.get("entry") else tree


@contextmanager
def locked(root: Path) -> Iterator[None]:
    """The library to oneself: imports, copies and removals take turns (a removal's clean-up never takes
    the blobs of an import still under way)."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def blob_path(sha: str, root: Path) -> Path:
    return root / "blobs" / f"sha256-{sha}"


def add_blob(src: Path, root: Path) -> tuple[str, int]:
    """Copy `src` into the blobs (once: the same bytes are stored once) → (sha256, size)."""
    h = hashlib.sha256()
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    tmp = root / "blobs" / f".incoming-{os.getpid()}-{time.monotonic_ns()}"
    try:
        with open(src, "rb") as f, open(tmp, "wb") as out:
            while block := f.read(1 << 22):
                h.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        sha = h.hexdigest()
        target = blob_path(sha, root)
        if not target.exists():
            os.replace(tmp, target)
        return sha, target.stat().st_size
    finally:
        tmp.unlink(missing_ok=True)


def add_files(sources: dict[str, Path], root: Path) -> tuple[dict[str, str], int]:
    """Every file of `sources` (relative path → file) as a blob → ({relative path: sha256}, total bytes)."""
    files, size = {}, 0
    for rel, file in sources.items():
        files[rel], n = add_blob(file, root)
        size += n
    return files, size


def tree_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:32]


def add_tree(files: dict[str, str], root: Path) -> str:
    """The directory of `files` (relative path → sha256), hard links to the blobs; shared by equal layouts."""
    digest = tree_digest(files)
    target = root / "trees" / digest
    if target.is_dir():
        return digest
    with staged_dir(target) as tmp:
        for rel, sha in files.items():
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(blob_path(sha, root), dest)
            except OSError:  # a filesystem without hard links
                dest.symlink_to(blob_path(sha, root))
    return digest


def write_manifest(name: str, entry: dict, root: Path) -> None:
    """Make `name` list (the last step of an import or a copy)."""
    write_text(_manifest_path(name, root), json.dumps(entry, indent=1, sort_keys=True) + "\n")


def copy(src: str, dst: str, root: Path | None = None) -> None:
    """`dst` names the same model as `src` (no bytes copied)."""
    root = root or home()
    with locked(root):
        entry = manifest(src, root)
        write_manifest(dst, {**entry, "modified": time.time()}, root)


def remove(name: str, root: Path | None = None) -> None:
    """Forget `name`; its trees and blobs go when no other name uses them."""
    root = root or home()
    with locked(root):
        manifest(name, root)  # an unknown name fails here
        _manifest_path(name, root).unlink()
        try:
            _manifest_path(name, root).parent.rmdir()
        except OSError:
            pass
        collect(root)


def collect(root: Path) -> None:
    """Delete the trees and blobs no manifest names (and leftovers of interrupted imports); under `locked`."""
    kept = entries(root)
    adapters = [e["preset"]["adapter"] for e in kept if (e.get("preset") or {}).get("adapter")]
    digests = {e["digest"] for e in kept} | {a["digest"] for a in adapters}
    shas = {sha for e in kept + adapters for sha in e["files"].values()}
    for tree in (root / "trees").glob("*") if (root / "trees").is_dir() else []:
        if tree.name not in digests:
            shutil.rmtree(tree, ignore_errors=True)
    for blob in (root / "blobs").glob("*") if (root / "blobs").is_dir() else []:
        if blob.name.removeprefix("sha256-") not in shas:
            blob.unlink(missing_ok=True)
