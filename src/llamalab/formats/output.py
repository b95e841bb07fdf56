"""Where a checkpoint may be written: the rule every writer checks before it replaces anything.

A new path, or an empty directory, is always fine. An existing output is replaced only with `force`,
and only when it is what a checkpoint writer makes: for GGUF a GGUF file, for HF and Meta a directory
holding nothing but checkpoint files (config.json, *.safetensors, params.json, consolidated.*.pth,
tokenizer files). Never the current directory (or one above it), never an input of the conversion, one
holding it or one inside it (`atomic.check_apart`, the rule of every writer). The writers then replace the
old output only once the new one is complete (`llamalab.atomic`).
"""

from __future__ import annotations

from fnmatch import fnmatch
from pathlib import Path

from ..atomic import check_apart
from ..errors import LlamalabError
from ..tokenizer import TOKENIZER_FILES

CHECKPOINT_FILES = ("config.json", "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
                    "params.json", "consolidated.*.pth", *TOKENIZER_FILES)


def check_output(out, fmt: str, *, force: bool = False, inputs=()) -> None:
    """Raise a LlamalabError unless a `fmt` checkpoint ("gguf": a file; "hf", "meta": a directory) may be
    written at `out`, replacing what is there (see the module docstring). `inputs`: paths being read."""
    out = Path(out)
    where = out.resolve()
    if where == Path.cwd().resolve() or where in Path.cwd().resolve().parents:
        raise LlamalabError(f"refusing to replace {out}: it is (or holds) the current directory; "
                            "choose a new output path")
    check_apart(out, inputs)
    if not (out.exists() or out.is_symlink()):
        return
    if fmt != "gguf" and out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        return
    if not force:
        raise LlamalabError(f"{out} already exists; pass --force (force=True) to replace it")
    if fmt == "gguf":
        if not _is_gguf_file(out):
            raise LlamalabError(f"{out} exists and is not a GGUF file; --force replaces only a GGUF file: "
                                "choose another output path")
        return
    if not out.is_dir() or out.is_symlink():
        raise LlamalabError(f"{out} exists and is not a directory; choose another output path")
    foreign = sorted(p.name for p in out.iterdir()
                     if not (p.is_file() and not p.is_symlink() and any(fnmatch(p.name, f) for f in CHECKPOINT_FILES)))
    if foreign:
        raise LlamalabError(f"{out} holds more than a checkpoint ({', '.join(foreign[:3])}"
                            f"{' ...' if len(foreign) > 3 else ''}); --force replaces only a directory of "
                            "checkpoint files: remove those or choose another output path")


def _is_gguf_file(path: Path) -> bool:
    if not path.is_file() or path.is_symlink():
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"
