"""The runtime floor: one loader (`load_runnable`) behind every command that runs a model, one batch driver,
one chunked log-likelihood scorer."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from llamalab.config import PRESETS
from llamalab.errors import LlamalabError
from llamalab.formats import load_state
from llamalab.generate import generate
from llamalab.model import Transformer
from llamalab.runtime import Job, complete, load_runnable, run_batch
from llamalab.runtime.likelihood import HEAD_CHUNK, token_logprobs

SRC = Path(__file__).resolve().parents[1] / "src" / "llamalab"

# the loaders and drivers the runtime replaced: none of them may come back
GONE = {
    "load_checkpoint": r"\bload_checkpoint\b",
    "load_sharded": r"\bload_sharded\b",
    "decode_all": r"\bdecode_all\b",
    "a second attach_adapter caller": r"\battach_adapter\(",
    "formats.load outside the runtime": r"from \.+formats import (.*\b)?load\b(?!_)|formats\.load\(",
}


def test_the_old_loaders_are_gone():
    allowed = {"formats/__init__.py", "formats/peft.py", "__init__.py"}  # the format layer itself; llamalab.load
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel in allowed:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for what, pattern in GONE.items():
                if re.search(pattern, line) and not (rel == "runtime/load.py" and what.startswith("formats.load")):
                    found.append(f"{rel}:{n}: {what}: {line.strip()}")
    assert not found, "\n".join(found)


@pytest.fixture(scope="module")
def rt(smollm2_gguf):
    return load_runnable(smollm2_gguf, device="cpu")


def test_load_runnable_carries_what_a_command_needs(rt, smollm2_gguf):
    assert rt.tokenizer is not None and rt.format == "gguf" and rt.is_main
    assert rt.name == smollm2_gguf.name.removesuffix(".gguf")
    assert "<|im_start|>" in rt.template  # the checkpoint's own ChatML template
    ids = rt.encode_chat([{"role": "user", "content": "Hi"}])
    assert rt.tokenizer.decode(ids).endswith("user\nHi\nassistant\n")  # special tokens are not decoded
    engine = rt.engine(max_batch=2, max_len=64)
    assert engine.max_batch == 2 and engine.max_len == 64


def test_load_runnable_refuses_bad_requests_before_loading(tmp_path):
    missing = tmp_path / "no-such.gguf"
    with pytest.raises(LlamalabError, match="--tensor-parallel must be >= 1"):
        load_runnable(missing, tensor_parallel=0)
    with pytest.raises(LlamalabError, match="unknown chat template 'nope'"):
        load_runnable(missing, template="nope")  # before the (missing) checkpoint is read
    with pytest.raises(LlamalabError, match="--adapter does not combine with --tensor-parallel"):
        load_runnable(missing, tensor_parallel=2, adapter=tmp_path)


def test_run_batch_decodes_each_job_as_alone(rt):
    """Three prompts on two slots (one job waits for a free slot): greedy tokens equal one-prompt decoding."""
    prompts = [rt.encode(t) for t in ("The capital of France is", "1, 2, 3,", "Once upon a time")]
    alone = [generate(rt.model, [p], max_new_tokens=6, stop_ids=rt.tokenizer.stop_ids)[0] for p in prompts]
    seqs = run_batch(rt.engine(max_batch=2, max_len=32), [Job(p, 6, stop_ids=rt.tokenizer.stop_ids) for p in prompts],
                     tokenizer=rt.tokenizer, order=[2, 0, 1])
    assert [s.tokens for s in seqs] == alone
    assert [s.text for s in seqs] == [rt.tokenizer.decode(t) for t in alone]


def test_complete_streams_the_same_text_it_returns_at_once(rt):
    kw = dict(chat=True, max_new_tokens=8)
    streamed = "".join(complete(rt, "What is the capital of France?", **kw))
    assert streamed == "".join(complete(rt, "What is the capital of France?", streaming=False, **kw))
    assert "Paris" in streamed


def test_chunked_scorer_equals_one_log_softmax_over_all_positions():
    torch.manual_seed(0)
    args = PRESETS["tiny"]
    model = Transformer(args).eval()
    tokens = torch.randint(0, args.vocab_size, (3, args.max_seq_len))
    with torch.no_grad():
        h = model.hidden_states(tokens).flatten(0, 1)  # more positions than one output-head slice
    assert len(h) > HEAD_CHUNK
    targets = torch.randint(0, args.vocab_size, (len(h),))
    ll, greedy = token_logprobs(model, h, targets, greedy=True)
    full = torch.log_softmax(model.output(h).float(), -1)  # the whole (positions × vocabulary) matrix at once
    torch.testing.assert_close(ll, full.gather(-1, targets[:, None])[:, 0])
    assert torch.equal(greedy, full.argmax(-1))


def test_load_state_is_a_small_object_with_its_tokenizer(smollm2_gguf):
    src = load_state(smollm2_gguf, lazy=True)  # shapes only
    assert (src.format, src.path) == ("gguf", smollm2_gguf)
    assert src.state["tok_embeddings.weight"].shape == (src.args.vocab_size, src.args.dim) == (49152, 576)
    assert src.tokenizer().vocab_size == 49152 and src.tokenizer().encode("Paris", bos=False)
