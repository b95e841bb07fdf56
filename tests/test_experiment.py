"""`llamalab experiment over-training` end to end on a small slice of the demo corpus, with a tiny budget."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from llamalab.config import ModelArgs
from llamalab.plan.experiment import first_reaching, parse_sizes
from llamalab.plan.flops import training_flops_per_token


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    from llamalab.data.corpus import demo_sources
    from llamalab.demo import quick_corpus

    return quick_corpus(demo_sources(), tmp_path_factory.mktemp("corpus"), docs=25)["prose"].parent


def run(*argv, cwd=None):
    return subprocess.run([sys.executable, "-m", "llamalab", "experiment", "over-training", *argv],
                          capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_over_training_end_to_end(tmp_path, small_corpus):
    out = tmp_path / "study"
    p = run("--corpus", str(small_corpus), "--sizes", "32x1,64x2", "--budget-minutes", "0.15", "--vocab-size", "512",
            "--seq-len", "64", "--micro-batch", "4", "--out", str(out), "--no-progress")
    assert p.returncode == 0, p.stderr[-3000:]
    assert (out / "over-training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "over-training.json").read_text())
    runs = result["runs"]
    assert list(runs) == ["32x1", "64x2"]  # smallest first
    budgets = []
    for name, r in runs.items():
        args = ModelArgs.from_dict(r["model_args"])
        assert r["training_flops_per_token"] == training_flops_per_token(args, 64)  # the trainer's MFU count
        points = r["points"]
        assert len(points) >= 5 and points[-1]["step"] == r["steps"]
        assert [p["tokens"] for p in points] == sorted(p["tokens"] for p in points)
        assert all(p["flops"] == p["tokens"] * r["training_flops_per_token"] for p in points)
        assert points[-1]["val_loss"] < points[0]["val_loss"]  # it learns
        metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert all(m["mfu"] is not None and m["mfu"] > 0 for m in metrics)  # the CPU peak is measured
        budgets.append(points[-1]["flops"])
        step = 4 * 64 * r["training_flops_per_token"]
        assert abs(points[-1]["flops"] - budgets[0]) <= step or r["steps"] == 10  # equal FLOPs, to one step
    assert runs["32x1"]["points"][-1]["tokens"] > runs["64x2"]["points"][-1]["tokens"]  # smaller sees more
    analysis = result["analysis"]
    assert set(analysis["final_loss"]) == set(runs) and analysis["targets"]
    for t in analysis["targets"]:
        assert any(t["reached"].values())  # every target lies between the best and the worst final loss
    assert "to reach a held-out loss" in p.stdout and str(out / "over-training.json") in p.stdout


def test_first_reaching_interpolates_between_evaluations():
    points = [{"tokens": 100, "flops": 1e3, "val_loss": 5.0}, {"tokens": 400, "flops": 4e3, "val_loss": 3.0}]
    hit = first_reaching(points, 4.0)  # halfway in loss → halfway in log-tokens
    assert hit["tokens"] == pytest.approx(200) and hit["flops"] == pytest.approx(2e3)
    assert first_reaching(points, 5.5) == {"tokens": 100, "flops": 1e3}
    assert first_reaching(points, 2.0) is None
    assert math.isclose(first_reaching(points, 3.0)["tokens"], 400)


def test_sizes_parse_and_sort():
    sizes = parse_sizes("128x4,64x2,tiny", 512, 64)
    assert list(sizes) == ["tiny", "64x2", "128x4"]  # by parameter count: tiny has grouped-query attention
    assert all(a.vocab_size == 512 and a.max_seq_len == 64 for a in sizes.values())


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "64x2"], "name at least two sizes"),
    (["--sizes", "64x2,big"], "size 'big'"),
    (["--sizes", "64x2,60x2x7"], "not divisible"),
    (["--budget-minutes", "0"], "argument --budget-minutes: must be a number > 0, got 0"),
    (["--micro-batch", "0"], "argument --micro-batch: must be an integer >= 1, got 0"),
    (["--corpus", "no/such/dir"], "no text files"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, argv, message):
    from llamalab.cli import main

    code = main(["experiment", "over-training", *argv, "--out", str(tmp_path / "study")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("llamalab experiment: error: ") and message in err, err
    assert err.count("\n") == 1
    assert not (tmp_path / "study").exists()  # nothing written before the input is checked
