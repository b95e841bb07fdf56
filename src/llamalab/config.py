"""Model hyper-parameters (`ModelArgs`) and the named presets we know.

The FFN width follows Meta's reference code exactly: hidden = 2/3 · 4·dim, optionally scaled by
`ffn_dim_multiplier`, rounded up to a multiple of `multiple_of` (11008 for dim 4096). Checkpoints that
state their FFN width (e.g. HF `intermediate_size`) set `ffn_dim` directly.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import reduce

from .errors import LlamalabError


@dataclass(frozen=True)
class ModelArgs:
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None → n_heads (multi-head attention, as in LLaMA-1)
    vocab_size: int = 32000
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    ffn_dim: int | None = None  # explicit FFN width; overrides the 2/3·4d rule
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = field(default=None, hash=False, compare=False)  # e.g. Llama-3.1 "llama3"
    max_seq_len: int = 2048
    tie_embeddings: bool = False

    def __post_init__(self):
        """Every size a positive whole number, every rate a positive finite number: a config from a file
        (a checkpoint header) is checked here before anything is built from it."""
        for name in ("dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "multiple_of", "ffn_dim", "max_seq_len"):
            value = getattr(self, name)
            if value is not None or name not in ("n_kv_heads", "ffn_dim"):
                object.__setattr__(self, name, _whole(name, value))
        for name in ("norm_eps", "rope_theta") + (("ffn_dim_multiplier",) if self.ffn_dim_multiplier is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise LlamalabError(f"{name} must be a positive number, got {value!r}")
        if self.rope_scaling is not None:
            _check_rope_scaling(self.rope_scaling)
        if self.dim % self.n_heads:
            raise LlamalabError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.kv_heads:
            raise LlamalabError(f"n_heads {self.n_heads} is not divisible by n_kv_heads {self.kv_heads}")
        if (self.dim // self.n_heads) % 2:
            raise LlamalabError(f"head_dim {self.dim // self.n_heads} must be even for rotary embeddings")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def hidden_dim(self) -> int:
        """SwiGLU hidden width, computed as in Meta's `FeedForward.__init__`."""
        if self.ffn_dim is not None:
            return self.ffn_dim
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    def replace(self, **changes) -> "ModelArgs":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelArgs":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LlamalabError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
        return cls(**d)


def _whole(name: str, value) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise LlamalabError(f"{name} must be a positive whole number, got {value!r}")
    return value


def _check_rope_scaling(scaling) -> None:
    """Rope scaling as `model.rope_frequencies` applies it: "linear" (position interpolation) needs its factor;
    Llama-3.1's "llama3" its factor too, its other keys have defaults."""
    if not isinstance(scaling, dict):
        raise LlamalabError(f"rope scaling must be a mapping, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type"))
    if kind in (None, "default"):
        return
    if kind not in ("llama3", "linear"):
        raise LlamalabError(f"rope scaling type {kind!r} is not supported (only 'linear' and 'llama3')")
    keys = ("factor",) if kind == "linear" else (
        "factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    for key in keys:
        value = scaling.get(key, 1.0 if key != "factor" else None)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise LlamalabError(f"{kind} rope scaling needs a positive {key}, got {value!r}")
    if kind == "llama3" and not scaling.get("low_freq_factor", 1.0) < scaling.get("high_freq_factor", 4.0):
        raise LlamalabError("llama3 rope scaling needs low_freq_factor < high_freq_factor")


PRESETS: dict[str, ModelArgs] = {
    # The paper, Table 2 (LLaMA-1: MHA, untied embeddings, eps 1e-6, θ 10000, 2048 context, 32K vocab).
    "llama-7b": ModelArgs(dim=4096, n_layers=32, n_heads=32),
    "llama-13b": ModelArgs(dim=5120, n_layers=40, n_heads=40),
    "llama-33b": ModelArgs(dim=6656, n_layers=60, n_heads=52),
    "llama-65b": ModelArgs(dim=8192, n_layers=80, n_heads=64),
    # Real checkpoints we load and test against.
    "smollm2-135m": ModelArgs(
        dim=576, n_layers=30, n_heads=9, n_kv_heads=3, vocab_size=49152, ffn_dim=1536,
        norm_eps=1e-5, rope_theta=100000.0, max_seq_len=8192, tie_embeddings=True,
    ),
    # Small sizes for the CPU demo and tests.
    "demo-8m": ModelArgs(dim=256, n_layers=6, n_heads=8, n_kv_heads=4, vocab_size=8192, multiple_of=64,
                         max_seq_len=256),
    "tiny": ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32,
                      max_seq_len=128),
}


def get_preset(name: str) -> ModelArgs:
    """Exact-name lookup (no substring matching): a typo is an error, not a different model."""
    try:
        return PRESETS[name]
    except KeyError:
        raise LlamalabError(f"unknown model preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def supported_sizes(args: ModelArgs) -> list[int]:
    """The tensor-parallel sizes a model splits into evenly: divisors of its query heads, key/value heads,
    hidden units and vocabulary."""
    g = reduce(math.gcd, (args.n_heads, args.kv_heads, args.hidden_dim, args.vocab_size))
    return [n for n in range(1, g + 1) if g % n == 0]


def check_tensor_parallel(args: ModelArgs, tp: int, *, seq_len: int | None = None) -> None:
    """A LlamalabError unless the model splits evenly into `tp` parts (and, with sequence parallelism,
    the sequence too)."""
    if tp < 1:
        raise LlamalabError(f"tensor_parallel must be a positive integer, got {tp}")
    if tp not in supported_sizes(args):
        raise LlamalabError(
            f"tensor parallel size {tp} does not divide this model's {args.n_heads} query heads, {args.kv_heads} "
            f"key/value heads, {args.hidden_dim} hidden units and {args.vocab_size}-token vocabulary evenly; "
            f"supported sizes: {', '.join(map(str, supported_sizes(args)))}")
    if seq_len is not None and seq_len % tp:
        raise LlamalabError(f"sequence_parallel splits the sequence over {tp} ranks: seq_len {seq_len} must be a "
                            f"multiple of tensor_parallel {tp}")
