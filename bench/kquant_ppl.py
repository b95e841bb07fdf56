"""Perplexity of llama.cpp-quantized SmolLM2-135M files, ours against llama.cpp's, same file, text and windows.

    python bench/kquant_ppl.py [--types Q4_K_M Q6_K ...] [--windows 16] [--context 256] [--quick]

For each type, llama.cpp's own quantizer (`llama_cpp.llama_model_quantize`, default parameters, no importance
matrix) writes the file from SmolLM2's F32 GGUF (our `convert` of the Q4_1 asset, cached beside bench/decode.py's)
into ~/.cache/llamalab/bench. SmolLM2's rows of 576 are not whole super-blocks of 256, so llama.cpp stores most
matrices as its fallbacks (Q5_0, Q5_1, Q8_0...) and only ffn_down (rows of 1536) as the K-quant: the table shows
each file's type mix. Text: the demo corpus' first prose document; windows of `--context` tokens side by side
(no overlap), each window's first token unscored. Ours: `load_runnable` (weights kept quantized) and
`llamalab.perplexity`; llama.cpp: `Llama(logits_all=True)` on the same token windows, in a process of its own
per file (KV cache F32, CPU weight repacking off). `--quick`: 4 windows, Q4_K_M and Q6_K only.
"held / RSS": the weights our model holds, and the anonymous memory its load added, over the file's tensor bytes.

Both sides round every matrix's activations to 8 bits per block, and SmolLM2's outlier activations make those
blocks coarse: a float difference in the last bit (a summation order) flips a rounding, and the flip grows through
30 layers. Reordering only our Q5_0 sums (scalar → llama.cpp's 8-lane AVX2 order) moved our Q4_K_M perplexity on
4 windows by 0.4%: at a few thousand tokens the comparison carries that much noise; more windows average it down.
"""

from __future__ import annotations

import argparse
import collections
import json
import lzma
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

import numpy as np

from llama_cpp_ref import quantize, quantized_path, smollm2_f32, without_repacking  # sibling scripts

TYPES = ["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q5_0", "Q5_1"]  # llama.cpp's file types (LLAMA_FTYPE_MOSTLY_*)


def llama_cpp_nll(path: str, spec: str) -> None:
    """(In its own process.) Summed NLL and count over the windows in the JSON file `spec`, printed as JSON."""
    import llama_cpp

    job = json.loads(Path(spec).read_text())
    if job.get("quantize"):
        quantize(job["f32"], path, job["quantize"])
    without_repacking()
    llm = llama_cpp.Llama(model_path=path, n_ctx=job["context"], n_batch=job["context"], logits_all=True,
                          n_threads=job["threads"], verbose=False, type_k=llama_cpp.GGML_TYPE_F32,
                          type_v=llama_cpp.GGML_TYPE_F32)
    tokens, total, count = job["tokens"], 0.0, 0
    for begin, end, first in job["windows"]:
        llm.reset()
        llm.eval(tokens[begin:end])
        logits = np.asarray(llm.scores[:end - begin], dtype=np.float64)
        logp = logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)
        rows = np.arange(first - begin - 1, end - begin - 1)
        total -= logp[rows, np.asarray(tokens[first:end])].sum()
        count += len(rows)
    print(json.dumps({"nll": total, "tokens": count}))


def run_llama_cpp(path: Path, job: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    run = subprocess.run([sys.executable, __file__, "--llama-cpp", str(path), f.name], capture_output=True, text=True)
    Path(f.name).unlink()
    if run.returncode:
        raise SystemExit(f"llama.cpp on {path.name} failed (status {run.returncode}): {run.stderr[-1500:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def anon_bytes() -> int:
    """Resident anonymous memory of this process (Linux), after returning freed heap to the system."""
    import ctypes
    import gc

    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith("RssAnon:"))


def ours(path: Path, tokens: list[int], context: int) -> tuple[float, str, float]:
    from gguf import GGUFReader

    from llamalab.perplexity import perplexity
    from llamalab.quant import weight_bytes
    from llamalab.runtime import load_runnable

    before, t = anon_bytes(), time.perf_counter()
    rt = load_runnable(path, device="cpu")
    load_s, resident = time.perf_counter() - t, anon_bytes() - before
    tensor_bytes = sum(int(x.n_bytes) for x in GGUFReader(path).tensors)
    ppl = perplexity(rt.model, tokens, context=context, stride=context, progress=False).perplexity
    return ppl, f"{weight_bytes(rt.model) / tensor_bytes:.2f} / {resident / tensor_bytes:.2f}", load_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", default=["Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K"], choices=TYPES)
    ap.add_argument("--windows", type=int, default=16)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--llama-cpp", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.llama_cpp:
        return llama_cpp_nll(*a.llama_cpp)
    if a.quick:
        a.types, a.windows = ["Q4_K_M", "Q6_K"], 4
    import torch
    from gguf import GGUFReader

    from llamalab.perplexity import windows
    from llamalab.runtime import load_runnable

    torch.set_num_threads(a.threads)
    f32 = smollm2_f32()
    with lzma.open(resources.files("llamalab.data.corpus") / "prose.jsonl.xz", "rt") as f:
        text = json.loads(f.readline())["text"]
    tokens = load_runnable(f32, device="cpu").tokenizer.encode(text)[:a.windows * a.context]
    spans = windows(len(tokens), a.context, a.context)
    print(f"SmolLM2-135M-Instruct, {len(spans)} windows of {a.context} tokens ({len(tokens)} tokens), "
          f"threads {a.threads}; llama.cpp without CPU weight repacking, KV cache F32")
    print(f"{'type':8} {'ours':>9} {'llama.cpp':>9} {'diff':>8}  {'held / RSS':>15} {'load s':>7}  tensor types")
    for kind in a.types:
        path = quantized_path(f32, kind)
        job = {"tokens": tokens, "windows": spans, "context": a.context, "threads": a.threads,
               "f32": str(f32), "quantize": None if path.exists() else kind}
        theirs = run_llama_cpp(path, job)
        ppl_theirs = float(np.exp(theirs["nll"] / theirs["tokens"]))
        ppl, ratio, load_s = ours(path, tokens, a.context)
        mix = collections.Counter(t.tensor_type.name for t in GGUFReader(path).tensors if len(t.shape) == 2)
        print(f"{kind:8} {ppl:9.4f} {ppl_theirs:9.4f} {100 * (ppl / ppl_theirs - 1):+7.3f}%  {ratio:>15} "
              f"{load_s:7.2f}  {dict(mix)}", flush=True)


if __name__ == "__main__":
    main()
