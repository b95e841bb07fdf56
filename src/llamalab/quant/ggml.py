"""GGUF block-quantized weights kept as the file's blocks: the K-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) and the
32-wide Q5_0 / Q5_1, run with llama.cpp's arithmetic (`ggml_linear.cpp`).

`GGMLBlocks` is one matrix: a uint8 tensor of shape (out, bytes per row), row n holding the blocks of weight row n
exactly as the file stores them, and the type's name. A permutation of the rows (as an HF export's q/k
reordering) is a permutation of those byte rows. `GGMLLinear` runs y = x Wᵀ on it:
- CPU with the kernels built (`cpu_kernel.available()`): `torch.ops.llamalab.ggml_linear`, the activations
  rounded per block as llama.cpp does (q8_K for the K-quants, q8_0 / q8_1 for Q5_0 / Q5_1), integer dot
  products, float32 out; a few rows (decoding a batch) quantize the activations once and stream each weight
  row once. From GEMM_ROWS rows on (a prompt's prefill) `torch.ops.llamalab.ggml_gemm`: tiles of weight rows
  dequantized once to bfloat16 and multiplied by torch's bfloat16 GEMM, the activations rounded to bfloat16
  rather than q8 (about the same rounding error; not llama.cpp's arithmetic to the last bit).
- CPU without a compiler (or LLAMALAB_CPU_KERNEL=0): the blocks stay, dequantized per call by the `gguf` package.
- CUDA / other devices: `build_quantized` dequantizes these matrices once, on load, to float weights.
`rows(index)` dequantizes only the looked-up rows: an embedding table stored as K-quant blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import LlamalabError
from . import cpu_kernel

# type name → (ggml type id, values per block, bytes per block)
BLOCK_TYPES = {"Q5_0": (6, 32, 22), "Q5_1": (7, 32, 24), "Q2_K": (10, 256, 84), "Q3_K": (11, 256, 110),
               "Q4_K": (12, 256, 144), "Q5_K": (13, 256, 176), "Q6_K": (14, 256, 210)}
GEMM_ROWS = 32  # from this many activation rows on, a bfloat16 GEMM over dequantized tiles (prefill)


@dataclass
class GGMLBlocks:
    """The raw blocks of an (out, in) GGUF matrix of type `qtype`, one row of blocks per output row."""

    data: torch.Tensor  # uint8 (out, in / block · bytes)
    qtype: str
    in_features: int

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self.data.shape[0], self.in_features))

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_rows(self.data, self.qtype, self.in_features).to(dtype)

    def permute_rows(self, fn) -> GGMLBlocks:
        """The same blocks with their rows reordered by `fn` (a function of an (out, X) matrix)."""
        return GGMLBlocks(fn(self.data).contiguous(), self.qtype, self.in_features)


def dequantize_rows(data: torch.Tensor, qtype: str, in_features: int) -> torch.Tensor:
    """Float32 (rows, in) from byte rows (rows, bytes): our kernel where built, else the `gguf` package."""
    data = data.contiguous()
    if data.device.type == "cpu" and cpu_kernel.available():
        return torch.ops.llamalab.ggml_dequantize(data, BLOCK_TYPES[qtype][0], in_features)
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    w = dequantize(data.cpu().numpy(), GGMLQuantizationType[qtype])
    return torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32)).to(data.device)


def from_gguf(data: np.ndarray, qtype: str, shape: tuple[int, int], name: str) -> GGMLBlocks:
    """The blocks of GGUF tensor `name` of type `qtype` and shape (out, in): a view of `data` (the file's
    copy-on-write map: no copy), or a copy where `data` is read-only."""
    out, inp = shape
    _, width, nbytes = BLOCK_TYPES[qtype]
    if inp % width:
        raise LlamalabError(f"tensor {name}: {qtype} rows must be whole blocks of {width} values, but a row has "
                            f"{inp}; the file is damaged or was written by a broken quantizer")
    row = inp // width * nbytes
    if data.size != out * row:
        raise LlamalabError(f"tensor {name}: {qtype} {out}x{inp} needs {out * row:,} bytes but the file holds "
                            f"{data.size:,}; is the file truncated?")
    array = np.asarray(data, dtype=np.uint8).view(np.ndarray).reshape(out, row)
    raw = torch.from_numpy(array if array.flags.writeable else array.copy())
    return GGMLBlocks(raw, qtype, inp)


class GGMLLinear(nn.Module):
    """y = x Wᵀ for W held as GGUF blocks (no bias). `rows(index)` makes the same blocks an embedding table."""

    def __init__(self, blocks: GGMLBlocks):
        super().__init__()
        self.out_features, self.in_features = blocks.shape
        self.qtype, self.type_id = blocks.qtype, BLOCK_TYPES[blocks.qtype][0]
        self.register_buffer("blocks", blocks.data.contiguous(), persistent=False)
        self.path = "ggml" if blocks.data.device.type == "cpu" and cpu_kernel.available() else "dequantize"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.path == "ggml":
            op = torch.ops.llamalab.ggml_gemm if flat.shape[0] >= GEMM_ROWS else torch.ops.llamalab.ggml_linear
            y = op(flat.float().contiguous(), self.blocks, self.type_id)
        else:
            y = flat.float() @ dequantize_rows(self.blocks, self.qtype, self.in_features).t()
        return y.to(x.dtype).view(*x.shape[:-1], self.out_features)

    def rows(self, index: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Dequantized weight rows W[index] → (*index.shape, in_features)."""
        w = dequantize_rows(self.blocks[index.reshape(-1)], self.qtype, self.in_features)
        return w.to(dtype).view(*index.shape, self.in_features)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_rows(self.blocks, self.qtype, self.in_features).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, {self.qtype}, {self.path}"
