"""LoRA (Hu et al. 2021): a frozen linear layer W plus a trainable low-rank update,

    y = W x + (α / r) · B A x        A: r × in (Kaiming-uniform, as nn.Linear), B: out × r (zero)

so training starts exactly at the base model and only A and B — r·(in + out) numbers per layer — train.
`LoRALinear` wraps any base layer (an nn.Linear, or QLoRA's 4-bit NF4 one from finetune/qlora.py). Targets are the
block's linear layers: q, k, v, o (attention.wq/wk/wv/wo) and w1, w2, w3 (SwiGLU gate/down/up); `all` is
all seven. Adapters in a file use peft's layout (peft.py); here everything has our names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import LlamalabError
from .names import LAYER_TENSORS

# a block's linear layers: ours ("wq") → its parent module ("attention") and HF's module name ("q_proj")
LINEARS = {ours.split(".")[1]: (ours.split(".")[0], hf.split(".")[1]) for ours, (_, hf) in LAYER_TENSORS.items()
           if "." in ours}
ALL = tuple(LINEARS)  # wq, wk, wv, wo, w1, w2, w3
PARENT = {name: parent for name, (parent, _) in LINEARS.items()}
HF_NAMES = {name: hf for name, (_, hf) in LINEARS.items()}
ALIASES = {**{n: n for n in ALL}, **{hf: n for n, hf in HF_NAMES.items()},
           **{hf.removesuffix("_proj"): n for n, hf in HF_NAMES.items()}}  # q, k, v, o, gate, down, up


def parse_targets(spec) -> tuple[str, ...]:
    """"q,k,v,o" / "all" / ["q_proj", "w1"] → our module names, in block order."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return ALL
    unknown = [n for n in names if n not in ALIASES]
    if unknown or not names:
        raise LlamalabError(f"unknown LoRA target(s) {unknown or names}; use q,k,v,o,w1,w2,w3 (or gate,down,up, "
                            f"HF's q_proj..., or all)")
    chosen = {ALIASES[n] for n in names}
    return tuple(n for n in ALL if n in chosen)


@dataclass(frozen=True)
class LoraSpec:
    rank: int
    alpha: float
    dropout: float = 0.0
    targets: tuple[str, ...] = ("wq", "wk", "wv", "wo")

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise LlamalabError(f"LoRA rank must be a positive integer, got {self.rank!r} (leave --lora-rank out "
                                f"for full fine-tuning)")
        if not 0 <= self.dropout < 1:
            raise LlamalabError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise LlamalabError(f"LoRA alpha must be positive, got {self.alpha}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class Dropout(nn.Module):
    """Inverted dropout (zero each element with probability p, scale the rest by 1 / (1 - p)) that draws its
    mask faster on CPU than `nn.Dropout`: every 64-bit draw of torch's generator gives four elements 15 random
    bits each, compared against p · 2¹⁵ — a quarter of the generator calls of a Bernoulli draw per element,
    3-4× faster for a LoRA input, where the masks are a tenth of a training step. p is rounded to a multiple of
    2⁻¹⁵ (0.05 → 0.049988) and the scale is that p's. Autograd keeps the boolean mask, as `nn.Dropout` does.
    Other devices draw with `nn.functional.dropout`."""

    BITS = 15

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 2**self.BITS)  # drop where the 15 bits are below it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not self.p:
            return x
        if x.device.type != "cpu":
            return nn.functional.dropout(x, self.p, True)
        n = x.numel()
        # 64 random bits per draw (the whole int64 range but its top value): four 16-bit lanes of 15 used bits
        words = torch.randint(-2**63, 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64)
        lanes = words.view(torch.int16)[:n].view(x.shape)
        keep = (lanes & (2**self.BITS - 1)) >= self.threshold
        return torch.where(keep, x * (2**self.BITS / (2**self.BITS - self.threshold)), 0)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class LoRALinear(nn.Module):
    """base(x) + lora_b(scale · lora_a(dropout(x))). Only lora_a and lora_b train."""

    def __init__(self, base: nn.Module, in_features: int, out_features: int, rank: int, scale: float,
                 dropout: float = 0.0):
        super().__init__()
        self.base = base
        self.lora_a = nn.Linear(in_features, rank, bias=False)
        self.lora_b = nn.Linear(rank, out_features, bias=False)
        self.scale = scale
        self.dropout = Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        z = self.lora_a(self.dropout(x)) * self.scale  # scaling the r-wide side: r/out times the work of peft's
        # h + z Bᵀ as one matmul-accumulate (addmm), not a matmul, then a scale and an add over the wide output
        return torch.addmm(h.flatten(0, -2), z.flatten(0, -2), self.lora_b.weight.t()).view(h.shape)


def target_modules(model: nn.Module, targets) -> list[tuple[str, nn.Module, str]]:
    """[(module path, parent module, attribute)] of the target linears of every block."""
    out = []
    for i, block in enumerate(model.layers):
        for name in targets:
            parent = getattr(block, PARENT[name])
            out.append((f"layers.{i}.{PARENT[name]}.{name}", parent, name))
    return out


def apply_lora(model: nn.Module, spec: LoraSpec) -> list[str]:
    """Freeze every parameter of `model` and wrap the target linears in LoRALinear (works on the meta
    device, before parallelisms are applied). Returns the wrapped module paths."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for path, parent, attr in target_modules(model, spec.targets):
        base = getattr(parent, attr)
        lora = LoRALinear(base, base.in_features, base.out_features, spec.rank, spec.scale, spec.dropout)
        lora.to(device=base.weight.device, dtype=base.weight.dtype)
        setattr(parent, attr, lora)
        wrapped.append(path)
    return wrapped


def lora_init(base_tensor, generator: torch.Generator):
    """`full_tensor` (see train.parallel.materialize) for a LoRA-wrapped model: A drawn as nn.Linear and peft
    draw it (Kaiming-uniform, a=√5), B zero, and every base parameter from `base_tensor` under its own name."""
    def full_tensor(name: str, shape, dtype) -> torch.Tensor:
        if name.endswith("lora_a.weight"):
            return nn.init.kaiming_uniform_(torch.empty(shape, dtype=dtype), a=math.sqrt(5), generator=generator)
        if name.endswith("lora_b.weight"):
            return torch.zeros(shape, dtype=dtype)
        return base_tensor(name.replace(".base.", "."), shape, dtype)
    return full_tensor


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a tied matrix counts once."""
    params = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def target_shapes(args) -> dict[str, tuple[int, int]]:
    """(in, out) features of every module LoRA may adapt."""
    return {"wq": (args.dim, args.n_heads * args.head_dim), "wk": (args.dim, args.kv_heads * args.head_dim),
            "wv": (args.dim, args.kv_heads * args.head_dim), "wo": (args.n_heads * args.head_dim, args.dim),
            "w1": (args.dim, args.hidden_dim), "w2": (args.hidden_dim, args.dim), "w3": (args.dim, args.hidden_dim)}


def expected_trainable(args, spec: LoraSpec) -> int:
    """The formula: n_layers · Σ_targets r · (in + out)."""
    shapes = target_shapes(args)
    return args.n_layers * sum(spec.rank * (shapes[t][0] + shapes[t][1]) for t in spec.targets)


def check_rank(args, spec: LoraSpec) -> None:
    """A rank above a target's narrower side adds parameters and no expressiveness (and a huge one would
    exhaust memory): refused before any matrix is made."""
    shapes = target_shapes(args)
    narrowest = min(min(shapes[t]) for t in spec.targets)
    if spec.rank > narrowest:
        raise LlamalabError(f"LoRA rank {spec.rank} is larger than the narrowest adapted layer ({narrowest} "
                            f"features); choose a rank <= {narrowest} (8 to 64 is usual)")


@dataclass
class Adapter:
    """A LoRA adapter in our names and layout: module path → (A, B, scale)."""

    layers: dict[str, tuple[torch.Tensor, torch.Tensor, float]]
    config: dict  # peft's adapter_config.json fields

    def delta(self, path: str) -> torch.Tensor:
        """scale · B A: what the adapter adds to the weight of module `path`, in fp32."""
        a, b, scale = self.layers[path]
        return (b.float() @ a.float()) * scale


@torch.no_grad()
def merge_into_state(state: dict[str, torch.Tensor], adapter: Adapter) -> dict[str, torch.Tensor]:
    """W ← W + scale · B A for every adapted weight (in fp32, stored back in W's dtype); a new dict."""
    out = dict(state)
    for path in adapter.layers:
        w = state[f"{path}.weight"]
        out[f"{path}.weight"] = merged = (w.float() + adapter.delta(path)).to(w.dtype)
        if not torch.isfinite(merged).all():  # never a broken model written out
            raise LlamalabError(f"merging the adapter gives NaN or infinite weights in {path}; check the adapter's "
                                f"lora_alpha and r, and the base's weights")
    return out


@torch.no_grad()
def attach(model: nn.Module, adapter: Adapter, merge: bool = True) -> None:
    """Run `model` with `adapter`: folded into the weights in memory when they are plain floating-point
    tensors (no cost per token), else as LoRALinear layers around them."""
    for path, (a, b, scale) in adapter.layers.items():
        _, block, parent_name, attr = path.split(".")
        parent = getattr(model.layers[int(block)], parent_name)
        base = getattr(parent, attr)
        w = getattr(base, "weight", None)  # llamalab's quantized layers hold codes, no float weight
        if merge and type(w) in (torch.Tensor, nn.Parameter) and w.is_floating_point():
            w.add_(adapter.delta(path).to(w.device, w.dtype))
            continue
        lora = LoRALinear(base, a.shape[1], b.shape[0], a.shape[0], scale)
        lora.lora_a.weight.copy_(a)
        lora.lora_b.weight.copy_(b)
        act = model.norm.weight  # the activations' device and dtype; the base layer stays as it is
        for matrix in (lora.lora_a, lora.lora_b):
            matrix.to(act.device, act.dtype)
        setattr(parent, attr, lora)
