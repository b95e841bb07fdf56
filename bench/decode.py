"""Decoding and prefill speed side by side with llama.cpp, on the same GGUF files, the default path.

    python bench/decode.py [--types F32 F16 Q8_0 Q4_0 Q4_K_M Q6_K] [--models smollm2 slice] [--threads 2]
                           [--new-tokens 64] [--prompt-tokens 512] [--rounds 3] [--compile] [--quick]

Two models: SmolLM2-135M-Instruct (real weights; its F32 GGUF made by `llamalab convert` from the asset) and
a 7B-shaped slice (bench/slice7b.py: LLaMA-7B's exact matrices, 2 layers, random weights). Every other type
is written from the F32 file by llama.cpp's own `llama_model_quantize`, so both sides read the same files.
Per row, batch 1, greedy, end-of-sequence ignored, `--threads` for both sides:
- decode tokens/s (ours: `load_runnable` + `Engine`, no --compile; llama.cpp: llama-cpp-python's eval loop),
  the ratio, and each side's fraction of the memory-bandwidth bound = read bandwidth / bytes streamed per
  token (every matrix of the file but the token embedding, which is only looked up; a tied one is the head);
  the read bandwidth is measured in the same run (the best of a few sums over 1 GiB);
- prefill tokens/s over a `--prompt-tokens` prompt (fixed random token ids, the same for both sides) and
  their ratio; time to first token (cold: the first prompt after loading) and load time; peak RSS.
Each side of each row runs in a process of its own (a crash loses that cell, not the bench): a llama.cpp
built for this CPU has been seen to segfault while repacking quantized weights ("extra buffer types"); its
process is then rerun with repacking off and the row says "no-repack". --quick: a short functional run
(F32 and Q8_0, 64-token prompt, 8 new tokens). Files are cached in ~/.cache/llamalab/bench. --compile adds
our rows through torch.compile (`llamalab.fast`).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from llama_cpp_ref import quantize, quantized_path, smollm2_f32, without_repacking  # noqa: E402  (sibling scripts)
from slice7b import make as make_slice  # noqa: E402

RESULT = "RESULT "


def bandwidth(gib: float = 1.0, rounds: int = 5) -> float:
    """Read bandwidth in bytes/s: the best of a few sums over a tensor much larger than the caches."""
    x = torch.ones(int(gib * 2**30) // 4)
    best = float("inf")
    for _ in range(rounds):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return x.nbytes / best


def quantized(f32: Path, kind: str) -> Path:
    """`f32` written as `kind` (F16, Q8_0, Q4_K_M, ...) by llama.cpp's llama_model_quantize, in a process of its own."""
    if kind == "F32":
        return f32
    out = quantized_path(f32, kind)
    if not out.exists():
        run = subprocess.run([sys.executable, __file__, "--worker", "quantize", "--file", str(f32), "--kind", kind,
                              "--out", str(out)], capture_output=True, text=True)  # llama.cpp logs every tensor
        if run.returncode:
            raise RuntimeError((run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1][:200])
    return out


def streamed_bytes(path: Path) -> int:
    """Bytes of weights read per decoded token: every tensor but the token embedding (looked up, a few rows),
    unless the head is tied to it."""
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors}
    embed = tensors.pop("token_embd.weight", 0)
    return sum(tensors.values()) + (0 if "output.weight" in tensors else embed)


def prompt_ids(n: int, vocab: int) -> list[int]:
    g = torch.Generator().manual_seed(0)
    return torch.randint(100, vocab, (n,), generator=g).tolist()  # clear of the control tokens


def run_ours(args) -> dict:
    from llamalab.runtime import load_runnable

    t = time.perf_counter()
    rt = load_runnable(args.file, device="cpu", threads=args.threads, compile=args.compile)
    load_s = time.perf_counter() - t
    prompt, n = prompt_ids(args.prompt_tokens, rt.args.vocab_size), args.new_tokens
    w2 = rt.model.layers[0].feed_forward.w2
    runs_as = type(w2).__name__ + f"({getattr(w2, 'path', None) or str(w2.weight.dtype).removeprefix('torch.')})"
    times = []
    for _ in range(args.rounds + 1):  # the first: cold (time to first token after loading)
        engine = rt.engine(max_batch=1, max_len=len(prompt) + n + 1)
        t0 = time.perf_counter()
        engine.add(prompt, max_new_tokens=n)
        t1 = time.perf_counter()
        while engine.step():
            pass
        times.append((t1 - t0, time.perf_counter() - t1))
    return summary(times, load_s, len(prompt), n) | {"runs_as": runs_as}


def run_llama_cpp(args) -> dict:
    import llama_cpp

    if args.no_repack:  # llama.cpp's CPU weight repacking off (see the module docstring)
        without_repacking()
    n = args.new_tokens
    t = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(args.file), n_ctx=args.prompt_tokens + n + 8, n_threads=args.threads,
                          n_threads_batch=args.threads, n_batch=512, n_ubatch=512, verbose=False)
    load_s = time.perf_counter() - t
    prompt = prompt_ids(args.prompt_tokens, llm.n_vocab())
    times = []
    for _ in range(args.rounds + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(prompt)
        tok = llm.sample(top_k=1, top_p=1.0, min_p=0.0, temp=0.0)
        t1 = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([tok])
            tok = llm.sample(top_k=1, top_p=1.0, min_p=0.0, temp=0.0)
        times.append((t1 - t0, time.perf_counter() - t1))
    return summary(times, load_s, len(prompt), n) | {"runs_as": "no-repack" if args.no_repack else "repack"}


def summary(times, load_s: float, prompt: int, n: int) -> dict:
    """Cold first run → time to first token; the median of the others → prefill and decode tokens/s."""
    warm = times[1:] or times
    return {"load_s": load_s, "ttft_s": times[0][0], "prefill": prompt / statistics.median(t[0] for t in warm),
            "decode": (n - 1) / statistics.median(t[1] for t in warm),
            "rss_mb": peak_rss_mb()}


def peak_rss_mb() -> float:
    """This process's peak resident memory: VmHWM (ru_maxrss would carry the parent's peak across exec on Linux)."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args) -> None:
    if args.worker == "quantize":
        quantize(args.file, args.out, args.kind, args.threads)
        return
    torch.set_num_threads(args.threads)
    result = run_ours(args) if args.worker == "ours" else run_llama_cpp(args)
    print(RESULT + json.dumps(result), flush=True)


def spawn(args, side: str, path: Path, *extra: str) -> dict | None:
    """One side of one row in a process of its own: its result, or None (with the reason printed)."""
    cmd = [sys.executable, __file__, "--worker", side, "--file", str(path), "--threads", str(args.threads),
           "--new-tokens", str(args.new_tokens), "--prompt-tokens", str(args.prompt_tokens),
           "--rounds", str(args.rounds), *extra]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    found = [line for line in run.stdout.splitlines() if line.startswith(RESULT)]
    if run.returncode == 0 and found:
        return json.loads(found[-1][len(RESULT):])
    tail = (run.stderr.strip().splitlines() or ["no message"])[-1]
    print(f"  [{side} {path.name}: exit status {run.returncode}: {tail[:160]}]", flush=True)
    return None


def reference(args, path: Path) -> dict | None:
    if args.skip_llama_cpp:
        return None
    return spawn(args, "llama.cpp", path) or spawn(args, "llama.cpp", path, "--no-repack")


HEADER = (f"{'model':10s} {'type':7s} {'MB/tok':>7s} | {'decode tok/s ours':>17s} {'llama.cpp':>9s} {'ratio':>5s} | "
          f"{'of bound ours':>13s} {'llama.cpp':>9s} | {'prefill ours':>12s} {'llama.cpp':>9s} {'ratio':>5s} | "
          f"{'TTFT s ours':>11s} {'llama.cpp':>9s} | {'load s ours':>11s} {'llama.cpp':>9s} | "
          f"{'RSS MB ours':>11s} {'llama.cpp':>9s} | ours runs as / llama.cpp")


def row(name: str, kind: str, nbytes: int, bw: float, ours: dict | None, ref: dict | None) -> str:
    def cell(d, key, width, fmt):
        return format(d[key], fmt).rjust(width) if d else "-".rjust(width)

    def ratio(key):
        return f"{ours[key] / ref[key]:5.2f}" if ours and ref else "    -"

    bound = bw / nbytes
    frac = [f"{d['decode'] / bound:.0%}".rjust(w) if d else "-".rjust(w) for d, w in ((ours, 13), (ref, 9))]
    return (f"{name:10s} {kind:7s} {nbytes / 1e6:7.0f} | {cell(ours, 'decode', 17, '.1f')} "
            f"{cell(ref, 'decode', 9, '.1f')} {ratio('decode')} | {frac[0]} {frac[1]} | {cell(ours, 'prefill', 12, '.1f')} "
            f"{cell(ref, 'prefill', 9, '.1f')} {ratio('prefill')} | {cell(ours, 'ttft_s', 11, '.2f')} "
            f"{cell(ref, 'ttft_s', 9, '.2f')} | {cell(ours, 'load_s', 11, '.2f')} {cell(ref, 'load_s', 9, '.2f')} | "
            f"{cell(ours, 'rss_mb', 11, '.0f')} {cell(ref, 'rss_mb', 9, '.0f')} | "
            f"{(ours or {}).get('runs_as', '-')} / {(ref or {}).get('runs_as', '-')}")


def parse():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", nargs="+", help="GGUF types (llama.cpp's LLAMA_FTYPE_MOSTLY_* names, and F32; "
                    "default F32 F16 Q8_0 Q4_0 Q4_K_M Q6_K, with --quick F32 Q8_0)")
    ap.add_argument("--models", nargs="+", default=["smollm2", "slice"], choices=["smollm2", "slice"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3, help="median of this many warm runs per cell")
    ap.add_argument("--compile", action="store_true", help="also our rows through torch.compile")
    ap.add_argument("--quick", action="store_true", help="a short functional run")
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds for one side of one row")
    # a worker process (one side of one row, or one quantization)
    ap.add_argument("--worker", choices=["ours", "llama.cpp", "quantize"], help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--no-repack", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.new_tokens, args.prompt_tokens, args.rounds = 8, 64, 1
    args.types = args.types or (["F32", "Q8_0"] if args.quick else ["F32", "F16", "Q8_0", "Q4_0", "Q4_K_M", "Q6_K"])
    return args


def main():
    args = parse()
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    bw = bandwidth()
    print(f"threads {args.threads}, batch 1, prompt {args.prompt_tokens} tokens, {args.new_tokens} new tokens, "
          f"greedy, EOS ignored, median of {args.rounds}; read bandwidth {bw / 1e9:.1f} GB/s; default path "
          f"(no --compile){' + compiled rows' if args.compile else ''}", flush=True)
    print(HEADER, flush=True)
    f32s = {"smollm2": ("SmolLM2", smollm2_f32), "slice": ("7B-slice", make_slice)}
    for key in args.models:
        name, make = f32s[key]
        f32 = make()
        for kind in args.types:
            try:
                path = quantized(f32, kind)
            except RuntimeError as e:
                print(f"{name:10s} {kind:7s} could not be written by llama_model_quantize ({e})", flush=True)
                continue
            nbytes = streamed_bytes(path)
            ours, ref = spawn(args, "ours", path), reference(args, path)
            print(row(name, kind, nbytes, bw, ours, ref), flush=True)
            if args.compile:
                print(row(name, kind + "+c", nbytes, bw, spawn(args, "ours", path, "--compile"), ref), flush=True)


if __name__ == "__main__":
    main()
