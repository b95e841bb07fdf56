"""Decoding speed: llamalab `generate` vs transformers `generate`, same model, same settings, one run.

    python bench/generate.py [--max-new-tokens 128] [--dtype float32] [--device cpu]

Both load SmolLM2-135M-Instruct from the same GGUF (fp32 weights after dequantization), decode the same
prompt greedily, batch 1, with end-of-sequence stopping off so both produce exactly N tokens. Each side
gets a warm-up run first. Tokens/s counts new tokens over the whole call (prefill included).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from llamalab.device import default_device


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="GGUF file (default: the SmolLM2 asset)")
    ap.add_argument("--prompt", default="The LLaMA paper shows that smaller models trained on more tokens")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--device", default=str(default_device()))
    args = ap.parse_args()

    import transformers

    import llamalab
    from llamalab import assets
    from llamalab.generate import generate

    path = Path(args.model) if args.model else assets.path("smollm2")
    dtype, n = getattr(torch, args.dtype), args.max_new_tokens
    ours = llamalab.load(path, device=args.device, dtype=dtype)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    hf = hf.to(args.device).eval()
    hf.generation_config.update(do_sample=False, eos_token_id=None, pad_token_id=0,  # greedy, never stop early
                                temperature=None, top_p=None, top_k=None)
    prompt = ours.tokenizer.encode(args.prompt, bos=ours.tokenizer.add_bos)
    ids = torch.tensor([prompt], device=args.device)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    def run_ours(k):
        return generate(ours.model, [prompt], max_new_tokens=k)[0]

    def run_hf(k):
        with torch.inference_mode():
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=k)
        return out[0, len(prompt):].tolist()

    runs = {"llamalab": run_ours, "transformers": run_hf}
    speeds = {name: [] for name in runs}
    tokens = {}
    for fn in runs.values():
        fn(8)  # warm-up
    for _ in range(args.rounds):
        for name, fn in runs.items():
            sync()
            t = time.perf_counter()
            tokens[name] = fn(n)
            sync()
            speeds[name].append(len(tokens[name]) / (time.perf_counter() - t))
    ours_tps, hf_tps = (statistics.median(speeds[name]) for name in runs)
    a, b = tokens["llamalab"], tokens["transformers"]
    print(f"model {path.name}  device {args.device}  dtype {args.dtype}  "
          f"threads {torch.get_num_threads()}  prompt {len(prompt)} tokens  greedy  batch 1  {n} new tokens  "
          f"median of {args.rounds} alternating rounds")
    rounds = {name: " ".join(f"{v:.1f}" for v in speeds[name]) for name in runs}
    print(f"llamalab      {ours_tps:8.1f} tokens/s  (rounds: {rounds['llamalab']})")
    print(f"transformers  {hf_tps:8.1f} tokens/s  (rounds: {rounds['transformers']}; "
          f"transformers {transformers.__version__})")
    print(f"ratio         {ours_tps / hf_tps:8.2f}x  (llamalab / transformers)")
    print(f"same tokens   {a == b}")


if __name__ == "__main__":
    main()
