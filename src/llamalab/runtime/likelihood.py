"""The one chunked log-likelihood scorer: log P(target) at chosen positions of a forward pass, with the output
head and the log-softmax run a slice of positions at a time (so the (positions × vocabulary) logits never
exist at once). eval's log-likelihoods and perplexity both score through it."""

from __future__ import annotations

import torch

from ..model import Transformer

HEAD_CHUNK = 256  # scored positions per output-head slice


def token_logprobs(model: Transformer, hidden: torch.Tensor, targets: torch.Tensor, *,
                   greedy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log P(targets[i] | hidden[i]) for each i, and with greedy=True whether the most probable token at i,
    else None). hidden: (N, dim) states from `Transformer.hidden_states`; targets: (N,) token ids."""
    n = len(targets)
    token_ll = torch.empty(n, device=hidden.device)
    top = torch.empty(n, dtype=torch.long, device=hidden.device) if greedy else None
    for i in range(0, n, HEAD_CHUNK):
        logits = model.output(hidden[i:i + HEAD_CHUNK]).float()
        token_ll[i:i + HEAD_CHUNK] = torch.log_softmax(logits, -1).gather(-1, targets[i:i + HEAD_CHUNK, None])[:, 0]
        if greedy:
            top[i:i + HEAD_CHUNK] = logits.max(-1).indices
    return token_ll, top
