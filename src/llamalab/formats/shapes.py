"""The tensors a config implies, checked against the tensors a file holds, before a model is built from them."""

from __future__ import annotations

import re

import torch

from ..config import ModelArgs
from ..errors import LlamalabError
from ..model import Transformer


def expected_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = Transformer(args)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if args.tie_embeddings:
        del shapes["output.weight"]
    return shapes


def check_layers(state: dict[str, torch.Tensor], args: ModelArgs, where) -> None:
    """The config's layer count and sizes against the tensors that exist, before a model (even on the meta
    device) is built from it: a header claiming a million layers is refused here, not after building them."""
    layers = {int(m.group(1)) for k in state if (m := re.match(r"layers\.(\d+)\.", k))}
    if len(layers) != args.n_layers or (layers and max(layers) != args.n_layers - 1):
        raise LlamalabError(f"{where}: the config says {args.n_layers} layers but the file holds tensors for "
                            f"{len(layers)}; config and weights disagree")
    embedding = state.get("tok_embeddings.weight")
    if embedding is not None and tuple(embedding.shape) != (args.vocab_size, args.dim):
        raise LlamalabError(f"{where}: token embedding has shape {tuple(embedding.shape)} but the config implies "
                            f"({args.vocab_size}, {args.dim}); config and weights disagree")


def check_state(state: dict[str, torch.Tensor], args: ModelArgs, where) -> None:
    """Every tensor present, none extra, each with the shape the config implies."""
    want = expected_shapes(args)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    if missing:
        raise LlamalabError(f"{where}: missing tensors {missing[:4]}{' ...' if len(missing) > 4 else ''}")
    if extra:
        raise LlamalabError(f"{where}: unexpected tensors {extra[:4]}{' ...' if len(extra) > 4 else ''}")
    for k, shape in want.items():
        if tuple(state[k].shape) != shape:
            raise LlamalabError(f"{where}: tensor {k} has shape {tuple(state[k].shape)} but the config "
                                f"implies {shape}; config and weights disagree")
