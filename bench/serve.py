"""Load test of `llamalab serve`: correctness under 32 concurrent streams, batching speed-up, time to first token.

    python bench/serve.py [--model GGUF] [--clients 32] [--max-tokens 64] [--max-batch 8] [--dtype as-stored]
    python bench/serve.py --url http://127.0.0.1:8000      # an already running server (smoke test)

Starts a server (unless --url), then, all over HTTP with streaming completions (greedy):
1. reference: each of 8 prompts alone, one after another;
2. correctness: `--clients` concurrent streams over those prompts; each must equal its prompt's reference;
3. throughput: the same fixed-length request (`ignore_eos`) from 1 client, then from 8 concurrent clients,
   alternating for `--rounds` rounds (best of each: other load on the machine only ever slows a round);
   aggregate decode tokens/s = tokens after each stream's first / (last token − first token over all
   streams); the ratio 8 vs 1 is what continuous batching buys;
4. time to first token (request sent → first token received) alone and under the `--clients` load.
Exits 1 if any stream is wrong or fails.

"Correct" is token-for-token equal to the lone answer. The started server runs float32 weights by default,
where a row's logits are the same to ~1e-6 whatever the batch; with `--dtype as-stored` (the quantized
GGUF's kernels, activations rounded to bfloat16 or 8 bits) batched logits differ from lone ones in the third digit, so
long greedy answers can part ways at near-ties: the count of such streams is then reported, not a failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import httpx

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics are",
    "Ingredients for a simple pancake recipe:\n1.",
    "The LLaMA paper shows that smaller models trained on more tokens",
    "Q: What is the tallest mountain on Earth?\nA:",
    "Photosynthesis is the process by which",
]


async def stream(client: httpx.AsyncClient, prompt: str, max_tokens: int, ignore_eos: bool = False) -> dict:
    """One streaming completion: its text, token count, and when it was sent / got its first and last token."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": ignore_eos,
            "stream_options": {"include_usage": True}}
    sent, times, text, usage = time.perf_counter(), [], [], None
    async with client.stream("POST", "/v1/completions", json=body) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {(await r.aread()).decode()[:200]}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk["choices"]:
                times.append(time.perf_counter())
                text.append(c["text"])
    return {"text": "".join(text), "tokens": usage["completion_tokens"], "sent": sent, "first": times[0],
            "last": times[-1]}


async def together(url: str, prompts: list[str], max_tokens: int, ignore_eos: bool = False) -> list[dict]:
    limits = httpx.Limits(max_connections=len(prompts) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=3600, limits=limits) as client:
        return await asyncio.gather(*(stream(client, p, max_tokens, ignore_eos) for p in prompts))


def decode_rate(results: list[dict]) -> float:
    """Aggregate decode tokens/s: tokens after each stream's first, over the span from the first first
    token to the last last token."""
    span = max(r["last"] for r in results) - min(r["first"] for r in results)
    return sum(r["tokens"] - 1 for r in results) / span


def ttft(results: list[dict]) -> list[float]:
    return sorted(r["first"] - r["sent"] for r in results)


def run(url: str, clients: int, max_tokens: int, rounds: int = 3) -> bool:
    print(f"server {url}")
    reference = {p: asyncio.run(together(url, [p], max_tokens))[0] for p in PROMPTS}
    load = [PROMPTS[i % len(PROMPTS)] for i in range(clients)]
    results = asyncio.run(together(url, load, max_tokens))
    failed = [(p, r) for p, r in zip(load, results) if "error" in r or r["text"] != reference[p]["text"]]
    print(f"{clients} concurrent streams: {clients - len(failed)} correct, {len(failed)} wrong or failed")
    for p, r in failed[:3]:
        print(f"  {p!r}: {r.get('error') or repr(r['text'])} != {reference[p]['text']!r}")
    loaded = ttft([r for r in results if "error" not in r])
    alone = ttft(list(reference.values()))

    fixed = PROMPTS[5]
    asyncio.run(together(url, [fixed], 8, ignore_eos=True))  # warm
    rates = {1: [], 8: []}
    for _ in range(rounds):
        for n in rates:
            rates[n].append(decode_rate(asyncio.run(together(url, [fixed] * n, max_tokens, ignore_eos=True))))
    one, eight = max(rates[1]), max(rates[8])
    print(f"decode tokens/s, {max_tokens} tokens per stream, best of {rounds}: 1 client {one:.1f}, 8 clients "
          f"{eight:.1f} (aggregate) = {eight / one:.2f}x   (rounds: 1 client "
          f"{', '.join(f'{r:.1f}' for r in rates[1])}; 8 clients {', '.join(f'{r:.1f}' for r in rates[8])})")
    print(f"time to first token: alone median {statistics.median(alone):.3f} s; under {clients} clients median "
          f"{statistics.median(loaded):.3f} s, p90 {loaded[int(0.9 * (len(loaded) - 1))]:.3f} s, "
          f"max {loaded[-1]:.3f} s")
    return not failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running server (default: start one)")
    ap.add_argument("--model", help="GGUF file for the server it starts (default: the SmolLM2 asset)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=8, help="the started server's --max-batch")
    ap.add_argument("--rounds", type=int, default=3, help="alternating 1-client / 8-client throughput rounds")
    ap.add_argument("--device", help="the started server's --device")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "as-stored"],
                    help="the started server's weights (as-stored: a quantized GGUF stays quantized)")
    args = ap.parse_args()
    if args.url:
        return 0 if run(args.url.rstrip("/"), args.clients, args.max_tokens, args.rounds) else 1

    from llamalab import assets
    from llamalab.serve.process import ServerProcess

    flags = ["--max-batch", str(args.max_batch), "--max-queue", str(max(args.clients, 64)), "--context", "1024"]
    if args.device:
        flags += ["--device", args.device]
    if args.dtype != "as-stored":
        flags += ["--dtype", args.dtype]
    with ServerProcess(args.model or assets.path("smollm2"), *flags) as server:
        ok = run(server.url, args.clients, args.max_tokens, args.rounds)
    return 0 if ok or args.dtype != "float32" else 1


if __name__ == "__main__":
    sys.exit(main())
