"""Tensor names: ours (Meta's) and each format's, in one table, and exact (anchored) translation.

    to_ours, to_gguf = name_maps("gguf")
    to_ours("blk.3.attn_q.weight")   # "layers.3.attention.wq.weight"; an unknown name gives None
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Every tensor is "<name>.weight". Whole-model tensors: ours → (GGUF / llama.cpp, HF transformers).
MODEL_TENSORS = {"tok_embeddings": ("token_embd", "model.embed_tokens"), "norm": ("output_norm", "model.norm"),
                 "output": ("output", "lm_head")}
# Per-layer tensors, after each format's layer prefix ({i} = layer index).
LAYER_PREFIX = {"ours": "layers.{i}.", "gguf": "blk.{i}.", "hf": "model.layers.{i}."}
LAYER_TENSORS = {"attention_norm": ("attn_norm", "input_layernorm"), "ffn_norm": ("ffn_norm", "post_attention_layernorm"),
                 "attention.wq": ("attn_q", "self_attn.q_proj"), "attention.wk": ("attn_k", "self_attn.k_proj"),
                 "attention.wv": ("attn_v", "self_attn.v_proj"), "attention.wo": ("attn_output", "self_attn.o_proj"),
                 "feed_forward.w1": ("ffn_gate", "mlp.gate_proj"), "feed_forward.w2": ("ffn_down", "mlp.down_proj"),
                 "feed_forward.w3": ("ffn_up", "mlp.up_proj")}
COLUMNS = {"gguf": 0, "hf": 1}


def name_map(table: dict[str, str]) -> Callable[[str], str | None]:
    """A function translating each name matching a key of `table` ({i} = a layer index) to its value."""
    patterns = [(re.compile("^" + re.escape(src).replace(r"\{i\}", r"(\d+)") + "$"), dst)
                for src, dst in table.items()]

    def translate(name: str) -> str | None:
        for pattern, dst in patterns:
            m = pattern.match(name)
            if m:
                return dst.format(i=m.group(1)) if m.groups() else dst
        return None
    return translate


def name_maps(fmt: str) -> tuple[Callable[[str], str | None], Callable[[str], str | None]]:
    """(format name → ours, ours → format name) for "gguf" or "hf"."""
    col, prefix, ours_prefix = COLUMNS[fmt], LAYER_PREFIX[fmt], LAYER_PREFIX["ours"]
    theirs = {f"{ours}.weight": f"{names[col]}.weight" for ours, names in MODEL_TENSORS.items()}
    theirs.update({f"{ours_prefix}{ours}.weight": f"{prefix}{names[col]}.weight" for ours, names in LAYER_TENSORS.items()})
    return name_map({v: k for k, v in theirs.items()}), name_map(theirs)
