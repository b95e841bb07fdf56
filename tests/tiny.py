"""Small random models for tests that need weights but not a real checkpoint."""

import torch

from llamalab.config import ModelArgs
from llamalab.model import Transformer


def random_state(args: ModelArgs, seed=0) -> dict[str, torch.Tensor]:
    """A freshly initialized state dict as a checkpoint holds it (no `output.weight` when tied)."""
    model = Transformer(args)
    model.init_weights(generator=torch.Generator().manual_seed(seed))
    state = model.state_dict()
    if args.tie_embeddings:
        del state["output.weight"]
    return state
