"""Mixture presets and the epochs report (the paper's Table 1)."""

import numpy as np
import pytest

from llamalab.cli import main
from llamalab.data.loader import TokenLoader
from llamalab.data.mixture import MIXTURES, TABLE1, parse_mixture, report
from llamalab.errors import LlamalabError
from token_data import write_token_dataset

# LLaMA paper, Table 1, transcribed: (sampling proportion %, disk size GB, epochs).
PAPER = {"CommonCrawl": (67.0, 3300, 1.10), "C4": (15.0, 783, 1.06), "GitHub": (4.5, 328, 0.64),
         "Wikipedia": (4.5, 83, 2.45), "Books": (4.5, 85, 2.23), "ArXiv": (2.5, 92, 1.06),
         "StackExchange": (2.0, 78, 1.03)}


def test_llama_preset_is_table1():
    assert parse_mixture("llama") == {k: v[0] for k, v in PAPER.items()}
    assert sum(MIXTURES["llama"].values()) == pytest.approx(100.0)
    assert {k: (r.weight, r.disk_gb, r.epochs) for k, r in TABLE1.items()} == PAPER


def test_table1_epochs_from_disk_sizes():
    # The paper gives sizes on disk, not tokens per source. Converting every source at one rate — the
    # paper's 1.4T tokens over its 4.749 TB — report() must reproduce the Epochs column's shape:
    # Wikipedia and Books are the only sources seen about twice, each value within 25% of the paper's
    # (the remaining gap is the per-source tokens-per-byte the paper does not publish: code and
    # LaTeX tokenize into more tokens per byte than web text).
    bytes_total = sum(gb for _, gb, _ in PAPER.values())
    tokens = {k: gb / bytes_total * 1.4e12 for k, (_, gb, _) in PAPER.items()}
    rows = {r.source: r for r in report(parse_mixture("llama"), tokens, 1.4e12)}
    for name, (weight, _, epochs) in PAPER.items():
        assert rows[name].share == pytest.approx(weight / 100)
        assert rows[name].sampled == pytest.approx(weight / 100 * 1.4e12)
        assert rows[name].epochs == pytest.approx(epochs, rel=0.25), name
        assert (rows[name].epochs > 2) == (name in ("Wikipedia", "Books"))


def test_report_predicts_what_the_loader_consumes(tmp_path):
    # Epochs predicted by report() vs epochs actually consumed by TokenLoader, measured from the tokens
    # it returned (token = source * 10^6 + position, so each row names its source).
    sizes = {"web": 90_001, "wiki": 8_001, "code": 30_001}
    write_token_dataset(tmp_path, {k: i * 10**6 + np.arange(n) for i, (k, n) in enumerate(sizes.items())},
                        vocab_size=10**7)
    mixture, T, B, steps = {"web": 0.6, "wiki": 0.25, "code": 0.15}, 100, 50, 200
    loader = TokenLoader(tmp_path, seq_len=T, batch_size=B, mixture=mixture, seed=0)
    drawn = np.zeros(3)
    for _ in range(steps):
        x, _ = next(loader)
        drawn += np.bincount((x[:, 0] // 10**6).numpy(), minlength=3) * T
    rows = report(mixture, tmp_path, steps * B * T)
    for i, r in enumerate(rows):
        assert r.tokens == sizes[r.source]
        assert r.epochs == pytest.approx(drawn[i] / sizes[r.source], rel=0.01)


def test_mixture_cli(tmp_path, capsys):
    assert main(["data", "mixture"]) == 0
    out = capsys.readouterr().out
    assert "CommonCrawl" in out and "3.3 TB" in out and "2.45" in out
    write_token_dataset(tmp_path, {"a": np.arange(1000), "b": np.arange(4000)}, vocab_size=5000)
    assert main(["data", "mixture", "--data", str(tmp_path), "--weights", "a=0.5,b=0.5", "--tokens", "8000"]) == 0
    out = capsys.readouterr().out.splitlines()
    # a: 4000 of its 1000 tokens = 4 epochs; b: 4000 of 4000 = 1 epoch
    assert out[1].split()[0] == "a" and out[1].split()[-1] == "4.00"
    assert out[2].split()[0] == "b" and out[2].split()[-1] == "1.00"
    for bad, message in ((["--weights", "a=x"], "bad mixture entry"), (["--weights", "zz=1"], "lacks"),
                         ([], "--tokens")):
        args = ["data", "mixture", "--data", str(tmp_path), *bad] + (["--tokens", "10"] if bad else [])
        assert main(args) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(LlamalabError):
        parse_mixture("a=1,b=-1")
