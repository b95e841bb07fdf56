"""LLaVA (Liu et al. 2023): a ViT vision tower, a small projector, and LLaMA (our `Transformer`) as the language model.

The image is cut into patch×patch squares, each linearly embedded (a strided convolution) and given a learned
position embedding; a stack of pre-LN transformer blocks (LayerNorm, full bidirectional attention with biases,
a two-layer MLP) turns them into features. Two tower variants, both as transformers builds them:

- CLIP ViT (Radford et al. 2021): a class token in front, a LayerNorm before the blocks (`pre_layrnorm`, the
  original's spelling), quick-GELU; patch embedding without bias.
- SigLIP (Zhai et al. 2023): no class token, no LayerNorm before the blocks, tanh-GELU; patch embedding with bias.

LLaVA reads the hidden states of one block (`feature_layer`, e.g. -2: the second to last; several: concatenated),
drops the class token (strategy "default") or keeps every position ("full"), maps each patch feature with a
two-layer GELU MLP (LLaVA-1.5's projector) into the language model's embedding space, and puts the results in
place of the image tokens of the prompt: each image token position receives one patch, in order.

Parameter names are transformers' (`embeddings.patch_embedding`, `encoder.layers.N.self_attn.q_proj`, ...), so a
llava-hf checkpoint's vision tower and projector load by name; the language model keeps our names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelArgs
from .model import Transformer

ACTIVATIONS = {
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
}


@dataclass(frozen=True)
class VisionArgs:
    kind: str = "clip"  # "clip" (class token, pre-LN) or "siglip"
    dim: int = 1024
    n_layers: int = 24
    n_heads: int = 16
    ffn_dim: int = 4096
    image_size: int = 336
    patch_size: int = 14
    channels: int = 3
    norm_eps: float = 1e-5
    act: str = "quick_gelu"

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def class_token(self) -> bool:
        return self.kind == "clip"


@dataclass(frozen=True)
class LlavaArgs:
    vision: VisionArgs
    text: ModelArgs
    image_token_id: int
    feature_layer: int | tuple[int, ...] = -2
    feature_select: str = "default"  # "default": drop the class token; "full": every position
    projector_act: str = "gelu"
    projector_bias: bool = True
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def image_tokens(self) -> int:
        """Positions one image fills in the prompt. "default" drops the first position even without a class
        token (SigLIP), as transformers does."""
        return self.vision.n_patches + self.vision.class_token - (self.feature_select == "default")


class VisionEmbeddings(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.patch_embedding = nn.Conv2d(args.channels, args.dim, args.patch_size, stride=args.patch_size,
                                         bias=not args.class_token)
        if args.class_token:
            self.class_embedding = nn.Parameter(torch.zeros(args.dim))
        self.position_embedding = nn.Embedding(args.n_patches + args.class_token, args.dim)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (B, C, H, W) → (B, [1 +] patches, dim), patches in row-major order."""
        x = self.patch_embedding(pixels.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        if hasattr(self, "class_embedding"):
            x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], dim=1)
        return x + self.position_embedding.weight


class VisionAttention(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.n_heads = args.n_heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(args.dim, args.dim) for _ in range(4))

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = (p(x).view(B, T, self.n_heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, T, -1))


class VisionMLP(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.act = ACTIVATIONS[args.act]
        self.fc1, self.fc2 = nn.Linear(args.dim, args.ffn_dim), nn.Linear(args.ffn_dim, args.dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class VisionBlock(nn.Module):
    """Pre-LN: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, args: VisionArgs):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.self_attn = VisionAttention(args)
        self.layer_norm2 = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.mlp = VisionMLP(args)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.layers = nn.ModuleList(VisionBlock(args) for _ in range(args.n_layers))


class VisionTower(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        self.args = args
        self.embeddings = VisionEmbeddings(args)
        if args.class_token:
            self.pre_layrnorm = nn.LayerNorm(args.dim, eps=args.norm_eps)
        self.encoder = VisionEncoder(args)
        self.post_layernorm = nn.LayerNorm(args.dim, eps=args.norm_eps)  # the pooled output's; LLaVA reads none

    def hidden_states(self, pixels: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """[the blocks' input, block 1's output, ..., block n's output], as transformers' `hidden_states`;
        `upto`: stop after that many blocks (the rest would be computed for nothing)."""
        h = self.embeddings(pixels)
        if hasattr(self, "pre_layrnorm"):
            h = self.pre_layrnorm(h)
        out = [h]
        for layer in self.encoder.layers[:upto]:
            h = layer(h)
            out.append(h)
        return out


class Projector(nn.Module):
    """LLaVA-1.5: linear, GELU, linear, from the tower's features into the language model's embeddings."""

    def __init__(self, in_dim: int, dim: int, act: str = "gelu", bias: bool = True):
        super().__init__()
        self.linear_1, self.linear_2 = nn.Linear(in_dim, dim, bias=bias), nn.Linear(dim, dim, bias=bias)
        self.act = ACTIVATIONS[act]

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class Llava(nn.Module):
    def __init__(self, args: LlavaArgs):
        super().__init__()
        self.args = args
        layers = args.feature_layer if isinstance(args.feature_layer, tuple) else (args.feature_layer,)
        self.vision_tower = VisionTower(args.vision)
        self.multi_modal_projector = Projector(args.vision.dim * len(layers), args.text.dim,
                                               args.projector_act, args.projector_bias)
        self.language_model = Transformer(args.text)

    def num_params(self) -> int:
        """Parameters counted once each (a tied embedding is one matrix)."""
        return sum(p.numel() for p in self.parameters())

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (N, C, H, W) → (N, image_tokens, text dim): what each image contributes to the prompt."""
        layers = self.args.feature_layer if isinstance(self.args.feature_layer, tuple) else (self.args.feature_layer,)
        n = self.args.vision.n_layers
        deepest = max(i % (n + 1) for i in layers)
        states = self.vision_tower.hidden_states(pixels, upto=deepest)
        chosen = [states[i % (n + 1)] for i in layers]
        if self.args.feature_select == "default":
            chosen = [h[:, 1:] for h in chosen]
        return self.multi_modal_projector(torch.cat(chosen, dim=-1))

    def embed(self, tokens: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings (B, T, dim) with the image tokens' rows replaced by the images' features, in order:
        the i-th image token of the batch (row-major) gets the i-th patch feature of the images in turn."""
        has_images = pixels is not None and len(pixels) > 0
        return self.splice(tokens, self.image_features(pixels) if has_images else None)

    def splice(self, tokens: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """`embed` with the images' features (N, image_tokens, dim) already computed (`image_features`)."""
        h = self.language_model.tok_embeddings(tokens)
        slots = tokens == self.args.image_token_id
        n_slots = int(slots.sum())
        if features is None or len(features) == 0:
            if n_slots:
                raise ValueError(f"the prompt holds {n_slots} image tokens but no image was given")
            return h
        features = features.to(h.dtype)
        if features.shape[0] * features.shape[1] != n_slots:
            raise ValueError(f"{len(features)} image(s) fill {features.shape[0] * features.shape[1]} image tokens, "
                             f"but the prompt holds {n_slots}")
        return h.masked_scatter(slots[..., None], features.reshape(-1, h.shape[-1]))

    def forward(self, tokens: torch.Tensor, pixels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Logits (B, T, vocab); keyword arguments as `Transformer.forward` (cache, pos, last_only, ...)."""
        return self.language_model(tokens, embeddings=self.embed(tokens, pixels), **kwargs)
