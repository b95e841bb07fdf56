"""The decoding loop on a small random model: cache, padding, stops, seeds, sessions, errors.

The reference for greedy decoding is the model itself run without any cache on the whole sequence
at every step (`naive_greedy`): what the KV cache and left padding must reproduce exactly.
"""

import pytest
import torch

from llamalab.config import ModelArgs
from llamalab.errors import LlamalabError
from llamalab.generate import Session, split_stop, generate, stream
from llamalab.model import Transformer

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=101, multiple_of=32, max_seq_len=96)
PROMPTS = [[5, 17, 3, 99, 42, 8, 8, 1, 64], [7], [11, 12, 13, 14], [2, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 4]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(ARGS).eval()
    m.init_weights(std=0.3, generator=torch.Generator().manual_seed(1))  # peaked logits: no argmax near-ties
    return m


@torch.no_grad()
def naive_greedy(model, prompt, n):
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


def test_greedy_equals_full_recompute(model):
    for p in PROMPTS:
        assert generate(model, [p], max_new_tokens=20) == [naive_greedy(model, p, 20)]


def test_batched_left_padded_equals_one_by_one(model):
    alone = [generate(model, [p], max_new_tokens=20)[0] for p in PROMPTS]
    assert generate(model, PROMPTS, max_new_tokens=20) == alone


def test_batched_with_repetition_penalty_equals_one_by_one(model):
    kw = dict(max_new_tokens=15, repetition_penalty=1.3)
    assert generate(model, PROMPTS, **kw) == [generate(model, [p], **kw)[0] for p in PROMPTS]


def test_stop_ids_finish_rows_individually(model):
    full = generate(model, PROMPTS, max_new_tokens=20)
    stop = full[0][5]  # a token that row 0 samples at step 5
    got = generate(model, PROMPTS, max_new_tokens=20, stop_ids=[stop])
    for row, out in zip(full, got):
        expected = row[:row.index(stop) + 1] if stop in row else row
        assert out == expected  # up to and including the stop id, the rest untouched


def test_top_k_1_is_greedy_and_seed_is_reproducible(model):
    greedy = generate(model, PROMPTS, max_new_tokens=12)
    assert generate(model, PROMPTS, max_new_tokens=12, temperature=1.3, top_k=1, seed=0) == greedy
    a = generate(model, PROMPTS, max_new_tokens=12, temperature=1.5, seed=1234)
    b = generate(model, PROMPTS, max_new_tokens=12, temperature=1.5, seed=1234)
    c = generate(model, PROMPTS, max_new_tokens=12, temperature=1.5, seed=4321)
    assert a == b and a != c


def test_stream_yields_the_generate_tokens(model):
    for p in PROMPTS[:2]:
        assert list(stream(model, p, max_new_tokens=16, temperature=0.9, seed=7)) == \
            generate(model, [p], max_new_tokens=16, temperature=0.9, seed=7)[0]


def test_session_reuses_the_cache_of_the_shared_prefix(model):
    s = Session(model)
    first = list(s.stream(PROMPTS[0], max_new_tokens=6))
    assert first == naive_greedy(model, PROMPTS[0], 6)
    assert s.tokens == PROMPTS[0] + first[:-1]  # the last sampled token is not in the cache yet
    # the next turn extends the conversation: only the new suffix is prefilled
    turn2 = PROMPTS[0] + first + [9, 10, 11]
    assert list(s.stream(turn2, max_new_tokens=6)) == naive_greedy(model, turn2, 6)
    # a prompt that diverges early (an edited history) re-prefills from the divergence
    edited = PROMPTS[0][:3] + [77, 78]
    assert list(s.stream(edited, max_new_tokens=6)) == naive_greedy(model, edited, 6)
    # stopping the consumer early leaves a consistent cache
    it = s.stream(turn2, max_new_tokens=6)
    next(it), next(it)
    it.close()
    assert s.tokens == turn2 + naive_greedy(model, turn2, 1)
    assert list(s.stream(turn2 + [5], max_new_tokens=4)) == naive_greedy(model, turn2 + [5], 4)
    # the repetition penalty also counts the tokens of the cached prefix
    turn3 = turn2 + [5, 6]
    kw = dict(max_new_tokens=8, repetition_penalty=3.0)
    assert list(s.stream(turn3, **kw)) == generate(model, [turn3], **kw)[0] != generate(model, [[6]], **kw)[0]


def test_context_overflow_is_an_error_unless_truncating(model):
    long = list(range(1, 91))
    with pytest.raises(LlamalabError, match="exceeds the model's context"):
        generate(model, [long], max_new_tokens=10)
    out = generate(model, [long], max_new_tokens=10, truncate="left")
    assert out == generate(model, [long[-86:]], max_new_tokens=10)
    for bad in ([[]], [[ARGS.vocab_size]]):
        with pytest.raises(LlamalabError):
            generate(model, bad, max_new_tokens=4)


def test_stop_string_split():
    assert split_stop("hello wor", ["world"], final=False) == ("hello ", "wor", False)
    assert split_stop("hello world!", ["world"], final=False) == ("hello ", "", True)
    assert split_stop("a\n", ["\n\n"], final=False) == ("a", "\n", False)
    assert split_stop("a\n", ["\n\n"], final=True) == ("a\n", "", False)
