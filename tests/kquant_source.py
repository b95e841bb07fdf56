"""The float model behind tests/data/kquant/: llama.cpp quantized it once (scripts/kquant_reference.py) and
tests/test_kquant_write.py quantizes it again with `llamalab quantize --type`.

Its values come from integer hashing and exact float arithmetic only (no library random stream, no libm), so
every machine and numpy version builds the same bits; the reference json records each tensor's sha256 and
the test checks them first. Rows 256 wide (dim 256, FFN 768), 2 layers, vocabulary 512, 4 heads over 2 KV
heads; a few planted rows exercise the quantizers' edge cases (all zeros, a constant, a tiny scale, outliers).
"""

import numpy as np
import torch

from llamalab.config import ModelArgs

ARGS = ModelArgs(dim=256, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, ffn_dim=768, norm_eps=1e-5,
                 max_seq_len=256, tie_embeddings=False)


def _uniform(n: int, seed: int) -> np.ndarray:
    """n values in [0, 1) with 24 random bits each (splitmix64 over the index)."""
    with np.errstate(over="ignore"):
        z = (np.arange(n, dtype=np.uint64) + np.uint64(seed << 32)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(40)).astype(np.float64) / float(1 << 24)


def _matrix(shape, seed: int, scale: float) -> np.ndarray:
    n = int(np.prod(shape))
    bell = sum(_uniform(n, 4 * seed + k) for k in range(4)) - 2.0  # Irwin-Hall: exact in float64
    w = (bell * scale).astype(np.float32).reshape(shape)
    w.reshape(-1)[::997] *= np.float32(8)  # outliers
    return w


def source_state() -> dict[str, torch.Tensor]:
    """Our state dict (Meta names), float32."""
    a, hd = ARGS, ARGS.head_dim
    shapes = {"tok_embeddings.weight": (a.vocab_size, a.dim), "norm.weight": (a.dim,),
              "output.weight": (a.vocab_size, a.dim)}
    for i in range(a.n_layers):
        p = f"layers.{i}."
        shapes.update({p + "attention.wq.weight": (a.n_heads * hd, a.dim),
                       p + "attention.wk.weight": (a.kv_heads * hd, a.dim),
                       p + "attention.wv.weight": (a.kv_heads * hd, a.dim),
                       p + "attention.wo.weight": (a.dim, a.n_heads * hd),
                       p + "feed_forward.w1.weight": (a.hidden_dim, a.dim),
                       p + "feed_forward.w2.weight": (a.dim, a.hidden_dim),
                       p + "feed_forward.w3.weight": (a.hidden_dim, a.dim),
                       p + "attention_norm.weight": (a.dim,), p + "ffn_norm.weight": (a.dim,)})
    state = {}
    for seed, (name, shape) in enumerate(shapes.items()):
        if len(shape) == 1:
            state[name] = torch.from_numpy(np.float32(1) + _matrix(shape, seed, 0.05))
            continue
        w = _matrix(shape, seed, 0.02)
        w[0] = 0  # a zero row: every block all zeros
        w[1, :256] = np.float32(0.03125)  # a constant super-block
        w[2] *= np.float32(1e-6)  # tiny values
        w[3, 16:48] = 0  # zero sub-blocks inside a live block
        state[name] = torch.from_numpy(w)
    return state
