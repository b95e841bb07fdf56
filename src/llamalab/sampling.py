"""Turning next-token logits into a token: the controls of a generation config.

Each processor takes logits (B, V) and returns new logits, with the definitions (and the order)
of Hugging Face `generate`: repetition penalty, then temperature, top-k, top-p, min-p. A removed
token gets logit -inf. Temperature 0 means greedy (argmax).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import LlamalabError


def repetition_penalty(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's penalty (Keskar et al. 2019) as HF defines it: for every token already in the sequence
    (`seen`: bool (B, V)), logit / penalty if the logit is positive, else logit · penalty."""
    penalized = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalized, logits)


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest logits (and any tied with the k-th)."""
    k = min(k, logits.shape[-1])
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus sampling (Holtzman et al. 2019): keep the smallest set of most probable tokens whose
    total probability reaches p — always at least the top token."""
    sorted_logits, order = torch.sort(logits, dim=-1)  # ascending
    cumulative = sorted_logits.softmax(-1).cumsum(-1)
    remove = cumulative <= 1 - p  # the improbable tail holding at most 1-p of the mass
    remove[..., -1] = False
    return logits.masked_fill(remove.scatter(-1, order, remove), float("-inf"))


def min_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the tokens whose probability is at least p times the top token's probability."""
    probs = logits.softmax(-1)
    return logits.masked_fill(probs < p * probs.amax(-1, keepdim=True), float("-inf"))


@dataclass(frozen=True)
class Sampler:
    """Sampling settings; `sampler(logits, seen, generator)` → next tokens (B,)."""

    temperature: float = 0.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float = 1.0

    def __post_init__(self):
        checks = [
            (self.temperature >= 0, f"temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (self.top_k is None or self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.top_p is None or 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}"),
            (self.min_p is None or 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p}"),
            (self.repetition_penalty > 0, f"repetition_penalty must be > 0, got {self.repetition_penalty}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise LlamalabError(msg)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def uses_history(self) -> bool:
        return self.repetition_penalty != 1.0

    def process(self, logits: torch.Tensor, seen: torch.Tensor | None = None) -> torch.Tensor:
        """The processed logits whose softmax is the distribution we sample from."""
        logits = logits.float()
        if self.uses_history:
            logits = repetition_penalty(logits, seen, self.repetition_penalty)
        if self.greedy:
            return logits
        if self.temperature < 1e-3:  # logits / T would overflow float32 (1e-300 is even 0 in it): softmax
            # ignores a shift, and below float32's smallest normal number every T means "only the maximum"
            shifted = logits - logits.amax(-1, keepdim=True)
            logits = shifted / max(self.temperature, torch.finfo(logits.dtype).tiny)
        elif self.temperature != 1.0:
            logits = logits / self.temperature
        if self.top_k is not None:
            logits = top_k(logits, self.top_k)
        if self.top_p is not None and self.top_p < 1.0:
            logits = top_p(logits, self.top_p)
        if self.min_p:
            logits = min_p(logits, self.min_p)
        return logits

    def __call__(self, logits: torch.Tensor, seen: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        logits = self.process(logits, seen)
        if self.greedy:
            return logits.argmax(-1)
        return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
