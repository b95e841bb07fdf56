"""Section 5 throughput of `llamalab eval` against lm-evaluation-harness's HF backend, in one run.

Same model (SmolLM2-135M-Instruct: our GGUF loader vs transformers' loading of the same file, fp32), same
tasks (lm-eval's stock crows_pairs_english, winogender_all, truthfulqa_mc1/mc2 on the data llamalab ships,
see tests/lm_eval_section5.py), same items (the first --limit), same batch size. Prints per task both
sides' headline metric, the largest per-request log-likelihood difference, items/s and the speed-up, and
the speed-up over lm-eval's log-likelihood calls alone (its per-call task set-up left out). Model loading is
not timed for either side; the two sides alternate per task.

    python bench/section5.py --quick            # a few items per task: checks the script, times nothing real
    python bench/section5.py --limit 500        # on a quiet machine
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

TASKS = ["crows_pairs", "winogender", "truthfulqa_mc1", "truthfulqa_mc2"]
HEADLINE = {"crows_pairs": "pct_stereotype", "winogender": "acc", "truthfulqa_mc1": "acc", "truthfulqa_mc2": "acc"}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(TASKS))
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="--limit 8")
    p.add_argument("--batch-size", type=int, default=8)
    a = p.parse_args()
    limit = 8 if a.quick else a.limit
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from llamalab import assets
    from llamalab.eval import LLM, evaluate_task, get_task
    from llamalab.formats import load

    here = Path(__file__).resolve().parent
    sys.path[:0] = [str(here), str(here.parent / "tests")]
    from eval import hf_dir_from_gguf
    from lm_eval_section5 import write_section5_yamls

    gguf, tasks = assets.path("smollm2"), a.tasks.split(",")
    print(f"torch threads {torch.get_num_threads()}, batch size {a.batch_size}, limit {limit}, float32",
          file=sys.stderr)
    ckpt = load(gguf, dtype=torch.float32)
    llm = LLM(ckpt.model, ckpt.tokenizer, batch_size=a.batch_size, progress=False)
    rows, ours_total, theirs_total, n_total = [], 0.0, 0.0, 0
    with tempfile.TemporaryDirectory() as tmp:
        names = write_section5_yamls(Path(tmp) / "tasks", tasks)
        hf = HFLM(pretrained=str(hf_dir_from_gguf(gguf, Path(tmp) / "hf")), dtype="float32", device="cpu",
                  batch_size=a.batch_size)
        tm = TaskManager(include_path=str(Path(tmp) / "tasks"))
        scoring = [0.0]  # seconds lm-eval spends in its model's log-likelihood calls (its task set-up left out)
        real = hf.loglikelihood

        def timed(requests, *args, **kw):
            start = time.perf_counter()
            try:
                return real(requests, *args, **kw)
            finally:
                scoring[0] += time.perf_counter() - start
        hf.loglikelihood = timed
        for t in tasks:
            start = time.perf_counter()
            r = evaluate_task(llm, get_task(t), None, limit=limit)
            ours_s = time.perf_counter() - start
            start = time.perf_counter()
            out = lm_eval.simple_evaluate(model=hf, tasks=[names[t]], task_manager=tm, limit=limit,
                                          log_samples=True, bootstrap_iters=0)
            theirs_s = time.perf_counter() - start
            ours_ll = {s["doc_id"]: s["loglikelihoods"] for s in r.samples}
            diff = max(abs(float(x[0]) - o) for s in out["samples"][names[t]]
                       for x, o in zip(s["filtered_resps"], ours_ll[s["doc_id"]]))
            m = HEADLINE[t]
            rows.append((t, r.n, r.metrics[m], out["results"][names[t]][f"{m},none"], diff, r.n / ours_s,
                         r.n / theirs_s, theirs_s / ours_s))
            ours_total, theirs_total, n_total = ours_total + ours_s, theirs_total + theirs_s, n_total + r.n
    model_only = scoring[0]
    print("\n| task | items | ours | lm-eval | max |Δll| | items/s ours | items/s lm-eval | speed-up |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|")
    for t, n, o, l, d, os_, ts, sp in rows:
        print(f"| {t} | {n} | {o:.4f} | {l:.4f} | {d:.1e} | {os_:.2f} | {ts:.2f} | {sp:.2f}× |")
    print(f"\nall tasks: {n_total} items, ours {ours_total:.1f} s, lm-eval HF {theirs_total:.1f} s: "
          f"{theirs_total / ours_total:.2f}× (the lm-eval time includes its per-call task set-up); its model's "
          f"log-likelihood calls alone {model_only:.1f} s: {model_only / ours_total:.2f}×")


if __name__ == "__main__":
    main()
