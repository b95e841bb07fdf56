"""Training-step throughput: our Transformer vs transformers' LlamaForCausalLM, same config, same batch,
same optimizer (fused AdamW: ours by default, transformers' Trainer default since torch 2.8), fp32 on CPU,
in one run.

    python bench/train.py                      # demo-8m, seq 256, batch 8
    python bench/train.py --compile            # also torch.compile our model (said so in the output)

Both models compute logits → the same cross-entropy in fp32 → backward → clip → AdamW step; the
steps are interleaved (ours, theirs, ours, ...) so background load hits both alike; the median step time
is reported.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F


def hf_model(args):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=args.vocab_size, hidden_size=args.dim, intermediate_size=args.hidden_dim,
                      num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                      num_key_value_heads=args.kv_heads, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
                      max_position_embeddings=args.max_seq_len, tie_word_embeddings=args.tie_embeddings,
                      attention_bias=False, mlp_bias=False)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def make_step(model, logits_fn):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)

    def step(x, y):
        t0 = time.perf_counter()
        logits = logits_fn(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
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
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="torch.compile our model's blocks (as train compile=true does)")
    opts = ap.parse_args()

    from llamalab.config import get_preset
    from llamalab.model import Transformer
    from llamalab.plan import count_params

    args = get_preset(opts.preset)
    torch.manual_seed(0)
    ours = Transformer(args)
    ours.init_weights(0.02, torch.Generator().manual_seed(0))
    if opts.compile:
        for block in ours.layers:  # per block, as the training loop compiles
            block.compile()
    theirs = hf_model(args)
    ours.train(), theirs.train()
    steps = {"llamalab": make_step(ours, lambda x: ours(x)),
             "transformers": make_step(theirs, lambda x: theirs(input_ids=x).logits)}
    g = torch.Generator().manual_seed(1)
    times = {k: [] for k in steps}
    for i in range(opts.warmup + opts.steps):
        batch = torch.randint(0, args.vocab_size, (opts.batch, opts.seq_len + 1), generator=g)
        for name, step in steps.items():
            dt, _ = step(batch[:, :-1], batch[:, 1:])
            if i >= opts.warmup:
                times[name].append(dt)
    tokens = opts.batch * opts.seq_len
    print(f"{opts.preset}: {count_params(args) / 1e6:.2f}M params, batch {opts.batch}×{opts.seq_len}, fp32, "
          f"AdamW, {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    tps = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        tps[name] = tokens / med
        label = name + (" (torch.compile)" if name == "llamalab" and opts.compile else "")
        print(f"  {label:28s} {med * 1000:8.1f} ms/step  {tps[name]:10,.0f} tokens/s")
    print(f"  ratio llamalab / transformers: {tps['llamalab'] / tps['transformers']:.2f}×")


if __name__ == "__main__":
    main()
