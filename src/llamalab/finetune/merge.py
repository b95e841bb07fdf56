"""Folding an adapter into a base checkpoint and writing a normal one (`llamalab lora merge`); attaching one to a
loaded model (`--adapter`) is `formats.peft.attach_adapter`."""

from __future__ import annotations

from ..errors import LlamalabError
from ..formats import FORMATS, load_state, save
from ..formats.output import check_output
from ..formats.peft import load_adapter
from ..formats.lora import merge_into_state

GGUF_TYPES = ("f32", "f16", "q8_0")


def merge_checkpoint(base, adapter_dir, out, fmt: str = "hf", *, force: bool = False,
                     gguf_type: str = "f32") -> dict:
    """W + (α/r)·BA for every adapted layer of `base`, written as `fmt` (hf | meta | gguf) to `out` with the base's
    tokenizer and chat template (atomically, as every checkpoint writer does: never half-written)."""
    if fmt not in FORMATS:
        raise LlamalabError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "gguf" and gguf_type not in GGUF_TYPES:
        raise LlamalabError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    check_output(out, fmt, force=force, inputs=(base, adapter_dir))  # before anything is read
    src = load_state(base)
    adapter = load_adapter(adapter_dir, src.args)  # shapes checked before anything is computed or written
    merged = merge_into_state({k: v.float() for k, v in src.state.items()}, adapter)
    options = {"gguf_type": gguf_type} if fmt == "gguf" else {}
    save(merged, src.args, out, fmt, tokenizer_src=src.tokenizer(), force=force, **options)
    return {"out": str(out), "format": fmt, "layers": len(adapter.layers), "base": str(src.path)}

