"""llama.cpp's file types (Q4_K_M, Q5_K_M, Q6_K, Q8_0, ...) as a type per tensor, and the blocks of each type.

`tensor_types` ports `llama_tensor_get_type` (src/llama-quant.cpp, llama.cpp, MIT licence) for the llama
architecture without experts and without an importance matrix: the output head (and a tied embedding) at
Q6_K, `attn_v` / `ffn_down` at more bits in the layers `use_more_bits` picks for the _M types, the first
layers' for _S and Q3_K_M, and the fallback for rows that are not whole 256-value super-blocks (Q4_K → Q5_0,
Q5_K → Q5_1, Q6_K → Q8_0, Q2_K / Q3_K → Q4_0; F16 when even 32 does not divide them). Norms stay F32.
`encode` writes one tensor's blocks: the K-quants with `quant.kquant_encode` (llama.cpp's reference
quantizers, byte for byte), the 32-wide types and BF16 with the `gguf` package.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as Q
from gguf.quants import quantize

from ..errors import LlamalabError
from ..quant.kquant_encode import ENCODERS
from ..quant.kquant_encode import encode as encode_kquant
from ..quant.kquant_imatrix import LEGACY, WEIGHTED
from ..quant.kquant_imatrix import encode as encode_weighted
from ..tokenizer import open_gguf

F = LlamaFileType
# --type name → (general.file_type, the type of most matrices)
FILE_TYPES = {
    "q2_k": (F.MOSTLY_Q2_K, Q.Q2_K), "q3_k_s": (F.MOSTLY_Q3_K_S, Q.Q3_K), "q3_k_m": (F.MOSTLY_Q3_K_M, Q.Q3_K),
    "q3_k_l": (F.MOSTLY_Q3_K_L, Q.Q3_K), "q4_k_s": (F.MOSTLY_Q4_K_S, Q.Q4_K), "q4_k_m": (F.MOSTLY_Q4_K_M, Q.Q4_K),
    "q5_k_s": (F.MOSTLY_Q5_K_S, Q.Q5_K), "q5_k_m": (F.MOSTLY_Q5_K_M, Q.Q5_K), "q6_k": (F.MOSTLY_Q6_K, Q.Q6_K),
    "q4_0": (F.MOSTLY_Q4_0, Q.Q4_0), "q4_1": (F.MOSTLY_Q4_1, Q.Q4_1), "q5_0": (F.MOSTLY_Q5_0, Q.Q5_0),
    "q5_1": (F.MOSTLY_Q5_1, Q.Q5_1), "q8_0": (F.MOSTLY_Q8_0, Q.Q8_0), "f16": (F.MOSTLY_F16, Q.F16),
    "bf16": (F.MOSTLY_BF16, Q.BF16), "f32": (F.ALL_F32, Q.F32),
}
FALLBACK = {Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0, Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0}
FLOATS = (Q.F32, Q.F16, Q.BF16)


def check_file_type(name: str) -> str:
    key = name.lower()
    if key not in FILE_TYPES:
        raise LlamalabError(f"unknown --type {name!r}; choose one of {', '.join(FILE_TYPES)}")
    return key


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _category(name: str) -> str:
    if name in ("output.weight", "token_embd.weight"):
        return name.split(".")[0]
    return next((c for c in ("attn_v", "attn_k", "attn_q", "attn_output", "ffn_up", "ffn_gate", "ffn_down")
                 if f"{c}.weight" in name or (c.startswith("ffn") and c in name)), "other")


def _mixed(ftype: str, default: Q, category: str, ncols: int, i: int, n: int, gqa: int, is_70b: bool) -> Q:
    """llama_tensor_get_type_impl for one matrix; i is the tensor's index among its kind (its layer)."""
    new = default
    if category == "output":  # output.weight, or token_embd.weight when the head is tied to it
        return Q.Q8_0 if ncols % GGML_QUANT_SIZES[default][0] else new if new == Q.Q8_0 else Q.Q6_K
    if category == "attn_v":
        if ftype == "q2_k":
            new = Q.Q4_K if gqa >= 4 else Q.Q3_K
        elif ftype == "q3_k_m":
            new = Q.Q5_K if i < 2 else Q.Q4_K
        elif ftype == "q3_k_l":
            new = Q.Q5_K
        elif ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i, n):
            new = Q.Q6_K
        elif ftype == "q4_k_s" and i < 4:
            new = Q.Q5_K
        if is_70b and new in (Q.Q3_K, Q.Q4_K):
            new = Q.Q5_K
    elif category == "ffn_down":
        if ftype == "q2_k":
            new = Q.Q3_K
        elif ftype == "q3_k_m":
            new = Q.Q5_K if i < n // 16 else Q.Q4_K
        elif ftype == "q3_k_l":
            new = Q.Q5_K
        elif ftype == "q4_k_m":
            new = Q.Q6_K if use_more_bits(i, n) else new
        elif ftype == "q5_k_m" and use_more_bits(i, n):
            new = Q.Q6_K
        elif ftype == "q4_k_s" and i < n // 8:
            new = Q.Q5_K
    elif category == "attn_output":
        new = {"q2_k": Q.Q3_K, "q3_k_m": Q.Q4_K, "q3_k_l": Q.Q5_K}.get(ftype, new)
    return new


def _layer(name: str) -> int:
    return int(name.split(".")[1]) if name.startswith("blk.") else -1


def tensor_types(shapes: dict[str, tuple], ftype: str, *, n_layers: int, n_heads: int, n_kv_heads: int) -> dict:
    """GGUF tensor name → its GGML type in a `ftype` file (llama.cpp's choice). shapes: (out, in) per tensor,
    the tensors the file will hold (no output.weight when the head is tied to the embedding)."""
    ftype = check_file_type(ftype)
    default = FILE_TYPES[ftype][1]
    tied = "output.weight" not in shapes
    gqa, is_70b = n_heads // max(1, n_kv_heads), n_layers == 80 and n_heads != n_kv_heads
    n_v = sum(_category(k) == "attn_v" for k in shapes)
    seen = {"attn_v": 0, "ffn_down": 0}
    types = {}
    for name in sorted(shapes, key=lambda k: (_layer(k), k)):  # llama.cpp's order: by layer, then by name
        shape = shapes[name]
        if len(shape) < 2 or not name.endswith("weight") or "_norm.weight" in name:
            types[name] = Q.F32
            continue
        if default in FLOATS:
            types[name] = default
            continue
        category = _category(name)
        if category == "token_embd" and tied:
            category = "output"
        n = n_v if category == "attn_v" else n_layers
        new = _mixed(ftype, default, category, shape[-1], seen.get(category, 0), n, gqa, is_70b)
        if category in seen:
            seen[category] += 1
        if shape[-1] % GGML_QUANT_SIZES[new][0]:  # a row that is no whole number of blocks
            new = FALLBACK.get(new, new)
            if shape[-1] % GGML_QUANT_SIZES[new][0]:
                new = Q.F16
        types[name] = new
    return types


def encode(array: np.ndarray, qtype: Q, imatrix: np.ndarray | None = None) -> np.ndarray:
    """One tensor's data as GGUFWriter takes it: float arrays for F32/F16, uint8 blocks otherwise. imatrix: the
    tensor's importance values (one per column), used by the types whose llama.cpp quantizer takes them."""
    array = np.asarray(array, dtype=np.float32)
    if qtype == Q.F32:
        return array
    if qtype == Q.F16:
        return array.astype(np.float16)
    if imatrix is not None and (qtype.name in WEIGHTED or qtype.name in LEGACY):
        rows = array.reshape(-1, array.shape[-1])
        return encode_weighted(rows, qtype.name, imatrix).reshape(*array.shape[:-1], -1)
    if qtype.name in ENCODERS:
        return encode_kquant(array.reshape(-1, array.shape[-1]), qtype.name).reshape(*array.shape[:-1], -1)
    return quantize(array, qtype)


GROUPS = ("token_embd", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "output",
          "norms")


def type_summary(path) -> tuple[list[tuple[str, Counter]], float, int, int]:
    """A GGUF file's tensor groups (token_embd, attn_q/k/v/output, ffn_gate/up/down, output, norms) with the
    count of each GGML type in them, and its bits per weight over every tensor (llama.cpp's BPW: tensor
    bytes × 8 / weights), the bytes and the weights."""
    groups: dict[str, Counter] = {}
    size = weights = 0
    for t in open_gguf(Path(path)).tensors:
        group = "norms" if t.name.endswith("norm.weight") else t.name.split(".")[-2] if t.name.startswith("blk.") \
            else t.name.split(".")[0]
        groups.setdefault(group, Counter())[t.tensor_type.name] += 1
        size, weights = size + int(t.n_bytes), weights + int(t.n_elements)
    order = sorted(groups, key=lambda g: (GROUPS.index(g) if g in GROUPS else len(GROUPS), g))
    return [(g, groups[g]) for g in order], 8 * size / max(1, weights), size, weights
