"""The int8 kernel against PyTorch's int4 route, as decoding uses them: every int8 matrix of a Q8_0 model, in
forward order, once per "token" (the codes stream from memory, as they do when decoding).

    python bench/int8_kernel.py [--model smollm2-q8_0.gguf] [--rows 1 8] [--passes 30]

Both sides run the same codes in the same order: `QuantLinear(codes)` on our kernel (`path == "int8"`) and the
same codes through `_weight_int4pack_mm_for_cpu` (two nibbles per code, bfloat16 activations; what int8 ran on
before, and still runs on without a C++ compiler). Passes alternate between the two; median ms per pass, the
rate at which the codes stream (their bytes / time), and the ratio. The default model is the Q8_0 GGUF that
`bench/decode.py` writes (~/.cache/llamalab/bench).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from unittest import mock

import torch

import llamalab
from llamalab.quant import QuantLinear, cpu_kernel


def matrices(model) -> list[QuantLinear]:
    """The model's int8 projections in the order a forward pass calls them (the tied head last)."""
    order = []
    for layer in model.layers:
        a, f = layer.attention, layer.feed_forward
        order += [a.wq, a.wk, a.wv, a.wo, f.w1, f.w3, f.w2]
    return [m for m in order + [model.output] if isinstance(m, QuantLinear) and m.path == "int8"]


def one_pass(layers, xs) -> float:
    t = time.perf_counter()
    for layer in layers:
        layer(xs[layer.in_features])
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path.home() / ".cache" / "llamalab" / "bench" / "smollm2-q8_0.gguf")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8], help="activation rows (batch) per call")
    ap.add_argument("--passes", type=int, default=30)
    args = ap.parse_args()

    ours = matrices(llamalab.load(args.model, dtype=None, tokenizer=False).model)
    if not ours:
        raise SystemExit(f"{args.model}: no int8 layers on the int8 kernel (a Q8_0 file, and a C++ compiler, are needed)")
    with mock.patch.object(cpu_kernel, "available", lambda: False):
        theirs = [QuantLinear(m._codes()) for m in ours]
    assert all(m.path == "int4pack" for m in theirs)
    nbytes = sum(m.q.nbytes + m.scale.nbytes for m in ours)
    print(f"{args.model.name}: {len(ours)} int8 matrices, {nbytes / 1e6:.0f} MB of codes and scales, "
          f"{torch.get_num_threads()} threads")
    with torch.inference_mode():
        for rows in args.rows:
            xs = {k: torch.randn(rows, k) for k in {m.in_features for m in ours}}
            times = {"ours": [], "int4": []}
            for _ in range(3):  # warm-up
                one_pass(ours, xs), one_pass(theirs, xs)
            for _ in range(args.passes):
                times["ours"].append(one_pass(ours, xs))
                times["int4"].append(one_pass(theirs, xs))
            a, b = statistics.median(times["ours"]), statistics.median(times["int4"])
            print(f"rows {rows}: int8 kernel {a * 1e3:6.2f} ms/pass ({nbytes / a / 1e9:5.1f} GB/s)   "
                  f"int4 route {b * 1e3:6.2f} ms/pass ({nbytes / b / 1e9:5.1f} GB/s)   ratio {b / a:.2f}x")


if __name__ == "__main__":
    main()
