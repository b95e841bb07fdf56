"""Training-step throughput: our Transformer vs transformers' LlamaForCausalLM, same config, same batch,
same optimizer, same precision, in one run.

    python bench/train.py                                  # demo-8m, 8×256, bf16 autocast, ours compiled
    python bench/train.py --dtype fp32 --no-compile        # both eager fp32
    python bench/train.py --compile-reference              # transformers compiled as well

"Ours" is what `llamalab train` runs for the same config: each block compiled (`compile: true`) and the
loss compiled (`loss_function`), under bf16 autocast (`dtype: bf16`). "Reference" is LlamaForCausalLM
as transformers' Trainer runs it with `bf16=True`: eager under the same autocast (`--compile-reference`:
the whole model compiled too). Both take logits → fp32 cross-entropy → backward → clip → fused AdamW
(the Trainer's default since torch 2.8). Steps are interleaved (ours, theirs, ours, ...) so background
load hits both alike; the median step time is reported. Compilation happens during the warm-up steps
and is reported separately.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch


def hf_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.hidden_dim,
                      num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                      num_key_value_heads=args.kv_heads, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
                      max_position_embeddings=args.max_seq_len, tie_word_embeddings=args.tie_embeddings,
                      attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def make_step(model, logits_fn, loss_fn, autocast):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(x, y):
        t0 = time.perf_counter()
        with autocast():
            logits = logits_fn(x)
        loss = loss_fn(logits, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0, loss.item()
    return step


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo-8m")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16", help="autocast precision, both sides")
    ap.add_argument("--no-compile", dest="compile", action="store_false", help="run ours eager")
    ap.add_argument("--compile-reference", action="store_true", help="torch.compile transformers' model too")
    opts = ap.parse_args()

    from llamalab.config import get_preset
    from llamalab.model import Transformer
    from llamalab.plan import count_params
    from llamalab.train.loop import loss_function, next_token_loss
    from llamalab.train.parallel import apply_compile

    args = get_preset(opts.preset)
    torch.manual_seed(0)
    ours = Transformer(args)
    ours.init_weights(0.02, torch.Generator().manual_seed(0))
    if opts.compile:  # exactly what `llamalab train` does with compile: true
        apply_compile(ours)
    our_loss = loss_function(opts.compile, reduction="mean")
    theirs = hf_model(args)
    if opts.compile_reference:
        theirs.compile()
    ours.train(), theirs.train()
    autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if opts.dtype == "bf16"
                else contextlib.nullcontext)
    steps = {"llamalab": make_step(ours, lambda x: ours(x), our_loss, autocast),
             "transformers": make_step(theirs, lambda x: theirs(input_ids=x).logits, next_token_loss,
                                       autocast)}
    g = torch.Generator().manual_seed(1)
    times = {k: [] for k in steps}
    warm = dict.fromkeys(steps, 0.0)
    for i in range(opts.warmup + opts.steps):
        batch = torch.randint(0, args.vocab_size, (opts.batch, opts.seq_len + 1), generator=g)
        for name, step in steps.items():
            dt, _ = step(batch[:, :-1], batch[:, 1:])
            if i >= opts.warmup:
                times[name].append(dt)
            else:
                warm[name] += dt
    tokens = opts.batch * opts.seq_len
    print(f"{opts.preset}: {count_params(args) / 1e6:.2f}M params, batch {opts.batch}×{opts.seq_len}, "
          f"{'bf16 autocast' if opts.dtype == 'bf16' else 'fp32'}, fused AdamW, {torch.get_num_threads()} CPU "
          f"threads, torch {torch.__version__}")
    tps = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps[name] = tokens / med
        compiled = opts.compile if name == "llamalab" else opts.compile_reference
        label = name + (" (compiled)" if compiled else " (eager)")
        print(f"  {label:26s} {med * 1000:8.1f} ms/step  {tps[name]:10,.0f} tokens/s   "
              f"(warm-up {warm[name]:.1f} s)")
    print(f"  ratio llamalab / transformers: {tps['llamalab'] / tps['transformers']:.2f}×")


if __name__ == "__main__":
    main()
