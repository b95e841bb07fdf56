"""`llamalab demo --quick` end to end: embedded corpus → tokenizer → shards → pretraining → samples,
perplexity vs the unigram baseline, loss curve, and an HF export that `llamalab.load` reads back."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from llamalab.demo import TimeBudget
from llamalab.quant import cpu_kernel
from llamalab.train.optim import lr_at


def test_time_budget_refit_rule(capsys):
    """The demo's re-fit: at 1/4, 1/2, 3/4, 7/8 of the budget, the rest timed at the speed since the last check;
    shortened only when it would end more than 5% late."""
    budget = TimeBudget(100.0)
    assert budget(5, 20.0, 40) is None  # before the first check
    assert budget(10, 25.0, 40) is None  # 2.5 s/step: 25 + 30 × 2.5 = 100 s, on time
    assert budget(15, 50.0, 40) == 15 + 10  # 5 s/step since: 25 more steps would take 125 s; 50 s left = 10 steps
    assert "re-fit at step 15" in capsys.readouterr().out
    assert budget(20, 75.0, 25) is None  # on time again: 5 × 5 = 25 s
    assert budget(24, 90.0, 25) is None  # 7/8: 3.75 s/step since, 1 more step fits
    assert budget(25, 99.0, 25) is None  # no checks left


def test_demo_quick(tmp_path):
    """The quick demo, repeating a run that was re-fit at step 20 to end at 25 (as `--steps --refits`)."""
    # a fresh cache for the demo's corpus; the CPU kernels (built once per machine) from the suite's own cache,
    # not compiled again for this run
    kernels = cpu_kernel._cache_dir()
    kernels.mkdir(parents=True, exist_ok=True)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "kernels").symlink_to(kernels, target_is_directory=True)
    p = subprocess.run([sys.executable, "-m", "llamalab", "demo", "--quick", "--no-progress", "--out", str(tmp_path),
                        "--steps", "30", "--refits", "20:25"],
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
    assert [r["step"] for r in recs] == list(range(1, 26))
    peak = recs[1]["lr"]  # warmup: 2 steps (5% of 30), then the peak
    assert [r["lr"] for r in recs] == pytest.approx(  # the schedule of 30 steps, compressed at 20 into 25
        [lr_at(t, peak=peak, warmup=2, max_steps=30, refits=[(20, 25)]) for t in range(25)], rel=1e-6)
    assert recs[19]["lr"] == pytest.approx(lr_at(19, peak=peak, warmup=2, max_steps=30), rel=1e-6)
    assert "to repeat this run: llamalab demo --steps 30 --refits 20:25" in p.stdout
    assert np.mean([r["loss"] for r in recs[-5:]]) < np.mean([r["loss"] for r in recs[:5]]) - 0.3  # it learns
    assert all(k in recs[0] for k in ("loss", "lr", "grad_norm", "tokens_per_s", "mfu", "elapsed_s"))
    assert all(r["mfu"] > 0 for r in recs) and "MFU" in p.stdout  # against the CPU's measured matmul peak

    import llamalab

    ckpt = llamalab.load(train / "model")
    assert ckpt.args.vocab_size == ckpt.tokenizer.vocab_size == 512
    assert ckpt.tokenizer.decode(ckpt.tokenizer.encode("Call me Ishmael.")) == "Call me Ishmael."


@pytest.mark.parametrize("argv, message", [
    (["--refits", "3:4"], "--refits repeats a run: give it with that run's --steps"),
    (["--steps", "5", "--refits", "3:x"], "--refits '3:x': write K:N,..."),
    (["--steps", "5", "--refits", "4:5,2:3"], "steps K ascending"),
])
def test_bad_refits_are_one_error_line(argv, message, capsys):
    from llamalab.cli import main

    assert main(["demo", "--out", "unused", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
