"""`llamalab quantize`: a float checkpoint → 8- or 4-bit weights in a GGUF file.

GGUF (a `.gguf` path): the block types llama.cpp runs — Q8_0 for 8 bits, Q4_1 (or Q4_0 with
`symmetric`) for 4 bits; blocks are always 32 wide; norms stay F32; with 4 bits the embedding (and a
tied output head) stays Q8_0, as llama.cpp's own quantizer does. The blocks come from the `gguf` package.
(A safetensors-directory layout for other group sizes is not written yet.)
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LlamalabError
from .codes import BLOCK

FLOAT_TYPES = {"F32", "F16", "BF16"}


def _source(src):
    from ..formats import load_state

    state, args, extra, fmt, path = load_state(src)
    quantized = sorted({t for t in extra.get("tensor_types", {}).values() if t not in FLOAT_TYPES})
    if quantized:
        raise LlamalabError(f"{path} is already quantized ({', '.join(quantized)}); quantize a "
                            f"float checkpoint (e.g. `llamalab convert {path} --to gguf --out model-f32.gguf` first)")
    return state, args, extra, fmt, path


def quantize_checkpoint(src, out, *, bits: int, group_size: int | None = None, symmetric: bool = False,
                        force: bool = False) -> Path:
    """Write the quantized checkpoint to `out` (atomically) and return its path."""
    from ..formats import save

    if bits not in (8, 4):
        raise LlamalabError(f"--bits must be 8 or 4, got {bits}")
    out = Path(out)
    if out.exists() and not force:
        raise LlamalabError(f"{out} already exists; pass --force to replace it")
    if out.suffix != ".gguf":
        raise LlamalabError(f"--out {out}: quantized output is a .gguf file (a safetensors directory layout "
                            "is not supported yet)")
    group_size = group_size or BLOCK
    if group_size != BLOCK:
        raise LlamalabError(f"GGUF's quantized types use blocks of {BLOCK}; --group-size {group_size} is not "
                            "available for GGUF output")
    state, args, extra, fmt, path = _source(src)
    for name, w in state.items():  # every matrix must split into whole groups
        if w.ndim == 2 and w.shape[1] % group_size:
            raise LlamalabError(f"--group-size {group_size} does not divide the width {w.shape[1]} of {name}; "
                                "use a divisor of every layer's width (32 always works for LLaMA shapes)")
    out.parent.mkdir(parents=True, exist_ok=True)
    kind = "q8_0" if bits == 8 else ("q4_0" if symmetric else "q4_1")
    return save(state, args, out, "gguf", tokenizer_src=path, gguf_type=kind)  # atomic
