"""`llamalab quantize`: a float checkpoint → 8- or 4-bit weights, in a GGUF file or a safetensors directory.

`--type` (q4_k_m, q5_k_m, q6_k, q3_k_m, q2_k, q8_0, q4_0, q4_1, f16, bf16, ...): a GGUF file as llama.cpp's
`quantize` writes it — its per-tensor type mix (`formats.gguf_mix`) and its reference quantizers' bytes;
with `--imatrix FILE` (`imatrix`: llama.cpp's importance matrix) its weighted quantizers' bytes.

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
from .calibrate import float_source, gptq_checkpoint
from .errors import LlamalabError
from .formats import save
from .formats.gguf_mix import check_file_type
from .formats.names import name_maps
from .imatrix import imatrix_for
from .quant.codes import BLOCK, quantize

DIRECTORY_GROUPS = (32, 64, 128)
EMBEDDINGS = ("tok_embeddings.weight", "output.weight")


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


def _check_type(kind: str, out: Path, bits, group_size, symmetric: bool, method: str, gptq: dict) -> str:
    kind = check_file_type(kind)
    if bits is not None:
        raise LlamalabError("--type and --bits both choose the weights' type; pass one (--bits 8 is --type q8_0; "
                            "--bits 4 is Q4_1 with the embedding at Q8_0)")
    if out.suffix != ".gguf":
        raise LlamalabError(f"--type writes a GGUF file; give --out a .gguf name (got {out})")
    extra = [flag for flag, on in (("--group-size", group_size is not None), ("--symmetric", symmetric),
                                   ("--method gptq", method != "rtn"),
                                   *(("--" + k.replace("_", "-"), v not in (None, False)) for k, v in gptq.items()))
             if on]
    if extra:
        raise LlamalabError(f"{', '.join(extra)} does not apply to --type (llama.cpp's round-to-nearest blocks, "
                            "their sizes fixed); drop it, or use --bits")
    return kind


def quantize_file_type(src, out: Path, kind: str, *, force: bool = False, imatrix=None) -> Path:
    """`quantize --type`: a GGUF in one of llama.cpp's file types (`formats.gguf_mix`), each tensor at the
    type llama.cpp's `quantize` gives it, the blocks byte for byte its quantizers': the reference ones, or
    with `imatrix` (an importance-matrix file, `llamalab imatrix` or llama-imatrix) the weighted ones."""
    check_apart(out, [src] + ([imatrix] if imatrix is not None else []))
    if out.exists() and not force:
        raise LlamalabError(f"{out} already exists; pass --force to replace it")
    state, args, fmt, path = float_source(src)
    values = None
    if imatrix is not None:
        _, to_gguf = name_maps("gguf")
        values = imatrix_for(imatrix, {to_gguf(k): tuple(w.shape) for k, w in state.items() if to_gguf(k)})
    out.parent.mkdir(parents=True, exist_ok=True)
    threads.adapt()
    return save(state, args, out, "gguf", tokenizer_src=path, ftype=kind, force=force, imatrix=values)  # atomic


def quantize_checkpoint(src, out, *, bits: int | None = None, group_size: int | None = None, symmetric: bool = False,
                        force: bool = False, method: str = "rtn", file_type: str | None = None, imatrix=None,
                        **gptq) -> Path:
    """Write the quantized checkpoint to `out` (atomically) and return its path: a `.gguf` file, else an
    HF-style directory of group codes. method "gptq": calibrated, a GPTQ-layout directory
    (`calibrate.gptq_checkpoint`, which takes the `gptq` options: act_order, calibration, samples, seq_len).
    file_type: one of llama.cpp's file types (q4_k_m, q6_k, q8_0, f16, ...; `quantize_file_type`), not with bits;
    imatrix: with file_type, an importance-matrix file the rounding is weighted by."""
    out = Path(out)
    if file_type is not None:
        kind = _check_type(file_type, out, bits, group_size, symmetric, method or "rtn", gptq)
        return quantize_file_type(src, out, kind, force=force, imatrix=imatrix)
    if imatrix is not None:
        raise LlamalabError("--imatrix applies to --type (llama.cpp's file types: q4_k_m, q6_k, ...); add --type or "
                            "drop --imatrix")
    if bits is None:
        raise LlamalabError("choose the weights' type: --type (q4_k_m, q6_k, q8_0, ...) or --bits (8 or 4)")
    if method == "gptq":
        return gptq_checkpoint(src, out, bits=bits, group_size=group_size or 128, sym=symmetric, force=force,
                               **gptq)
    if method != "rtn":
        raise LlamalabError(f"--method must be rtn or gptq, got {method!r}")
    if any(v not in (None, False) for v in gptq.values()):
        raise LlamalabError(f"{', '.join('--' + k.replace('_', '-') for k, v in gptq.items() if v not in (None, False))} "
                            "applies to --method gptq only")
    gguf = out.suffix == ".gguf"
    group_size = group_size or BLOCK
    _check(bits, group_size, gguf, symmetric)
    check_apart(out, [src])  # before anything is read: --force never replaces the float source
    if out.exists() and not force:
        raise LlamalabError(f"{out} already exists; pass --force to replace it")
    state, args, fmt, path = float_source(src)
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
