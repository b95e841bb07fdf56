"""Logits processors against distributions written down by hand from their definitions."""

import math

import pytest
import torch

from llamalab.errors import LlamalabError
from llamalab.sampling import Sampler, min_p, repetition_penalty, top_k, top_p

INF = float("-inf")
# a distribution whose processed forms are easy to write by hand
PROBS = [0.5, 0.3, 0.15, 0.05]
LOGITS = torch.tensor([[math.log(p) for p in PROBS]])


def probs(logits):
    return logits.softmax(-1)[0].tolist()


def test_temperature():
    # softmax([1, 2, 3] / 2) = e^0.5, e^1, e^1.5 normalized
    e = [math.exp(0.5), math.exp(1.0), math.exp(1.5)]
    expected = [x / sum(e) for x in e]
    got = Sampler(temperature=2.0).process(torch.tensor([[1.0, 2.0, 3.0]]))
    assert probs(got) == pytest.approx(expected, abs=1e-6)
    assert probs(got) == pytest.approx([0.186324, 0.307196, 0.506480], abs=1e-6)


def test_top_k():
    out = top_k(torch.tensor([[1.0, 3.0, 2.0, 0.5]]), 2)
    assert out.tolist() == [[INF, 3.0, 2.0, INF]]
    # renormalized over the two survivors: e^3/(e^3+e^2), e^2/(e^3+e^2)
    assert probs(out) == pytest.approx([0, 1 / (1 + math.exp(-1)), 1 / (1 + math.e), 0], abs=1e-6)
    assert top_k(torch.tensor([[1.0, 2.0]]), 5).tolist() == [[1.0, 2.0]]  # k > vocab keeps all


@pytest.mark.parametrize("p, expected", [
    (0.75, [0.625, 0.375, 0, 0]),          # 0.5 < 0.75 ≤ 0.5+0.3 → {0.5, 0.3}, renormalized by 0.8
    (0.9, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),  # needs 0.5+0.3+0.15 = 0.95
    (0.1, [1, 0, 0, 0]),                   # the top token alone already reaches p
    (1.0, PROBS),                          # everything
])
def test_top_p(p, expected):
    assert probs(top_p(LOGITS, p)) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("p, expected", [
    (0.2, [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]),  # threshold 0.2·0.5 = 0.1 drops 0.05
    (0.5, [0.5 / 0.8, 0.3 / 0.8, 0, 0]),              # threshold 0.25
    (1.0, [1, 0, 0, 0]),
])
def test_min_p(p, expected):
    assert probs(min_p(LOGITS, p)) == pytest.approx(expected, abs=1e-6)


def test_repetition_penalty():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    seen = torch.tensor([[True, True, False, False]])
    # seen positive logit ÷ 2, seen negative logit × 2, unseen unchanged
    assert repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 0.5, -3.0]]
    assert Sampler(repetition_penalty=2.0).process(logits, seen).tolist() == [[1.0, -2.0, 0.5, -3.0]]
    # greedy after the penalty: 2.0/2 = 1.0 still beats 0.5, but 2.0/5 = 0.4 does not
    assert Sampler(repetition_penalty=2.0)(logits, seen).tolist() == [0]
    assert Sampler(repetition_penalty=5.0)(logits, seen).tolist() == [2]


def test_processors_chain_in_hf_order():
    # temperature 0.5 then top-k 2 on log-probs: squared probabilities of the top two, renormalized
    got = probs(Sampler(temperature=0.5, top_k=2).process(LOGITS))
    assert got == pytest.approx([0.25 / 0.34, 0.09 / 0.34, 0, 0], abs=1e-6)


def test_sampling_frequencies_follow_processed_distribution():
    # 40k draws from top-p 0.75 of PROBS: token 0 with 0.625, token 1 with 0.375, never 2 or 3
    g = torch.Generator().manual_seed(0)
    draws = Sampler(temperature=1.0, top_p=0.75)(LOGITS.expand(40_000, -1), None, g)
    freq = torch.bincount(draws, minlength=4).float() / draws.numel()
    assert freq.tolist() == pytest.approx([0.625, 0.375, 0, 0], abs=0.01)


def test_greedy_is_argmax_and_bad_settings_are_user_errors():
    assert Sampler()(torch.tensor([[0.1, 3.0, -1.0], [5.0, 0.0, 4.9]])).tolist() == [1, 0]
    for bad in [dict(temperature=-1), dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=2),
                dict(repetition_penalty=0)]:
        with pytest.raises(LlamalabError):
            Sampler(**bad)
