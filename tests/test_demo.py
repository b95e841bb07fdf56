"""`llamalab demo --quick` end to end: embedded corpus → tokenizer → shards → pretraining → samples,
perplexity vs the unigram baseline, loss curve, and an HF export that `llamalab.load` reads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def test_demo_quick(tmp_path):
    p = subprocess.run([sys.executable, "-m", "llamalab", "demo", "--quick", "--no-progress", "--out", str(tmp_path)],
                       env={**os.environ, "OMP_NUM_THREADS": "1", "LLAMALAB_CACHE": str(tmp_path / "cache")},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    for stage in range(1, 6):
        assert f"[{stage}/5]" in p.stdout
    assert "held-out perplexity" in p.stdout and "unigram baseline" in p.stdout
    assert p.stdout.count("» ") == 4  # one sample per prompt
    train = tmp_path / "train-quick"
    png = (train / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    recs = [json.loads(line) for line in (train / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 31))
    assert np.mean([r["loss"] for r in recs[-5:]]) < np.mean([r["loss"] for r in recs[:5]]) - 0.3  # it learns
    assert all(k in recs[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"))
    assert all(r["mfu"] > 0 for r in recs) and "MFU" in p.stdout  # against the CPU's measured matmul peak

    import llamalab

    ckpt = llamalab.load(train / "model")
    assert ckpt.args.vocab_size == ckpt.tokenizer.vocab_size == 512
    assert ckpt.tokenizer.decode(ckpt.tokenizer.encode("Call me Ishmael.")) == "Call me Ishmael."
