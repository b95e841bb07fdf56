"""`llamalab demo --vision`: the picture generator says what it drew (checked on the pixels, with scipy's
connected components), every question's answers start with distinct tokens of SmolLM2's vocabulary, the
intervals against scipy, and the quick mode end to end through the command line."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from scipy import ndimage, stats

from llamalab.cli import main
from llamalab.tokenizer import load_tokenizer
from llamalab.vision_demo.score import first_tokens, paired_bootstrap, wilson
from llamalab.vision_demo.shapes import COLOURS, COUNTS, QUESTIONS, pictures


def test_pictures_show_what_their_captions_say():
    drawn = pictures(60, seed=3)
    assert [p.caption() for p in drawn] == [p.caption() for p in pictures(60, seed=3)]  # seeded
    for p in drawn:
        rgb = np.asarray(p.image).astype(int)
        near = {name: (np.abs(rgb - np.array(c)).sum(-1) < 30) for name, c in COLOURS.items()}
        assert near[p.colour].sum() > 12 and all(near[c].sum() == 0 for c in COLOURS if c != p.colour), p.caption()
        assert ndimage.label(near[p.colour])[1] == p.count, p.caption()
        if p.count == 1:
            xs = np.nonzero(near[p.colour])[1]
            assert (xs.mean() < rgb.shape[1] / 2) == (p.side == "left"), p.caption()
        assert COUNTS[p.count - 1] in p.caption().lower()
    kinds = {k for p in drawn for k, _, _ in p.questions()}
    assert kinds == set(QUESTIONS)


def test_answers_start_with_distinct_tokens(smollm2_gguf):
    tok = load_tokenizer(smollm2_gguf)
    for _, answers in QUESTIONS.values():
        assert len(set(first_tokens(tok, answers))) == len(answers)


def test_intervals():
    lo, hi = wilson(37, 120)
    ref = stats.binomtest(37, 120).proportion_ci(method="wilson")
    assert abs(lo - ref.low) < 1e-9 and abs(hi - ref.high) < 1e-9
    a = np.r_[np.ones(80), np.zeros(40)]
    lo, hi = paired_bootstrap(a, np.zeros(120))
    assert lo < 2 / 3 < hi and hi - lo < 0.2


def test_quick_vision_demo_through_the_cli(tmp_path, capsys, smollm2_gguf):
    out = tmp_path / "vd"
    assert main(["demo", "--vision", "--quick", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for step in range(1, 6):
        assert f"[{step}/5]" in printed
    for line in ("chance (one over each question's answers)", "no image (a blank picture in its place)",
                 "with the image", "margin over no image", "(paired bootstrap)"):
        assert line in printed
    with Image.open(out / "answers.png") as png:
        assert png.format == "PNG" and png.width > 0
    assert not list(out.glob(".*"))  # no temporary left beside the results
    report = json.loads((out / "report.json").read_text())
    assert report["quick"] and 0 <= report["with_image"] <= 1 and report["questions"] > 0
    assert main(["demo", "--vision", "--steps", "3", "--out", str(out)]) == 2
