"""LoRA fine-tuning step: ours (`llamalab finetune`'s train_step) vs transformers + peft, same checkpoint, same
batches, same LoRA, same optimizer and precision, side by side in one run: tokens/s and peak memory.

    python bench/finetune.py                          # SmolLM2-135M, r 8 on q,k,v,o, 4×256 tokens, fp32
    python bench/finetune.py --dtype bf16 --compile   # bf16 autocast; ours with compile: true

Both sides start from the same GGUF file (SmolLM2-135M-Instruct, dequantized to fp32; transformers reads it
with `gguf_file=`) and get the same batches: the committed instruction set rendered with the checkpoint's
chat template, loss on the answers only, each batch padded to --seq-len. "Ours" is `train.loop.train_step`
of a run built by `llamalab.finetune` (LoRA layers, frozen base, fused AdamW on the adapters, clipping).
"Theirs" is peft's `get_peft_model` on `LlamaForCausalLM` (sdpa attention), logits → the same fp32
cross-entropy on the answer tokens → backward → clip → fused AdamW, as a hand-written loop or the Trainer
runs it. Each side runs in its own process (so its memory is its own); the parent alternates their steps,
so background load hits both alike, and reports the median step. Peak memory is the peak resident set
during the timed steps (Linux VmHWM, reset after loading), and also its growth over the loaded model.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch


def rss_peak_reset():
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def batches(opts, tokenizer):
    """--steps + --warmup batches of --batch examples each, padded to --seq-len, loss on answers only."""
    from llamalab.data.instructions import PAIRS
    from llamalab.finetune.data import collate, encode_examples
    from llamalab.finetune.records import load_examples

    _, records = load_examples(PAIRS)
    examples, _ = encode_examples(records, tokenizer, None, opts.seq_len + 1)
    examples.sort(key=len, reverse=True)  # long ones first: full-length batches
    n = opts.batch * (opts.steps + opts.warmup)
    out = []
    for k in range(0, n, opts.batch):
        x, y = collate([examples[i % len(examples)] for i in range(k, k + opts.batch)], 0, opts.seq_len)
        pad = opts.seq_len - x.shape[1]
        out.append((torch.nn.functional.pad(x, (0, pad)), torch.nn.functional.pad(y, (0, pad), value=-100)))
    return out


def ours(opts):
    from llamalab.data.instructions import PAIRS
    from llamalab.finetune import FinetuneConfig
    from llamalab.finetune.run import setup
    from llamalab.train.loop import train_step

    cfg = FinetuneConfig(init_from=opts.model, data=str(PAIRS), out_dir="/nonexistent", lora_rank=opts.rank,
                         lora_alpha=2.0 * opts.rank, lora_dropout=opts.dropout, lora_targets=opts.targets,
                         seq_len=opts.seq_len, micro_batch_size=opts.batch, max_steps=10**6, lr=2e-4,
                         val_split=0.0, samples=0, progress=False, compile=opts.compile, dtype=opts.dtype)
    run, info = setup(cfg)
    data = batches(opts, info.tokenizer)
    run.loader = iter(data)
    counter = iter(range(10**9))
    return lambda: train_step(run, next(counter))["loss"]


def theirs(opts):
    import contextlib
    import logging

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from llamalab.tokenizer import load_tokenizer
    from llamalab.train.loop import next_token_loss

    logging.getLogger("transformers").setLevel(logging.ERROR)
    path = Path(opts.model)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, torch_dtype=torch.float32,
                                                 attn_implementation="sdpa")
    names = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj",
             "down": "down_proj"}
    model = get_peft_model(model, LoraConfig(r=opts.rank, lora_alpha=2 * opts.rank, lora_dropout=opts.dropout,
                                             target_modules=[names[t] for t in opts.targets.split(",")]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    data = iter(batches(opts, load_tokenizer(opts.model)))
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if opts.dtype == "bf16" else contextlib.nullcontext

    def step():
        x, y = next(data)
        with autocast():
            logits = model(input_ids=x).logits
        loss = next_token_loss(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()
    return step


def child(opts):
    """Build one side, then run a step for every line on stdin; answer with one JSON line each."""
    step = (ours if opts.side == "ours" else theirs)(opts)
    loaded = rss_mb("VmRSS")
    print(json.dumps({"ready": True}), flush=True)
    for n, line in enumerate(sys.stdin):
        if n == opts.warmup:
            rss_peak_reset()
        t0 = time.perf_counter()
        loss = step()
        print(json.dumps({"dt": time.perf_counter() - t0, "loss": loss, "loaded_mb": loaded,
                          "peak_mb": rss_mb("VmHWM")}), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF checkpoint (default: the SmolLM2-135M asset)")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--dropout", type=float, default=0.05)
    ap.add_argument("--targets", default="q,k,v,o")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    ap.add_argument("--compile", action="store_true", help="ours with compile: true")
    ap.add_argument("--side", choices=("ours", "theirs"), help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.model is None:
        from llamalab import assets

        opts.model = str(assets.path("smollm2"))
    if opts.side:
        return child(opts)

    procs = {side: subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--model", opts.model, "--side", side],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for side in ("ours", "theirs")}
    for p in procs.values():
        assert json.loads(p.stdout.readline())["ready"]
    results = {side: [] for side in procs}
    for _ in range(opts.warmup + opts.steps):
        for side, p in procs.items():  # alternate: ours, theirs, ours, ...
            p.stdin.write("step\n")
            p.stdin.flush()
            results[side].append(json.loads(p.stdout.readline()))
    for p in procs.values():
        p.stdin.close()
        p.wait()
    tokens = opts.batch * opts.seq_len
    print(f"LoRA r={opts.rank} on {opts.targets}, batch {opts.batch}×{opts.seq_len}, {opts.dtype}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}; {Path(opts.model).name}")
    tps, peak = {}, {}
    for side, rs in results.items():
        timed = rs[opts.warmup:]
        tps[side] = tokens / statistics.median(r["dt"] for r in timed)
        peak[side] = timed[-1]["peak_mb"]
        label = "llamalab" + (" (compiled)" if opts.compile else "") if side == "ours" else "transformers + peft"
        print(f"  {label:26s} {tps[side]:8,.0f} tokens/s   peak RSS {peak[side]:7,.0f} MB "
              f"(+{peak[side] - timed[-1]['loaded_mb']:,.0f} MB over the loaded model)   "
              f"losses {rs[0]['loss']:.4f} → {rs[-1]['loss']:.4f}")
    print(f"  ratio llamalab / transformers+peft: {tps['ours'] / tps['theirs']:.2f}× tokens/s, "
          f"{peak['ours'] / peak['theirs']:.2f}× peak memory")


if __name__ == "__main__":
    main()
