"""A Transformer whose projections (and embedding) are group codes: `build_quantized(state, args)`."""

from __future__ import annotations

import torch

from ..errors import LlamalabError
from ..model import Transformer
from .codes import GroupCodes
from .ggml import GGMLBlocks, GGMLLinear
from .linear import QuantEmbedding, QuantLinear


def _to(codes: GroupCodes, device) -> GroupCodes:
    perm = None if codes.perm is None else codes.perm.to(device)
    return GroupCodes(codes.q.to(device), codes.scale.to(device), codes.zero.to(device), codes.bits,
                      codes.group_size, perm)


def build_quantized(state: dict, args, *, device="cpu", dtype=torch.float32) -> Transformer:
    """The Transformer for a state dict mixing float tensors (norms, ...), `GroupCodes` and `GGMLBlocks`
    (projections, embedding): code-holding layers become `QuantLinear` / `GGMLLinear` (a `QuantEmbedding` over
    one for the embedding), the rest is `dtype`. GGUF blocks off the CPU are dequantized here, once."""
    if torch.device(device).type != "cpu":
        state = {k: v.dequantize(dtype) if isinstance(v, GGMLBlocks) else v for k, v in state.items()}
    floats = {k: v.to(device=device, dtype=dtype) for k, v in state.items() if isinstance(v, torch.Tensor)}
    codes = {k: v if isinstance(v, GGMLBlocks) else _to(v, device) for k, v in state.items()
             if isinstance(v, (GroupCodes, GGMLBlocks))}
    with torch.device("meta"):
        model = Transformer(args)
    model.load_state_dict(floats, strict=False, assign=True)
    for name, c in codes.items():
        module = name.removesuffix(".weight")
        if module == "tok_embeddings":
            table = _layer(c)
            model.tok_embeddings = QuantEmbedding(table, dtype)
            if args.tie_embeddings:
                model.output = table
        else:
            model.set_submodule(module, _layer(c))
    if args.tie_embeddings and "tok_embeddings.weight" in floats:
        model.tie_weights()
    missing = [n for n, p in model.named_parameters() if p.is_meta]
    if missing:
        raise LlamalabError(f"quantized checkpoint lacks tensors {missing[:4]}")
    model.init_buffers(device)
    return model.eval()


def _layer(c):
    return GGMLLinear(c) if isinstance(c, GGMLBlocks) else QuantLinear(c)


def weight_bytes(model: Transformer) -> int:
    """Bytes held by the model's weights (float parameters, codes, scales), each tensor counted once."""
    tensors = {t.data_ptr(): t.nbytes for t in (*model.parameters(), *model.buffers())}
    return sum(tensors.values())


def is_quantized(model: Transformer) -> bool:
    return any(isinstance(m, (QuantLinear, QuantEmbedding, GGMLLinear)) for m in model.modules())
