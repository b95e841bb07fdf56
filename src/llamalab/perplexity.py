"""Perplexity of a model on a text with sliding windows (the strided recipe of Hugging Face's
"Perplexity of fixed-length models").

Definition. The text's N tokens are read in windows of `context` tokens whose starts advance by `stride`
(0, stride, 2·stride, ...; the last window ends at token N). Each window scores only the tokens the windows
before it did not: the tokens after the previous window's end, each predicted from everything before it
inside its own window (so with stride < context every scored token after the first window sees at least
context - stride tokens of history). A window's first token has nothing before it and is never scored.
Perplexity = exp(total negative log-likelihood / number of scored tokens).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from . import threads
from .errors import LlamalabError
from .model import Transformer
from .runtime.likelihood import token_logprobs


@dataclass
class Perplexity:
    perplexity: float
    nll: float            # mean negative log-likelihood per scored token (nats)
    tokens: int           # tokens scored
    windows: int
    context: int
    stride: int

    def to_dict(self) -> dict:
        return asdict(self)


def windows(n: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of each window over n tokens."""
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        out.append((begin, end, max(begin + 1, prev_end)))
        prev_end = end
        if end == n:
            break
    return out


@torch.inference_mode()
def perplexity(model: Transformer, tokens: list[int], *, context: int = 512, stride: int | None = None,
               batch_size: int = 1, progress: bool = True) -> Perplexity:
    from tqdm.auto import tqdm

    stride = stride or context // 2 or 1
    if context > model.args.max_seq_len:
        raise LlamalabError(f"--context {context} is larger than the model's context of {model.args.max_seq_len}")
    if context < 2:
        raise LlamalabError(f"--context must be at least 2, got {context}")
    if not 1 <= stride <= context:
        raise LlamalabError(f"--stride must be between 1 and --context ({context}), got {stride}")
    if batch_size < 1:
        raise LlamalabError(f"--batch must be >= 1, got {batch_size}")
    if len(tokens) < 2:
        raise LlamalabError(f"the text has {len(tokens)} token(s); perplexity needs at least 2")
    device = model.norm.weight.device
    data = torch.tensor(tokens, device=device)
    spans = windows(len(tokens), context, stride)
    total, scored = 0.0, 0
    with tqdm(total=len(spans), desc="perplexity", unit="window", disable=not progress, dynamic_ncols=True) as bar:
        i = 0
        while i < len(spans):
            length = spans[i][1] - spans[i][0]  # a batch holds windows of one length
            batch = [spans[i]]
            while len(batch) < batch_size and i + len(batch) < len(spans) and \
                    spans[i + len(batch)][1] - spans[i + len(batch)][0] == length:
                batch.append(spans[i + len(batch)])
            threads.adapt()
            nll, count = _score(model, data, batch)
            total, scored = total + nll, scored + count
            i += len(batch)
            bar.update(len(batch))
    mean = total / scored
    return Perplexity(math.exp(mean), mean, scored, len(spans), context, stride)


def _score(model: Transformer, data: torch.Tensor, batch: list[tuple[int, int, int]]) -> tuple[float, int]:
    """Summed NLL and count of the scored tokens of windows of equal length, in one forward."""
    rows = torch.stack([data[b:e] for b, e, _ in batch])
    h = model.hidden_states(rows)
    # position p predicts token p + 1; the scored tokens of a window are [first, end)
    index = torch.cat([torch.arange(first - b - 1, e - b - 1) + r * rows.shape[1]
                       for r, (b, e, first) in enumerate(batch)]).to(data.device)
    targets = torch.cat([data[first:e] for _, e, first in batch])
    h = h.flatten(0, 1)[index]
    token_ll, _ = token_logprobs(model, h, targets)
    return -token_ll.double().sum().item(), len(index)
