"""Throughput and parity of `llamalab eval` against lm-evaluation-harness's HF backend, in one run.

Same model (SmolLM2-135M-Instruct: our GGUF loader vs transformers' loading of the same file, fp32),
same tasks, same items (the first --limit of each split), same batch size. Prints per task acc/acc_norm
for both, the largest per-request log-likelihood difference, and items/s with the speed-up.
Model loading is not timed for either side. Both sides compute acc and acc_norm only (`--uncond` adds
our paper-style "Answer:"-normalized scores, extra work lm-eval does not do). The last column is the
FLOP ratio (see `flop_ratio`): where both sides run matmuls at the same speed, the speed-up that doing
less work can buy; measured speed-ups above it come from lm-eval's log-softmax over the full vocabulary.

    python bench/eval.py --tasks arc_easy,arc_challenge,hellaswag,piqa,boolq,winogrande,openbookqa --limit 500
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def hf_dir_from_gguf(gguf: Path, out: Path) -> Path:
    """transformers' own loading of the GGUF (dequantized to fp32), saved as an HF directory for lm-eval."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, torch_dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def flop_ratio(llm, requests) -> float:
    """lm-eval's model FLOPs over ours for these (context, continuation) requests, counting the matmuls of
    the blocks and of the output head (attention and padding left out): the speed-up that doing less work
    alone buys when both sides run the matmuls equally fast. lm-eval runs one row per request (requests
    whose one-token continuations share a context share a row) with the head on every position; we run
    the packed prefix-tree rows with the head on the predicting positions only."""
    per_token = llm.block_flops
    head = 2 * llm.model.output.weight.numel()
    keys = list(dict.fromkeys((tuple(c), tuple(x)) for c, x in (llm.encode_pair(c, x) for c, x in requests)))
    theirs = {(c, x[:-1]) if len(x) == 1 else (c, x): len(llm.sequence(c, x)) for c, x in keys}
    rows = llm.pack(keys)
    ours = sum(len(r.tokens) for r in rows) * per_token + sum(len(x) for _, x in keys) * head
    return sum(theirs.values()) * (per_token + head) / ours


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="arc_easy,hellaswag,piqa,boolq")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"), help="both sides")
    p.add_argument("--uncond", action="store_true",
                   help="also compute the paper's 'Answer:'-normalized scores (lm-eval computes no such thing)")
    p.add_argument("--output", default=None, help="write the comparison JSON here")
    p.add_argument("--skip-lm-eval", action="store_true", help="time ours only")
    a = p.parse_args()
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from llamalab import assets
    from llamalab.eval import LLM, evaluate_task, get_task

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the parity tests' lm-eval task files
    from lm_eval_tasks import write_task_yamls
    from llamalab.formats import load

    data_dir, gguf = assets.path("benchmarks"), assets.path("smollm2")
    tasks = a.tasks.split(",")
    print(f"torch threads {torch.get_num_threads()}, batch size {a.batch_size}, limit {a.limit}, {a.dtype}",
          file=sys.stderr)

    ckpt = load(gguf, dtype=getattr(torch, a.dtype))
    llm = LLM(ckpt.model, ckpt.tokenizer, batch_size=a.batch_size)
    ours, ours_s, theirs, theirs_s = {}, {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if not a.skip_lm_eval:
            import lm_eval
            from lm_eval.models.huggingface import HFLM
            from lm_eval.tasks import TaskManager

            names = write_task_yamls(data_dir, Path(tmp) / "tasks", tasks)
            hf = HFLM(pretrained=str(hf_dir_from_gguf(gguf, Path(tmp) / "hf")), dtype=a.dtype, device="cpu",
                      batch_size=a.batch_size)
            tm = TaskManager(include_path=str(Path(tmp) / "tasks"))
        for t in tasks:  # interleaved per task, so both sides see the same machine load
            start = time.perf_counter()
            task = get_task(t) if a.uncond else dataclasses.replace(get_task(t), uncond=False)
            r = evaluate_task(llm, task, data_dir, limit=a.limit)
            ours_s[t], ours[t] = time.perf_counter() - start, r
            if not a.skip_lm_eval:
                start = time.perf_counter()
                out = lm_eval.simple_evaluate(model=hf, tasks=[names[t]], task_manager=tm, limit=a.limit,
                                              log_samples=True, bootstrap_iters=0)
                theirs_s[t] = time.perf_counter() - start
                theirs[t] = (out["results"][names[t]], out["samples"][names[t]])
            print(f"{t}: ours {ours_s[t]:.0f}s, lm-eval {theirs_s.get(t, float('nan')):.0f}s", file=sys.stderr)

    report = compare(llm, ours, ours_s, theirs, theirs_s)
    summary = print_report(report, ours_s, theirs_s)
    if a.output:
        Path(a.output).write_text(json.dumps({"tasks": report, "summary": summary}, indent=2))


def compare(llm, ours: dict, ours_s: dict, theirs: dict, theirs_s: dict) -> dict:
    """Per task: both sides' metrics and items/s, the largest per-request log-likelihood difference, the
    speed-up and the FLOP ratio."""
    report = {}
    for t, r in ours.items():
        m, items = r.metrics, r.n
        requests = [(c, x) for s in r.samples for c, x in zip(s["contexts"], s["continuations"])]
        line = {"items": items, "flop_ratio": flop_ratio(llm, requests),
                "ours": {k: v for k, v in m.items() if not k.endswith("_stderr")},
                "ours_items_per_s": items / ours_s[t]}
        if t in theirs:
            res, samples = theirs[t]
            line["lm_eval"] = {k.split(",")[0]: v for k, v in res.items()
                               if k.split(",")[0] in ("acc", "acc_norm")}
            line["lm_eval_items_per_s"] = items / theirs_s[t]
            ours_ll = {s["doc_id"]: s["loglikelihoods"] for s in r.samples}
            diffs = [abs(float(x[0]) - o) for s in samples
                     for x, o in zip(s["filtered_resps"], ours_ll[s["doc_id"]])]
            line["max_abs_ll_diff"] = max(diffs)
            line["speedup"] = theirs_s[t] / ours_s[t]
        report[t] = line
    return report


def print_report(report: dict, ours_s: dict, theirs_s: dict) -> dict:
    """The comparison as a markdown table and a one-line total; returns the totals."""
    total_ours = sum(ours_s.values())
    print("\n| task | items | acc ours | acc lm-eval | acc_norm ours | acc_norm lm-eval | max |Δll| "
          "| items/s ours | items/s lm-eval | speed-up | FLOP ratio |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t, r in report.items():
        o, l = r["ours"], r.get("lm_eval", {})
        f = lambda d, k: f"{100 * d[k]:.1f}" if k in d else "-"
        print(f"| {t} | {r['items']} | {f(o, 'acc')} | {f(l, 'acc')} | {f(o, 'acc_norm')} | {f(l, 'acc_norm')} | "
              f"{r.get('max_abs_ll_diff', float('nan')):.1e} | {r['ours_items_per_s']:.2f} | "
              f"{r.get('lm_eval_items_per_s', float('nan')):.2f} | {r.get('speedup', float('nan')):.2f}× | "
              f"{r['flop_ratio']:.2f}× |")
    n = sum(r["items"] for r in report.values())
    summary = {"items": n, "ours_s": total_ours, "ours_items_per_s": n / total_ours}
    if theirs_s:
        total_theirs = sum(theirs_s.values())
        summary.update(lm_eval_s=total_theirs, lm_eval_items_per_s=n / total_theirs, speedup=total_theirs / total_ours)
        print(f"\nall tasks: {n} items, ours {n / total_ours:.2f} items/s ({total_ours:.0f} s), lm-eval HF "
              f"{n / total_theirs:.2f} items/s ({total_theirs:.0f} s): {total_theirs / total_ours:.2f}× faster")
    return summary


if __name__ == "__main__":
    main()
