"""Tensor parallelism against one process, in one run (too slow for the test suite on 2 CPU cores):

    python bench/tensor_parallel.py generate          # SmolLM2-135M greedy, tp 3 (9 query, 3 KV heads) vs 1 process
    python bench/tensor_parallel.py train             # 20 steps, tp 2 × fsdp 2 (4 ranks) vs 1 process, same batch
    python bench/tensor_parallel.py train --sequence-parallel

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
    from llamalab.runtime.distributed import init_distributed

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


def train_run(data: Path, out: Path, nproc: int, *settings: str) -> list[dict]:
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
              if nproc > 1 else [sys.executable])
    t0 = time.perf_counter()
    subprocess.run([*launch, "-m", "llamalab", "train", "model=tiny", "seq_len=32", "max_steps=20", "lr=3e-3",
                    "warmup_fraction=0.1", "eval_every=10", "eval_batches=2", "progress=false", "export=false",
                    f"data={data}", f"out_dir={out}", *settings], check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    print(f"  {' '.join(settings) or 'one process'}: {time.perf_counter() - t0:.0f} s")
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def bench_train(a):
    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic token datasets
    from token_data import write_token_dataset

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(1)
        pattern = rng.integers(0, 512, 97)  # a learnable stream, as tests/test_train_parallel.py
        stream = np.concatenate([np.roll(pattern, k) for k in range(300)])
        write_token_dataset(tmp / "data", {"text": stream, "noise": rng.integers(0, 512, 8_000)}, vocab_size=512,
                            eos_id=0, val={"text": stream[:3000], "noise": rng.integers(0, 512, 1_000)})
        print("tiny model, 20 steps, global batch 4 × 32 tokens:")
        ref = train_run(tmp / "data", tmp / "one", 1, "micro_batch_size=4")
        got = train_run(tmp / "data", tmp / "tp", 4, "tensor_parallel=2", "parallel=fsdp", "micro_batch_size=2",
                        *(["sequence_parallel=true"] if a.sequence_parallel else []))
    worst = 0.0
    print(f"{'step':>4} {'one process':>12} {'tp 2 × fsdp 2':>14}")
    for r, g in zip(ref, got):
        for key in ("loss", "val_loss"):
            if key in r:
                worst = max(worst, abs(g[key] - r[key]) / abs(r[key]))
        print(f"{r['step']:4d} {r['loss']:12.6f} {g['loss']:14.6f}" + (
            f"   held-out {r['val_loss']:.6f} / {g['val_loss']:.6f}" if "val_loss" in r else ""))
    print(f"largest relative difference: {worst:.2e} (losses and held-out losses)")
    return 0 if worst <= 1e-5 and len(got) == len(ref) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what", required=True)
    g = sub.add_parser("generate")
    g.add_argument("--model", help="checkpoint (default: the SmolLM2-135M-Instruct test asset)")
    g.add_argument("--tp", type=int, default=3)
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--worker", help=argparse.SUPPRESS)
    t = sub.add_parser("train")
    t.add_argument("--sequence-parallel", action="store_true")
    a = ap.parse_args()
    if a.what == "generate":
        return worker(a) if a.worker else bench_generate(a)
    return bench_train(a)


if __name__ == "__main__":
    sys.exit(main())
