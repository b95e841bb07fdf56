"""The slot-based engine under continuous batching, and the compiled decode step.

Reference: the same sequence decoded alone in a one-slot engine (which `test_generate` checks against a
cache-less full recompute at every step).
"""

import pytest
import torch

from llamalab.errors import LlamalabError
from llamalab.device import has_cxx_compiler
from llamalab.generate import Engine, generate
from llamalab.sampling import Sampler
from test_generate import model  # noqa: F401  (the small random model fixture)

PROMPTS = [[5, 17, 3, 99, 42, 8, 8, 1, 64], [7], [11, 12, 13, 14], [2, 30, 30, 30, 30, 30, 4], [9, 9]]


def alone(model, prompt, n, sampler=None, seed=None):
    engine = Engine(model, max_len=64)
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    seq = engine.add(prompt, max_new_tokens=n, sampler=sampler, generator=gen)
    while engine.step():
        pass
    return seq.tokens


@pytest.mark.parametrize("sampled", [False, True])
def test_sequence_is_unchanged_by_others_joining_and_leaving(model, sampled):
    sampler = Sampler(temperature=0.9, top_k=20) if sampled else None
    engine = Engine(model, max_batch=3, max_len=64)
    gen = lambda s: torch.Generator().manual_seed(s) if sampled else None  # noqa: E731
    first = engine.add(PROMPTS[1], max_new_tokens=10, sampler=sampler, generator=gen(1))  # slot 0
    target = engine.add(PROMPTS[0], max_new_tokens=30, sampler=sampler, generator=gen(2))  # slot 1
    others = {first: PROMPTS[1]}
    for step in range(40):
        engine.step()
        if step == 2:  # a third joins mid-decode (slot 2), then the first leaves early
            others[engine.add(PROMPTS[2], max_new_tokens=12, sampler=sampler, generator=gen(3))] = PROMPTS[2]
        if step == 4:
            engine.release(first)
        if step == 6:  # the freed slot 0 is refilled
            others[engine.add(PROMPTS[3], max_new_tokens=20, sampler=sampler, generator=gen(4))] = PROMPTS[3]
        for s in list(others):
            if s.done and s is not first:
                engine.release(s)
    assert target.done and target.finish_reason == "length" and target.slot == 1
    assert target.tokens == alone(model, PROMPTS[0], 30, sampler, 2 if sampled else None)
    for s, p in others.items():  # the neighbours, too, decoded as they would alone (the released one: a prefix)
        seed = {id(PROMPTS[1]): 1, id(PROMPTS[2]): 3, id(PROMPTS[3]): 4}[id(p)] if sampled else None
        assert s.tokens == alone(model, p, s.max_new_tokens, sampler, seed)[:len(s.tokens)]
    engine.release(target)
    assert first.finish_reason == "cancelled" and engine.free_slots() == 3


def test_per_sequence_stops_and_text(model):
    from llamalab.tokenizer import load_tokenizer  # noqa: F401  (real tokenizers are tested on SmolLM2)

    full = alone(model, PROMPTS[0], 20)
    engine = Engine(model, max_batch=2, max_len=64)
    a = engine.add(PROMPTS[0], max_new_tokens=20, stop_ids=[full[4]])
    b = engine.add(PROMPTS[0], max_new_tokens=20)
    while engine.step():
        pass
    assert a.tokens == full[:full.index(full[4]) + 1] and a.finish_reason == "stop"
    assert b.tokens == full and b.finish_reason == "length"


def test_slots_and_context_are_bounded(model):
    engine = Engine(model, max_batch=1, max_len=16)
    engine.add([1, 2, 3], max_new_tokens=4)
    with pytest.raises(LlamalabError, match="slots are busy"):
        engine.add([1], max_new_tokens=4)
    with pytest.raises(LlamalabError, match="exceeds the context of 16"):
        Engine(model, max_len=16).add(list(range(1, 12)), max_new_tokens=8)


@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_decode_step_equals_eager(model):
    eager = generate(model, PROMPTS[:3], max_new_tokens=12)
    assert generate(model, PROMPTS[:3], max_new_tokens=12, compile=True) == eager


@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_batch_of_one_runs_its_projections_as_fused_matrix_vector_products(model):
    """At batch 1 every projection, the output head included, leaves BLAS for inductor's fused
    multiply-and-sum (`llamalab.fast`), and greedy decoding is unchanged."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()  # compile afresh (no cached graph), so the count is this test's
    counters.clear()
    eager = generate(model, PROMPTS[:1], max_new_tokens=12)
    with torch._inductor.config.patch(fx_graph_cache=False):
        assert generate(model, PROMPTS[:1], max_new_tokens=12, compile=True) == eager
    projections = model.args.n_layers * 7 + 1  # wq wk wv wo w1 w2 w3 per layer, and the head
    assert counters["inductor"]["decompose_mm"] >= projections
