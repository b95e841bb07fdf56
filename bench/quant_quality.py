"""Quantization quality on SmolLM2-135M-Instruct: perplexity on held-out text, file size and bits per weight,
for fp32, Q8_0, Q4_1, round to nearest (RTN) and GPTQ at 4 bits group 128 (with and without act-order; act-order
with GPTQ's mse grid, `--mse`) and 3 bits.

    python bench/quant_quality.py [--samples 128 --seq-len 512] [--chars 20000] [--rows fp32 rtn4 gptq4 ...]

Held-out text: the first `--chars` characters of the embedded demo corpus' first prose document; GPTQ's
calibration (`--calibration corpus`): windows of the corpus' other prose documents (the held-out one is
never among them). Perplexity as `llamalab perplexity --context 256 --stride 128` computes it, each model
run as `llamalab.load(path, dtype=None)` runs it (quantized layers on the int4 kernel, bfloat16 activations).

The fp32 model is the asset GGUF (Q4_1, a Q8_0 embedding) dequantized: `convert --to gguf`. The RTN and
GPTQ rows use one writer (the GPTQ layout, float16 embedding and norms) and one grid (GPTQ's min/max grid,
zero point), so they differ only in the rounding. SmolLM2's width 576 is 4.5 groups of 128: its last group
is 64 wide (as AutoGPTQ groups it). Bits per weight: the file's bytes × 8 / parameters (embedding included:
28 M of SmolLM2's 135 M parameters are the tied embedding, float16 in the GPTQ rows).

Q4_K_M with and without an importance matrix (`quantize --type q4_k_m [--imatrix]`, llama.cpp's quantizers
byte for byte): the importance matrix is `llamalab imatrix` on `--samples` chunks of `--seq-len` tokens of the
calibration text (the same held-out split). `--llama-cpp`: llama.cpp's own perplexity on the same Q4_K_M files
and windows (llama-cpp-python, bench/kquant_ppl.py's runner) beside the row's name.

`--arc-easy 500`: arc_easy acc_norm (zero-shot, lm-evaluation-harness' prompt and scoring, `llamalab.eval`) on
its first 500 items, each model run as for perplexity.
"""

from __future__ import annotations

import argparse
import json
import lzma
import tempfile
import time
from importlib import resources
from pathlib import Path

import torch

import llamalab
from llamalab import assets
from llamalab.formats import convert
from llamalab.perplexity import perplexity
from llamalab.calibrate import gptq_checkpoint
from llamalab.imatrix import compute_imatrix
from llamalab.eval import LLM, evaluate_task, get_task
from llamalab.quantize import quantize_checkpoint


def q4_k_m_imatrix(src, out, o):
    imx = out.with_suffix(".imatrix.gguf")  # kept beside the file, as the quantized files are
    if not imx.exists():
        compute_imatrix(src, imx, calibration=o["calibration"], chunks=o["samples"], ctx=o["seq_len"], progress=False)
    return quantize_checkpoint(src, out, file_type="q4_k_m", imatrix=imx)

# name: (description, how to write it from the fp32 GGUF)
ROWS = {
    "fp32": ("fp32 (the asset, dequantized)", None),
    "q8_0": ("Q8_0 GGUF (RTN, group 32)", lambda src, out, o: quantize_checkpoint(src, out, bits=8)),
    "q4_1": ("Q4_1 GGUF (RTN, group 32, Q8_0 embedding)", lambda src, out, o: quantize_checkpoint(src, out, bits=4)),
    "rtn4": ("RTN 4-bit g128 (GPTQ grid and layout)",
             lambda src, out, o: gptq_checkpoint(src, out, bits=4, group_size=128, method="rtn", progress=False)),
    "gptq4": ("GPTQ 4-bit g128", lambda src, out, o: gptq_checkpoint(src, out, bits=4, group_size=128, **o)),
    "gptq4_act": ("GPTQ 4-bit g128 act-order",
                  lambda src, out, o: gptq_checkpoint(src, out, bits=4, group_size=128, act_order=True, **o)),
    "gptq4_act_mse": ("GPTQ 4-bit g128 act-order, mse grid",
                      lambda src, out, o: gptq_checkpoint(src, out, bits=4, group_size=128, act_order=True, mse=True,
                                                          **o)),
    "rtn3": ("RTN 3-bit g128 (GPTQ grid and layout)",
             lambda src, out, o: gptq_checkpoint(src, out, bits=3, group_size=128, method="rtn", progress=False)),
    "gptq3": ("GPTQ 3-bit g128 act-order",
              lambda src, out, o: gptq_checkpoint(src, out, bits=3, group_size=128, act_order=True, **o)),
    "q4_k_m": ("Q4_K_M GGUF (llama.cpp's mix, no imatrix)",
               lambda src, out, o: quantize_checkpoint(src, out, file_type="q4_k_m")),
    "q4_k_m_imatrix": ("Q4_K_M GGUF with imatrix", q4_k_m_imatrix),
}
LLAMA_CPP_ROWS = ("q4_k_m", "q4_k_m_imatrix")


def llama_cpp_ppl(path: Path, ids: list[int]) -> float:
    """llama.cpp's perplexity on the file over the same windows (bench/kquant_ppl.py's subprocess runner)."""
    import math

    from kquant_ppl import run_llama_cpp  # sibling script
    from llamalab.perplexity import windows

    nll = run_llama_cpp(path, {"tokens": ids, "windows": windows(len(ids), 256, 128), "context": 256, "threads": 2,
                               "f32": None, "quantize": None})
    return math.exp(nll["nll"] / nll["tokens"])


def held_out(chars: int) -> str:
    with lzma.open(resources.files("llamalab.data.corpus") / "prose.jsonl.xz", "rt") as f:
        return json.loads(f.readline())["text"][:chars]


def size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*.safetensors")) if path.is_dir() else path.stat().st_size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=128, help="GPTQ calibration windows")
    ap.add_argument("--seq-len", type=int, default=512, help="tokens per calibration window")
    ap.add_argument("--chars", type=int, default=20000, help="held-out characters")
    ap.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    ap.add_argument("--llama-cpp", action="store_true", help="llama.cpp's perplexity on the Q4_K_M rows' files too")
    ap.add_argument("--arc-easy", type=int, default=0, metavar="N",
                    help="also arc_easy acc_norm on its first N items (0: not run; the issue's table: 500)")
    ap.add_argument("--work", type=Path, help="where the quantized files go (default: a temporary directory)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="quant_quality-"))
    work.mkdir(parents=True, exist_ok=True)
    f32 = work / "smol-f32.gguf"
    if not f32.exists():
        convert(assets.path("smollm2"), f32, "gguf", log=None)
    text = held_out(args.chars)
    options = dict(calibration="corpus", samples=args.samples, seq_len=args.seq_len)
    print(f"held-out: {args.chars} characters of the demo corpus' first prose document; calibration: "
          f"{args.samples} x {args.seq_len} tokens of its other prose documents; context 256, stride 128")
    print("| model | perplexity | vs fp32 | file MB | bits/weight | quantize s | arc_easy acc_norm |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    base = None
    params = sum(p.numel() for p in llamalab.load(f32, tokenizer=False).model.parameters())
    for row in args.rows:
        name, write = ROWS[row]
        path, seconds = f32, 0.0
        if write is not None:
            path = work / (f"{row}.gguf" if row.startswith("q") else row)
            if not path.exists():
                t = time.perf_counter()
                write(f32, path, options)
                seconds = time.perf_counter() - t
        ckpt = llamalab.load(path, dtype=None if write else torch.float32)
        ids = ckpt.tokenizer.encode(text, bos=ckpt.tokenizer.add_bos)
        ppl = perplexity(ckpt.model, ids, context=256, stride=128, batch_size=4, progress=False).perplexity
        base = base or ppl
        if args.llama_cpp and row in LLAMA_CPP_ROWS:
            name += f" (llama.cpp: {llama_cpp_ppl(path, ids):.3f})"
        arc = "not run"
        if args.arc_easy:
            llm = LLM(ckpt.model, ckpt.tokenizer, batch_size=16, progress=False)
            result = evaluate_task(llm, get_task("arc_easy"), assets.path("benchmarks"), limit=args.arc_easy)
            arc = f"{result.metrics['acc_norm']:.3f}"
        print(f"| {name} | {ppl:.3f} | {ppl / base - 1:+.2%} | {size(path) / 1e6:.1f} | "
              f"{size(path) * 8 / params:.2f} | {seconds:.0f} | {arc} |", flush=True)


if __name__ == "__main__":
    with torch.inference_mode(False):
        main()
