"""Log-probabilities recorded by the engine (the server's `logprobs`), against the model run without any
cache on the whole sequence: the chosen token's log-softmax and the top-k, for sequences that join a
batch at different steps, greedy and sampled."""

import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.generate import Engine
from llamalab.model import Transformer
from llamalab.sampling import Sampler

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, multiple_of=32, max_seq_len=96)


@pytest.fixture(scope="module")
def model():
    m = Transformer(ARGS).eval()
    m.init_weights(std=0.3, generator=torch.Generator().manual_seed(1))
    return m


@torch.no_grad()
def full_logprobs(model, prompt, tokens):
    """log-softmax at each generated position, from one uncached forward over prompt + tokens."""
    seq = torch.tensor([prompt + tokens[:-1]])
    return model(seq)[0, len(prompt) - 1:].float().log_softmax(-1)


def test_logprobs_match_an_uncached_forward(model):
    engine = Engine(model, max_batch=3, max_len=64)
    greedy = engine.add([5, 17, 3, 99], max_new_tokens=8, top_logprobs=3)
    engine.step()
    engine.step()
    sampled = engine.add([7, 8], max_new_tokens=6, top_logprobs=0, sampler=Sampler(temperature=1.0),
                         generator=torch.Generator().manual_seed(0))
    plain = engine.add([11, 12, 13], max_new_tokens=5)  # no logprobs asked: none recorded
    while engine.step():
        pass
    for seq in (greedy, sampled):
        assert len(seq.logprobs) == len(seq.tokens)
        expected = full_logprobs(model, seq.prompt, seq.tokens)
        for i, (token, (lp, top)) in enumerate(zip(seq.tokens, seq.logprobs)):
            assert lp == pytest.approx(float(expected[i, token]), abs=1e-4)
            k = seq.top_logprobs
            best = expected[i].topk(k) if k else None
            assert [t for t, _ in top] == (best.indices.tolist() if k else [])
            assert [v for _, v in top] == pytest.approx(best.values.tolist() if k else [], abs=1e-4)
    assert greedy.logprobs[0][1][0][0] == greedy.tokens[0]  # greedy picks the most probable token
    assert plain.logprobs == []
