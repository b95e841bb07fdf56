"""Structured outputs: what a JSON schema costs per token, and which grammar library to use.

    python bench/structured.py [--quick] [--max-new-tokens 64] [--repeats 3]

Two parts, one run, SmolLM2-135M-Instruct (the asset's Q4_1 GGUF, its 49152-token vocabulary):
1. The grammar libraries on the same schema and the same token stream (a valid instance, tokenized):
   compile time, and the median time to compute the allowed-token mask of one step — llguidance (what
   `llamalab.grammar` uses) and outlines-core (regex → DFA index over the vocabulary).
2. The engine: decode tokens/s with a schema vs without, at batch 1 and batch 8, greedy, runs interleaved
   (median of --repeats). The schema asks for an array of at least 64 strings, so no constrained sequence
   ends before max_new_tokens; the free runs ignore the end-of-sequence token for the same reason.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "email": {"type": "string"},
    "admin": {"type": "boolean"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "email", "admin", "tags"], "additionalProperties": False}
INSTANCE = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.org", "admin": True,
            "tags": ["math", "engines", "poetry"]}
LONG = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}, "minItems": 64}},
        "required": ["items"], "additionalProperties": False}


def llguidance_row(tok, tokens):
    from llamalab import grammar

    t = time.perf_counter()
    g = grammar.compile_json(tok, SCHEMA)
    compiled = time.perf_counter() - t
    m, bitmask, times = g.start(), grammar.new_bitmask(1, tok.vocab_size), []
    for token in tokens:
        t = time.perf_counter()
        m.fill(bitmask, 0)
        times.append(time.perf_counter() - t)
        m.accept(token)
    return compiled, statistics.median(times)


def outlines_row(tok, tokens):
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    from llamalab.grammar import token_bytes

    vocab: dict[bytes, list[int]] = {}
    eos = min(tok.stop_ids)
    for i, b in enumerate(token_bytes(tok)):
        if i not in tok.stop_ids and b and not b.startswith(b"\xff"):
            vocab.setdefault(b, []).append(i)
    t = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA), whitespace_pattern=""), Vocabulary(eos, vocab))
    compiled = time.perf_counter() - t
    guide = Guide(index)
    mask = torch.zeros((tok.vocab_size + 31) // 32, dtype=torch.int32)
    times = []
    for token in tokens:
        t = time.perf_counter()
        guide.write_mask_into(mask.data_ptr(), mask.numel(), mask.element_size())
        times.append(time.perf_counter() - t)
        guide.advance(token)
    return compiled, statistics.median(times)


def decode_rate(runnable, prompt, n, batch, grammar) -> float:
    engine = runnable.engine(max_batch=batch, max_len=len(prompt) + n)
    seqs = [engine.add(prompt, max_new_tokens=n, grammar=grammar) for _ in range(batch)]
    t = time.perf_counter()
    while engine.step():
        pass
    elapsed = time.perf_counter() - t
    return sum(len(s.tokens) - 1 for s in seqs) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer tokens and repeats (a shared machine)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    n, repeats = (24, 2) if args.quick else (args.max_new_tokens, args.repeats)

    from llamalab import assets, grammar
    from llamalab.chat_templates import render_for
    from llamalab.runtime import load_runnable

    runnable = load_runnable(str(assets.path("smollm2")))
    tok = runnable.tokenizer
    tokens = tok.encode(json.dumps(INSTANCE, separators=(",", ":")), special=False)
    print(f"1. grammar libraries: schema of 5 properties, {len(tokens)} tokens, vocabulary {tok.vocab_size}")
    grammar.ll_tokenizer(tok)  # built once per tokenizer, outside the timings
    for name, row in (("llguidance", llguidance_row), ("outlines-core", outlines_row)):
        compiled, per_token = row(tok, tokens)
        print(f"   {name:14s} compile {compiled * 1e3:9.1f} ms   mask per token {per_token * 1e3:7.3f} ms (median)")

    prompt = tok.encode(render_for(tok, [{"role": "user", "content": "List some words."}]), bos=False)
    long = grammar.compile_json(tok, LONG)
    print(f"2. engine decode, greedy, {n} new tokens, median of {repeats} interleaved runs, "
          f"{torch.get_num_threads()} threads")
    for batch in (1, 8):
        free, constrained = [], []
        for _ in range(repeats):
            free.append(decode_rate(runnable, prompt, n, batch, None))
            constrained.append(decode_rate(runnable, prompt, n, batch, long))
        a, b = statistics.median(free), statistics.median(constrained)
        print(f"   batch {batch}: without schema {a:7.1f} tok/s   with schema {b:7.1f} tok/s   ratio {b / a:.2f}x")


if __name__ == "__main__":
    main()
