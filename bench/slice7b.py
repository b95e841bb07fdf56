"""A 7B-shaped slice: a random-initialised LLaMA with LLaMA-7B's exact layer shapes and only a few layers.

    python bench/slice7b.py [--layers 2] [--out FILE]

dim 4096, FFN 11008, 32 heads (no grouped keys/values), vocabulary 32000 (LLaMA's SentencePiece vocabulary
from the asset cache, so llama.cpp loads the file), untied output head: every matrix is one a 7B user
streams, so per-layer time extrapolates to the full 32 layers. Weights are N(0, 0.02) as at pretraining
(`model.initial_weights`), seeded. Written as an F32 GGUF by `formats.gguf.save` into the bench cache
(~2.7 GB for 2 layers); bench/decode.py quantizes it with llama.cpp's own `llama_model_quantize`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

CACHE = Path.home() / ".cache" / "llamalab" / "bench"


def slice_args(layers: int = 2):
    from llamalab.config import ModelArgs

    return ModelArgs(dim=4096, n_layers=layers, n_heads=32, n_kv_heads=32, vocab_size=32000, multiple_of=256,
                     max_seq_len=2048, norm_eps=1e-6, rope_theta=10000.0, tie_embeddings=False)


def make(out: Path | None = None, layers: int = 2) -> Path:
    """The slice's F32 GGUF (written once, then taken from the cache)."""
    from llamalab import assets
    from llamalab.formats import gguf
    from llamalab.model import Transformer

    out = out or CACHE / f"llama7b-slice-{layers}l-f32.gguf"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    args = slice_args(layers)
    assert args.hidden_dim == 11008, args.hidden_dim
    with torch.device("meta"):
        model = Transformer(args)
    model.to_empty(device="cpu")
    model.init_weights(generator=torch.Generator().manual_seed(0))
    state = {k: v.detach() for k, v in model.state_dict().items()}
    return gguf.save(state, args, out, gguf_type="f32", tokenizer_src=assets.path("llama-spm"),
                     name=f"llama-7b-shaped-slice-{layers}l")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    print(make(args.out, args.layers))


if __name__ == "__main__":
    main()
