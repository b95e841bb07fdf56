"""Throughput on a shared machine: quiet vs beside one busy single-threaded process, ours and the reference.

    python bench/contention.py                 # decode fp32/int8/int4, a training step, eval log-likelihood
    python bench/contention.py --quick         # the same, shorter (~5 minutes)
    python bench/contention.py --policies      # thread policies side by side on eager int4 decoding
    python bench/contention.py --demo          # `llamalab demo`, quiet and beside a busy process (~25 minutes)

Each measurement runs in a fresh process (so each gets its own OpenMP runtime and environment), in three
conditions: quiet, beside a busy single-threaded process (`while True: pass`), and beside the same at `nice
19`. The busy process starts half a second before the measurement and is killed after it.
- ours: `llamalab.threads.configure()` as the command line does (auto policy), then SmolLM2-135M decoding
  through the engine (fp32 from the F32 GGUF, int8 = Q8_0 quantized, int4 = the Q4_1 asset; eager, batch 1,
  greedy), a training step of the demo model (demo-8m, 8×256 tokens, fp32, AdamW, clip), and eval
  log-likelihood (`llamalab.eval.llm.LLM` on SmolLM2 fp32, batches of 8 of 64 requests).
- reference: llama.cpp (llama-cpp-python; the same three GGUF files, as many threads as CPUs) for decoding;
  transformers (LlamaForCausalLM, the same config / the same F32 GGUF, torch's default threads) for the
  training step and log-likelihood.
A rate is units per second over a fixed time (after a warm-up); the ratio is contended / quiet. The issue's
target: ours >= 0.5 of its own quiet speed, and not below the reference's ratio by more than 0.1.

--policies compares, on eager int4 decoding, the thread settings this policy was chosen among (fixed 2 threads
with libgomp's default spin, with a short GOMP_SPINCOUNT, with OMP_WAIT_POLICY=PASSIVE, fixed 1 thread, and
auto), each condition and round interleaved.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONDITIONS = {"quiet": None, "busy": 0, "busy nice 19": 19}
WORKLOADS = {  # name: (ours, reference)
    "decode fp32": ("ours:decode:F32", "llama.cpp:decode:F32"),
    "decode int8": ("ours:decode:Q8_0", "llama.cpp:decode:Q8_0"),
    "decode int4": ("ours:decode:Q4_1", "llama.cpp:decode:Q4_1"),
    "train step": ("ours:train:-", "transformers:train:-"),
    "eval loglik": ("ours:eval:F32", "transformers:eval:F32"),
}
UNITS = {"decode": "tok/s", "train": "tok/s", "eval": "req/s"}
POLICIES = {  # name: environment of the worker (LLAMALAB_THREADS unset = auto)
    "2 threads": {"LLAMALAB_THREADS": "2"},
    "2 threads, GOMP_SPINCOUNT=10000": {"LLAMALAB_THREADS": "2", "GOMP_SPINCOUNT": "10000"},
    "2 threads, GOMP_SPINCOUNT=100": {"LLAMALAB_THREADS": "2", "GOMP_SPINCOUNT": "100"},
    "2 threads, OMP_WAIT_POLICY=PASSIVE": {"LLAMALAB_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"LLAMALAB_THREADS": "1"},
    "auto (the policy)": {},
}
PROMPT = "The LLaMA paper shows that smaller models trained on more tokens"


# ------------------------------------------------------------------------------------------ worker side
def worker(spec: str, seconds: float) -> dict:
    """Run one workload for about `seconds` after its warm-up; the rate, as a dict (printed as JSON)."""
    impl, what, kind = spec.split(":")
    if impl == "ours":
        from llamalab import threads

        threads.configure(None)  # what the command line does, before torch loads
    import torch

    if what == "decode":
        run = decode_llama_cpp(kind) if impl == "llama.cpp" else decode_ours(kind)
    elif what == "train":
        run = train_step(impl == "ours")
    else:
        run = loglik(impl == "ours")
    run()  # warm-up
    t0, units = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        units += run()
    from llamalab import threads

    policy = threads.current()
    rate = units / (time.perf_counter() - t0)
    return {"rate": rate, "threads": policy.threads if policy else torch.get_num_threads()}


def model_files() -> dict[str, Path]:
    sys.path.insert(0, str(Path(__file__).parent))
    from decode import quantized  # llama.cpp's own quantizer, in a process of its own
    from llama_cpp_ref import smollm2_f32  # the SmolLM2 asset as an F32 GGUF, cached

    from llamalab import assets

    f32 = smollm2_f32()
    return {"F32": f32, "Q8_0": quantized(f32, "Q8_0"), "Q4_1": assets.path("smollm2")}


def decode_ours(kind: str, n: int = 16):
    import torch

    import llamalab
    from llamalab.generate import Engine

    ckpt = llamalab.load(model_files()[kind], dtype=torch.float32 if kind == "F32" else None)
    prompt = ckpt.tokenizer.encode(PROMPT, bos=ckpt.tokenizer.add_bos)

    def run():
        engine = Engine(ckpt.model, max_batch=1, max_len=len(prompt) + n)
        engine.add(prompt, max_new_tokens=n)
        steps = 0
        while engine.step():
            steps += 1
        return steps
    return run


def decode_llama_cpp(kind: str, n: int = 16):
    import llama_cpp

    from llamalab.threads import available_cpus

    cpus = available_cpus()[0]
    llm = llama_cpp.Llama(model_path=str(model_files()[kind]), n_ctx=128, n_threads=cpus, n_threads_batch=cpus,
                          verbose=False)
    prompt = llm.tokenize(PROMPT.encode())

    def run():
        llm.reset()
        llm.eval(prompt)
        for _ in range(n - 1):
            llm.eval([llm.sample(top_k=1, temp=0.0)])
        return n - 1
    return run


def train_step(ours: bool, batch: int = 8, seq_len: int = 256):
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from train import hf_model

    from llamalab import threads
    from llamalab.config import get_preset
    from llamalab.model import Transformer
    from llamalab.train.loop import next_token_loss

    args = get_preset("demo-8m")
    torch.manual_seed(0)
    model = Transformer(args) if ours else hf_model(args)
    if ours:
        model.init_weights(0.02, torch.Generator().manual_seed(0))
    logits_of = (lambda x: model(x)) if ours else (lambda x: model(input_ids=x).logits)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    x = torch.randint(0, args.vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))

    def run():
        threads.adapt()  # as the training loop does (nothing for the reference: not configured)
        next_token_loss(logits_of(x[:, :-1]), x[:, 1:]).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return batch * seq_len
    return run


def loglik(ours: bool, n: int = 64, batch: int = 8):
    import torch

    import llamalab
    from llamalab.eval.llm import LLM

    path = model_files()["F32"]
    ckpt = llamalab.load(path, dtype=torch.float32)
    requests = [(f"Question {i}: what comes after {i} in the list of numbers {', '.join(map(str, range(i % 13)))}?"
                 f" Answer:", f" {i + 1}, then {i + 2}.") for i in range(n)]
    order = itertools.cycle(range(0, n, batch))  # one call: the next batch of requests
    if ours:
        llm = LLM(ckpt.model, ckpt.tokenizer, batch_size=batch, progress=False)
        return lambda: len(llm.loglikelihood(requests[(i := next(order)):i + batch]))
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    llm = LLM(ckpt.model, ckpt.tokenizer, progress=False)  # the same tokens, scored by transformers
    pairs = [llm.encode_pair(c, x) for c, x in requests]

    @torch.inference_mode()
    def run():
        i = next(order)
        seqs = [(c + x)[:-1] for c, x in pairs[i:i + batch]]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [0] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        logp = torch.log_softmax(hf(input_ids=ids, attention_mask=mask).logits.float(), -1)
        for row, (c, x) in enumerate(pairs[i:i + batch]):
            at = torch.arange(len(c) - 1, len(c) + len(x) - 1)
            logp[row, at, torch.tensor(x)].sum().item()
        return len(seqs)
    return run


# ------------------------------------------------------------------------------------------ driver side
def busy(nice: int) -> subprocess.Popen:
    """One busy single-threaded process (at `nice`)."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"],
                            preexec_fn=(lambda: os.nice(nice)) if nice else None)


def measure(spec: str, nice: int | None, seconds: float, env: dict | None = None, timeout: float = 900) -> dict | None:
    hog = busy(nice) if nice is not None else None
    # every worker picks its own threads (ours: the policy; the references: their default)
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LLAMALAB_THREADS")}
    try:
        time.sleep(0.5 if hog else 0)
        p = subprocess.run([sys.executable, __file__, "--worker", spec, "--seconds", str(seconds)],
                           capture_output=True, text=True, env={**base, **(env or {})}, timeout=timeout)
    except subprocess.TimeoutExpired:  # a collapsed run: what the issue is about, not a reason to stop the bench
        print(f"  {spec}: no result within {timeout:.0f} s (loading, warm-up and {seconds:g} s of work)", flush=True)
        return None
    finally:
        if hog:
            hog.kill()
            hog.wait()
    if p.returncode != 0:
        print(f"  {spec}: failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}", flush=True)
        return None
    return json.loads(p.stdout.strip().splitlines()[-1])


def has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def compare(opts) -> None:
    if not has_module("llama_cpp"):
        print("llama.cpp: llama-cpp-python is not installed (pip install -e '.[bench]'); its decode column is skipped")
    model_files()  # build the cached GGUFs once, here
    seconds = 3.0 if opts.quick else 10.0
    print(f"{os.cpu_count()} CPUs; each rate over {seconds:g} s after a warm-up; busy = one `while True: pass`")
    rows = {}
    for name, specs in WORKLOADS.items():
        if opts.only and name not in opts.only:
            continue
        for spec in specs:
            if spec.startswith("llama.cpp") and not has_module("llama_cpp"):
                continue
            rates = {}
            for cond, nice in CONDITIONS.items():
                r = measure(spec, nice, seconds)
                rates[cond] = r
                if r:
                    print(f"{name:12s} {spec.split(':')[0]:12s} {cond:13s} {r['rate']:9.2f} "
                          f"{UNITS[spec.split(':')[1]]:5s} (threads {r['threads']})", flush=True)
            rows[(name, spec.split(":")[0])] = rates
    print("\nratios, contended / quiet (target: ours >= 0.5 and >= the reference's - 0.1):")
    for name, specs in WORKLOADS.items():
        for cond in list(CONDITIONS)[1:]:
            cells = []
            for spec in specs:
                rates = rows.get((name, spec.split(":")[0]), {})
                if rates.get("quiet") and rates.get(cond):
                    cells.append(f"{spec.split(':')[0]} {rates[cond]['rate'] / rates['quiet']['rate']:.2f}")
            if cells:
                print(f"  {name:12s} {cond:13s} " + "   ".join(cells))


def policies(opts) -> None:
    seconds = 3.0 if opts.quick else 6.0
    rates: dict = {}
    model_files()
    for r in range(opts.rounds):
        for cond, nice in CONDITIONS.items():
            for name, extra in POLICIES.items():
                out = measure("ours:decode:Q4_1", nice, seconds, extra)
                if out:
                    rates.setdefault((cond, name), []).append(out["rate"])
                    print(f"round {r + 1}  {cond:13s} {name:36s} {out['rate']:7.1f} tok/s (threads {out['threads']})",
                          flush=True)
    print("\neager int4 decoding, tok/s, median over rounds:")
    print(f"  {'policy':36s} " + " ".join(f"{c:>13s}" for c in CONDITIONS))
    for name in POLICIES:
        print(f"  {name:36s} " + " ".join(f"{statistics.median(rates.get((c, name), [0])):13.1f}" for c in CONDITIONS))


def demo(opts) -> None:
    """`llamalab demo` end to end, quiet and beside a busy process for the whole run: wall seconds each."""
    for cond in ("quiet", "busy"):
        with tempfile.TemporaryDirectory() as out:
            hog = busy(0) if cond == "busy" else None
            t0 = time.perf_counter()
            try:
                cmd = [sys.executable, "-m", "llamalab", "demo", "--out", out, "--no-progress"] + (
                    ["--quick"] if opts.quick else [])
                p = subprocess.run(cmd, capture_output=True, text=True)
            finally:
                if hog:
                    hog.kill()
                    hog.wait()
            steps = [line.strip() for line in p.stdout.splitlines() if "steps" in line and ("warm-up" in line
                                                                                            or "re-fit" in line)]
            print(f"demo {cond:6s} {time.perf_counter() - t0:7.0f} s  exit {p.returncode}  " + " | ".join(steps),
                  flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="shorter measurements")
    ap.add_argument("--policies", action="store_true", help="compare thread policies on eager int4 decoding")
    ap.add_argument("--rounds", type=int, default=2, help="--policies: interleaved rounds")
    ap.add_argument("--demo", action="store_true", help="time `llamalab demo` quiet and beside a busy process")
    ap.add_argument("--only", nargs="*", help=f"workloads to run (default all: {', '.join(WORKLOADS)})")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10.0, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.worker:
        print(json.dumps(worker(opts.worker, opts.seconds)))
    elif opts.policies:
        policies(opts)
    elif opts.demo:
        demo(opts)
    else:
        compare(opts)


if __name__ == "__main__":
    main()
