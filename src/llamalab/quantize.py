"""`llamalab quantize`: a float checkpoint → 8- or 4-bit weights, in a GGUF file or a safetensors directory.

GGUF (a `.gguf` path): the block types llama.cpp runs — Q8_0 for 8 bits, Q4_1 (or Q4_0 with
`symmetric`) for 4 bits; blocks are always 32 wide; norms stay F32; with 4 bits the embedding (and a
tied output head) stays Q8_0, as llama.cpp's own quantizer does. The blocks come from the `gguf` package.

A directory (any other path): an HF-style directory (config.json with a `quantization_config`,
model.safetensors, the tokenizer) whose matrices are group codes with a group size of 32, 64 or 128
(`codes.quantize`: 8 bits symmetric, 4 bits with a per-group minimum like Q4_1; the embedding at 8 bits
when `bits` is 4); the layout is in docs/quantized-layout.md. `llamalab.load` reads both back quantized.
"""

from __future__ import annotations

from pathlib import Path

import torch

from . import threads
from .atomic import check_apart
from .errors import LlamalabError
from .formats import load_state, save
from .quant.codes import BLOCK, quantize

FLOAT_TYPES = {"F32", "F16", "BF16"}
DIRECTORY_GROUPS = (32, 64, 128)
EMBEDDINGS = ("tok_embeddings.weight", "output.weight")


def _source(src):
    src = load_state(src)
    meta = src.extra.get("metadata", {})
    quantized = sorted({t for t in src.extra.get("tensor_types", {}).values() if t not in FLOAT_TYPES})
    if quantized or "quantization_config" in meta:
        what = ", ".join(quantized) or meta["quantization_config"].get("quant_method", "quantized")
        raise LlamalabError(f"{src.path} is already quantized ({what}); quantize a float checkpoint "
                            f"(e.g. `llamalab convert {src.path} --to gguf --out model-f32.gguf` first)")
    return src.state, src.args, src.format, src.path


def _check(bits: int, group_size: int, gguf: bool, symmetric: bool) -> None:
    if bits not in (8, 4):
        raise LlamalabError(f"--bits must be 8 or 4, got {bits}")
    if gguf and group_size != BLOCK:
        raise LlamalabError(f"GGUF's quantized types use blocks of {BLOCK}; --group-size {group_size} is not "
                            "available for GGUF output (write a directory for 64 or 128)")
    if not gguf and group_size not in DIRECTORY_GROUPS:
        raise LlamalabError(f"--group-size must be one of {', '.join(map(str, DIRECTORY_GROUPS))}, got {group_size}")
    if not gguf and symmetric:
        raise LlamalabError("--symmetric (Q4_0) applies to .gguf output only")


def quantize_checkpoint(src, out, *, bits: int, group_size: int | None = None, symmetric: bool = False,
                        force: bool = False) -> Path:
    """Write the quantized checkpoint to `out` (atomically) and return its path: a `.gguf` file, else an
    HF-style directory of group codes."""
    out = Path(out)
    gguf = out.suffix == ".gguf"
    group_size = group_size or BLOCK
    _check(bits, group_size, gguf, symmetric)
    check_apart(out, [src])  # before anything is read: --force never replaces the float source
    if out.exists() and not force:
        raise LlamalabError(f"{out} already exists; pass --force to replace it")
    state, args, fmt, path = _source(src)
    for name, w in state.items():  # every matrix must split into whole groups
        if w.ndim == 2 and w.shape[1] % group_size:
            raise LlamalabError(f"--group-size {group_size} does not divide the width {w.shape[1]} of {name}; "
                                "use a divisor of every layer's width (32 always works for LLaMA shapes)")
    out.parent.mkdir(parents=True, exist_ok=True)
    threads.adapt()
    if gguf:
        kind = "q8_0" if bits == 8 else ("q4_0" if symmetric else "q4_1")
        return save(state, args, out, "gguf", tokenizer_src=path, gguf_type=kind, force=force)  # atomic
    codes = {k: quantize(w, 8 if k in EMBEDDINGS else bits, group_size) if w.ndim == 2 else w.float()
             for k, w in state.items()}
    config = {"quant_method": "llamalab", "format": "group-codes", "bits": bits, "group_size": group_size,
              "embedding_bits": 8, "zero_point": bits == 4, "layout": "w = qweight * scales + zeros per group"}
    return save(codes, args, out, "hf", tokenizer_src=path, dtype=torch.float32, force=force,
                quantization_config=config)
