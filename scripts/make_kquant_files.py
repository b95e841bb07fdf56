#!/usr/bin/env python3
"""Regenerate tests/data/kquants/: a tiny random LLaMA quantized by llama.cpp itself to every K-quant mix and to
Q5_0 / Q5_1, with llama.cpp's own logits for a fixed token sequence on each file.

    python scripts/make_kquant_files.py [--out tests/data/kquants]

Needs llama-cpp-python (the `bench` extra) and the `llama-spm` asset (`llamalab assets fetch`). Steps:
1. a random LLaMA (dim 256, 1 layer, 2 heads, 1 KV head, FFN 256, vocabulary 320, tied embeddings; seed 0;
   every row width a multiple of 256, so llama.cpp's K-quants apply to every matrix), its vocabulary the first
   320 pieces of llama.cpp's LLaMA SentencePiece vocabulary, written as an F32 GGUF by `llamalab.formats.save`;
2. for each type: `llama_cpp.llama_model_quantize` (default parameters, no importance matrix) → `tiny-TYPE.gguf`;
3. llama.cpp's logits (`Llama(logits_all=True)`, KV cache in F32, CPU weight repacking off — see
   `use_extra_bufts` in the llama-cpp-python notes — 1 thread) for TOKENS, saved to `logits.npz` by type.
Steps 2–3 run in a process of their own for each type, so a crash in llama.cpp loses one file, not the run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from llama_cpp_ref import quantize, without_repacking  # noqa: E402  (llama.cpp as the reference, shared with bench/)

TYPES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q5_0", "Q5_1"]  # llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*)
TOKENS = [1, 319, 29, 7, 260, 301, 45, 88, 2, 150, 271, 13, 99, 300, 3, 200]
VOCAB = 320


def vocabulary(src: Path, out: Path) -> Path:
    """A GGUF holding only the tokenizer.* fields of `src`, its token arrays cut to the first VOCAB pieces."""
    from gguf import GGUFReader, GGUFValueType as V, GGUFWriter

    writer = GGUFWriter(out, "llama")
    for key, f in GGUFReader(src).fields.items():
        if not key.startswith("tokenizer."):
            continue
        value = f.contents()
        if f.types[0] == V.ARRAY:
            writer.add_key_value(key, value[:VOCAB], V.ARRAY, sub_type=f.types[-1])
        else:
            writer.add_key_value(key, value, f.types[0])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return out


def f32_model(out: Path) -> Path:
    import torch

    from llamalab import assets
    from llamalab.config import ModelArgs
    from llamalab.formats import save
    from llamalab.model import Transformer

    args = ModelArgs(dim=256, n_layers=1, n_heads=2, n_kv_heads=1, vocab_size=VOCAB, ffn_dim=256,
                     max_seq_len=64, tie_embeddings=True)
    model = Transformer(args)
    model.init_weights(generator=torch.Generator().manual_seed(0))
    state = {k: v for k, v in model.state_dict().items() if k != "output.weight"}
    with tempfile.TemporaryDirectory() as tmp:
        vocab = vocabulary(assets.path("llama-spm"), Path(tmp) / "vocab.gguf")
        return save(state, args, out, "gguf", tokenizer_src=vocab, gguf_type="f32", force=True)


def one(f32: Path, kind: str, out: Path) -> list[list[float]]:
    """Quantize `f32` to `kind` with llama.cpp and return llama.cpp's logits for TOKENS (in this process)."""
    import llama_cpp

    quantize(f32, out, kind, threads=1)
    without_repacking()
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, n_batch=64, n_threads=1, logits_all=True, verbose=False,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32, flash_attn=False)
    llm.eval(TOKENS)
    return np.asarray(llm.scores[:len(TOKENS)], dtype=np.float32).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "tests" / "data" / "kquants")
    ap.add_argument("--one", nargs=3, metavar=("F32", "TYPE", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(Path(a.one[0]), a.one[1], Path(a.one[2]))))
        return
    a.out.mkdir(parents=True, exist_ok=True)
    logits = {}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = f32_model(Path(tmp) / "tiny-f32.gguf")
        for kind in TYPES:
            run = subprocess.run([sys.executable, __file__, "--one", str(f32), kind, str(a.out / f"tiny-{kind}.gguf")],
                                 capture_output=True, text=True)
            if run.returncode:
                raise SystemExit(f"{kind}: llama.cpp failed (status {run.returncode}): {run.stderr[-2000:]}")
            logits[kind] = np.asarray(json.loads(run.stdout.strip().splitlines()[-1]), dtype=np.float32)
            print(f"{kind}: {(a.out / f'tiny-{kind}.gguf').stat().st_size:,} bytes")
    np.savez_compressed(a.out / "logits.npz", tokens=np.asarray(TOKENS), **logits)


if __name__ == "__main__":
    main()
