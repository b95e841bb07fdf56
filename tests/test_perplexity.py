"""`llamalab perplexity` on SmolLM2 against transformers' strided perplexity recipe.

Reference: the loop of the transformers documentation ("Perplexity of fixed-length models"), run here on
transformers' own fp32 loading of the same GGUF, with the same token ids, window length and stride.
"""

import json
import lzma
import math
from importlib import resources

import pytest
import torch

from llamalab.cli import main
from llamalab.perplexity import perplexity, windows

CONTEXT, STRIDE = 128, 64


@pytest.fixture(scope="module")
def text():
    corpus = resources.files("llamalab.data.corpus") / "prose.jsonl.xz"
    with lzma.open(corpus, "rt") as f:
        return json.loads(f.readline())["text"][:1800]  # ~400 tokens of public-domain prose


def hf_strided_perplexity(model, input_ids: torch.Tensor, max_length: int, stride: int) -> float:
    seq_len = input_ids.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        ids = input_ids[:, begin_loc:end_loc]
        target_ids = ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = model(ids, labels=target_ids).loss
        num_loss_tokens = (target_ids[:, 1:] != -100).sum().item()  # labels are shifted inside the model
        nll_sum += loss.item() * num_loss_tokens
        n_tokens += num_loss_tokens
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return math.exp(nll_sum / n_tokens)


def test_perplexity_equals_transformers_strided_recipe(smollm2_fp32, hf_smollm2, text):
    ours = smollm2_fp32
    ids = ours.tokenizer.encode(text, bos=ours.tokenizer.add_bos)
    hf_ids = hf_smollm2[1](text, return_tensors="pt").input_ids
    assert ids == hf_ids[0].tolist() and len(ids) > 2 * CONTEXT
    expected = hf_strided_perplexity(hf_smollm2[0], hf_ids, CONTEXT, STRIDE)
    got = perplexity(ours.model, ids, context=CONTEXT, stride=STRIDE, batch_size=3, progress=False)
    assert got.perplexity == pytest.approx(expected, rel=1e-3)
    assert got.tokens == len(ids) - 1  # every token but the first scored exactly once


def test_windows_score_each_token_once():
    for n, c, s in [(10, 4, 2), (10, 4, 4), (9, 4, 3), (3, 8, 4)]:
        scored = [t for _, end, first in windows(n, c, s) for t in range(first, end)]
        # disjoint windows (stride = context) cannot score their first token, as in the HF recipe
        assert scored == [t for t in range(1, n) if s < c or t % c], (n, c, s)
        assert all(end - begin <= c for begin, end, _ in windows(n, c, s))


def test_cli_prints_perplexity_last_and_rejects_a_too_long_context(smollm2_gguf, tmp_path, text, capsys):
    f = tmp_path / "t.txt"
    f.write_text(text[:400])
    assert main(["perplexity", "--model", str(smollm2_gguf), "--input", str(f), "--context", "64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert result["context"] == 64 and result["stride"] == 32 and result["perplexity"] > 1
    assert main(["perplexity", "--model", str(smollm2_gguf), "--input", str(f), "--context", "9000"]) == 2
    err = capsys.readouterr().err
    assert "larger than the model's context of 8192" in err and err.count("\n") == 1
