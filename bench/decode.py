"""Decoding speed side by side: llamalab fp32 / bf16 / int8 / int4 vs transformers `generate` and llama.cpp.

    python bench/decode.py [--max-new-tokens 128] [--batch 1 8] [--compile] [--skip-llama-cpp]

--compile adds rows for our decode step through torch.compile (`llamalab.fast`: at batch 1 on CPU every
float projection becomes a fused matrix-vector product that streams its weights once).

One run, same prompt, same token count, greedy, end-of-sequence ignored, SmolLM2-135M-Instruct:
- ours: the F32 GGUF (`llamalab convert --to gguf`) as fp32 and bf16; a Q8_0 GGUF (`llamalab quantize
  --bits 8`) and the asset's Q4_1 GGUF run quantized (int8 / int4).
- transformers `generate` on the same F32 GGUF, fp32 (and bf16).
- llama.cpp through llama-cpp-python (the `bench` extra) on the F32, Q8_0 and Q4_1 files, same threads.
Prefill tokens/s = prompt tokens / time to the first new token; decode tokens/s = the other new tokens /
their time (× batch). The memory-bandwidth bound of decoding is (bytes of weights read per step) /
(measured read bandwidth); each row prints how close it gets. The converted files are cached in
~/.cache/llamalab/bench.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

CACHE = Path.home() / ".cache" / "llamalab" / "bench"


def bandwidth(gib: float = 1.0, rounds: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of a few sums over a tensor much larger than the caches."""
    x = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best


def files(asset: Path) -> dict[str, Path]:
    from llamalab.cli import main

    CACHE.mkdir(parents=True, exist_ok=True)
    f32, q8 = CACHE / "smollm2-f32.gguf", CACHE / "smollm2-q8_0.gguf"
    if not f32.exists():
        main(["convert", str(asset), "--to", "gguf", "--out", str(f32)])
    if not q8.exists():
        main(["quantize", "--model", str(f32), "--bits", "8", "--out", str(q8)])
    return {"F32": f32, "Q8_0": q8, "Q4_1": asset}


def time_ours(model, prompt, n, batch, compile_):
    from llamalab.generate import Engine

    engine = Engine(model, max_batch=batch, max_len=len(prompt) + n, compile=compile_)
    t0 = time.perf_counter()
    seqs = [engine.add(prompt, max_new_tokens=n) for _ in range(batch)]
    t1 = time.perf_counter()
    while engine.step():
        pass
    t2 = time.perf_counter()
    return batch * len(prompt) / (t1 - t0), batch * (n - 1) / (t2 - t1), seqs[0].tokens


def time_hf(hf, prompt, n, batch):
    ids = torch.tensor([prompt] * batch)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, eos_token_id=None, pad_token_id=0,
              temperature=None, top_p=None, top_k=None)
    with torch.inference_mode():
        t0 = time.perf_counter()
        hf.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
        t1 = time.perf_counter()
        out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, **kw)
        t2 = time.perf_counter()
    # decode time = the whole n-token call minus its prefill
    return batch * len(prompt) / (t1 - t0), batch * (n - 1) / ((t2 - t1) - (t1 - t0)), out[0, len(prompt):].tolist()


def time_llama_cpp(llm, prompt, n):
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(prompt)
    t1 = time.perf_counter()
    tokens = []
    for _ in range(n):
        tok = llm.sample(top_k=1, top_p=1.0, min_p=0.0, temp=0.0)
        tokens.append(tok)
        if len(tokens) == n:
            break
        llm.eval([tok])
    t2 = time.perf_counter()
    return len(prompt) / (t1 - t0), (n - 1) / (t2 - t1), tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default="The LLaMA paper shows that smaller models trained on more tokens")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--rounds", type=int, default=3, help="median of this many runs per row")
    ap.add_argument("--compile", action="store_true",
                    help="also our decode step through torch.compile (rows marked 'compiled')")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--skip-transformers", action="store_true")
    args = ap.parse_args()

    import llamalab
    from llamalab import assets
    from llamalab.quant import weight_bytes

    threads = torch.get_num_threads()
    paths = files(assets.path("smollm2"))
    bw = bandwidth()
    n = args.max_new_tokens
    tok = llamalab.load(paths["Q4_1"], dtype=None).tokenizer
    prompt = tok.encode(args.prompt, bos=tok.add_bos)
    print(f"SmolLM2-135M  threads {threads}  prompt {len(prompt)} tokens  {n} new tokens  greedy, EOS ignored  "
          f"median of {args.rounds}; read bandwidth {bw / 1e9:.1f} GB/s")

    ours = {"fp32": (paths["F32"], torch.float32), "bf16": (paths["F32"], torch.bfloat16),
            "int8": (paths["Q8_0"], None), "int4": (paths["Q4_1"], None)}
    rows: dict[tuple[str, int], tuple[float, float, float | None]] = {}
    reference_tokens = {}

    def record(name, batch, fn, nbytes=None):
        runs = [fn() for _ in range(args.rounds)]
        pre, dec = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        bound = bw / nbytes if nbytes else None
        rows[(name, batch)] = (pre, dec, bound)
        reference_tokens[(name, batch)] = runs[-1][2]
        near = f"  {dec / batch / bound:5.0%} of the bandwidth bound {bound:6.1f} tok/s" if bound else ""
        print(f"{name:22s} batch {batch}  prefill {pre:8.1f} tok/s  decode {dec:7.1f} tok/s{near}", flush=True)

    for name, (path, dtype) in ours.items():
        model = llamalab.load(path, dtype=dtype, tokenizer=False).model
        nbytes = weight_bytes(model)
        for compiled in (False, True) if args.compile else (False,):
            for batch in args.batch:
                time_ours(model, prompt, 8, batch, compiled)  # warm-up (and compilation)
                record(f"llamalab {name}" + " compiled" * compiled, batch,
                       lambda: time_ours(model, prompt, n, batch, compiled), nbytes)
        del model

    if not args.skip_transformers:
        import transformers
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            hf = transformers.AutoModelForCausalLM.from_pretrained(paths["F32"].parent, gguf_file=paths["F32"].name,
                                                                   dtype=dtype).eval()
            for batch in args.batch:
                time_hf(hf, prompt, 8, batch)
                record(f"transformers {name}", batch, lambda: time_hf(hf, prompt, n, batch))
            del hf

    llama_cpp = None
    if not args.skip_llama_cpp:
        try:
            import llama_cpp
        except ImportError:
            llama_cpp = None
            print("llama.cpp: llama-cpp-python is not installed (pip install -e '.[bench]'); its rows are skipped")
    if llama_cpp is not None:
        for kind, path in paths.items():
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=len(prompt) + n + 8, n_threads=threads,
                                  n_threads_batch=threads, n_batch=512, verbose=False)
            time_llama_cpp(llm, prompt, 8)
            record(f"llama.cpp {kind}", 1, lambda: time_llama_cpp(llm, prompt, n))
            del llm

    print("\nratios (decode tokens/s, batch 1; prefill in brackets):")
    pairs = [("llamalab fp32", "transformers fp32"), ("llamalab bf16", "transformers bf16"),
             ("llamalab fp32", "llama.cpp F32"), ("llamalab int8", "llama.cpp Q8_0"),
             ("llamalab int4", "llama.cpp Q4_1")]
    pairs += [(a + " compiled", b) for a, b in pairs]
    for a, b in pairs:
        if (a, 1) in rows and (b, 1) in rows:
            print(f"  {a:24s} / {b:18s} {rows[(a, 1)][1] / rows[(b, 1)][1]:5.2f}x  "
                  f"({rows[(a, 1)][0] / rows[(b, 1)][0]:.2f}x)")
    same = reference_tokens.get(("llamalab fp32", 1)) == reference_tokens.get(("transformers fp32", 1))
    if ("transformers fp32", 1) in reference_tokens:
        print(f"fp32 greedy tokens identical to transformers: {same}")
    if ("llamalab fp32 compiled", 1) in reference_tokens:
        same = reference_tokens[("llamalab fp32 compiled", 1)] == reference_tokens[("llamalab fp32", 1)]
        print(f"fp32 greedy tokens of the compiled step identical to eager: {same}")


if __name__ == "__main__":
    main()
