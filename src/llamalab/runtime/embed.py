"""Text embeddings from a decoder model: the mean of the final normed hidden states over the input's tokens
(`Transformer.hidden_states`: everything but the output projection), L2-normalised — what ollama's
/api/embed and OpenAI's /v1/embeddings answer here. Each input runs alone (no padding enters the mean)."""

from __future__ import annotations

import torch

from .. import threads
from ..errors import LlamalabError


@torch.no_grad()
def embed(model, tokenizer, inputs: list[str | list[int]], *, truncate: bool = True,
          context: int | None = None) -> tuple[list[list[float]], int]:
    """(one unit vector per input, the tokens read) for a `Transformer` and its tokenizer (`Runnable.model`,
    `.tokenizer`). An input is text (encoded as the model reads it, with BOS
    where the tokenizer adds one) or token ids. truncate: keep the first `context` tokens of a longer input
    (default the model's context); else a longer input is an error."""
    context = min(context or model.args.max_seq_len, model.args.max_seq_len)
    vectors, read = [], 0
    for i, item in enumerate(inputs):
        ids = tokenizer.encode(item, bos=tokenizer.add_bos) if isinstance(item, str) else list(item)
        if not ids:
            raise LlamalabError(f"input {i} is empty (and the tokenizer adds no BOS token)")
        if any(not 0 <= t < model.args.vocab_size for t in ids):
            raise LlamalabError(f"input {i}: token ids must be in [0, {model.args.vocab_size})")
        if len(ids) > context:
            if not truncate:
                raise LlamalabError(f"input {i} has {len(ids)} tokens, more than the context of {context}; "
                                    "shorten it or allow truncation")
            ids = ids[:context]
        threads.adapt()
        h = model.hidden_states(torch.tensor([ids], device=model.norm.weight.device))[0].float()
        vectors.append(torch.nn.functional.normalize(h.mean(dim=0), dim=0).tolist())
        read += len(ids)
    return vectors, read
