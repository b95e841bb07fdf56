"""Instruction data: the four formats, loss masks (only what the assistant writes is trained — checked by
decoding the target tokens and by the gradient at every other position being exactly zero), the
length-grouped loader, and bad records named by file and line.

Expected target texts are the assistant contents of the records themselves followed by the template's
end-of-turn text (ChatML `<|im_end|>\\n`, Alpaca's EOS), written out here by hand, not produced by our code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from llamalab.errors import LlamalabError
from llamalab.finetune.data import InstructionLoader, collate, encode_examples, held_out_batches, split
from llamalab.finetune.records import load_examples
from llamalab.train.loop import IGNORE_INDEX, next_token_loss
from llamalab.tokenizer import load_tokenizer

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Reverse garden."},
                {"role": "assistant", "content": "nedrag"}, {"role": "user", "content": "And candle?"},
                {"role": "assistant", "content": "eldnac, of course"}]


@pytest.fixture(scope="module")
def tok(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)  # real byte-level BPE vocabulary and ChatML template


def write(path, records, jsonl=True):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) if jsonl else json.dumps(records))
    return path


def target_spans(tok, ex):
    """The decoded runs of target tokens, in order."""
    t = ex.targets.astype(int)
    edges = np.nonzero(np.diff(np.concatenate([[0], t, [0]])))[0]
    return [tok.decode(ex.ids[a:b].tolist()) + "|" + tok.id_to_piece(int(ex.ids[b - 1])) for a, b in zip(edges[::2], edges[1::2])]


def test_the_four_formats_give_the_same_conversation(tmp_path):
    files = {
        "alpaca": write(tmp_path / "a.json", [{"instruction": "Reverse garden.", "input": "", "output": "nedrag"}], jsonl=False),
        "sharegpt": write(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "Reverse garden."},
                                                                   {"from": "gpt", "value": "nedrag"}]}]),
        "messages": write(tmp_path / "m.jsonl", [{"messages": [{"role": "user", "content": "Reverse garden."},
                                                               {"role": "assistant", "content": "nedrag"}]}]),
    }
    want = [{"role": "user", "content": "Reverse garden."}, {"role": "assistant", "content": "nedrag"}]
    for fmt, path in files.items():
        detected, examples = load_examples(path)
        assert detected == fmt and examples[0][1] == {"messages": want}
        assert load_examples(path, fmt)[1] == examples
    _, ex = load_examples(write(tmp_path / "c.jsonl", [{"prompt": "2+2=", "completion": "4"}]))
    assert ex[0][1] == {"prompt": "2+2=", "completion": "4"}
    # Alpaca's input joins the instruction, except for the alpaca template (its own "### Input:" section)
    rec = [{"instruction": "Translate.", "input": "chat", "output": "cat"}]
    assert load_examples(write(tmp_path / "i.json", rec))[1][0][1]["messages"][0]["content"] == "Translate.\n\nchat"
    assert load_examples(tmp_path / "i.json", alpaca_input=True)[1][0][1]["messages"][0]["input"] == "chat"


def test_multi_turn_targets_are_exactly_the_assistant_turns(tmp_path, tok):
    _, examples = load_examples(write(tmp_path / "m.jsonl", [{"messages": CONVERSATION}]))
    [ex], counts = encode_examples(examples, tok, None, 512)
    assert counts == {"examples": 1, "used": 1, "truncated": 0, "skipped": 0}
    # SmolLM2's template: each answer is followed by <|im_end|> and a newline; nothing else is a target
    assert target_spans(tok, ex) == ["nedrag\n|Ċ", "eldnac, of course\n|Ċ"]
    assert "<|im_end|>" in [tok.id_to_piece(int(i)) for i in ex.ids[ex.targets]]
    # the whole sequence is what chat would tokenize for this conversation
    from llamalab.chat_templates import render_for
    assert ex.ids.tolist() == tok.encode(render_for(tok, CONVERSATION, add_generation_prompt=False))


@pytest.mark.parametrize("template,end", [("alpaca", "<|im_end|>"), ("chatml", "Ċ"), ("llama-2", "<|im_end|>")])
def test_named_templates_mask_the_prompt(tmp_path, tok, template, end):
    rec = [{"instruction": "Reverse bridge.", "input": "", "output": "egdirb"}]
    _, examples = load_examples(write(tmp_path / "a.jsonl", rec), alpaca_input=template == "alpaca")
    [ex], _ = encode_examples(examples, tok, template, 512)
    [span] = target_spans(tok, ex)
    assert span.strip().startswith("egdirb") and span.endswith("|" + end) and "Reverse" not in span


def test_completion_records_train_on_the_completion_and_eos(tmp_path, tok):
    _, examples = load_examples(write(tmp_path / "c.jsonl", [{"prompt": "The capital of France is", "completion": " Paris."}]))
    [ex], _ = encode_examples(examples, tok, None, 512)
    assert target_spans(tok, ex) == [" Paris.|<|im_end|>"]  # SmolLM2's EOS is <|im_end|>


def test_gradients_from_prompt_tokens_are_exactly_zero(tmp_path, tok):
    """d loss / d logits is exactly 0 at every position whose next token is a system, user or template token,
    and non-zero at every position that predicts an answer token (single- and multi-turn)."""
    records = [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}]
    _, examples = load_examples(write(tmp_path / "m.jsonl", records))
    encoded, _ = encode_examples(examples, tok, None, 512)
    x, y = collate(encoded, pad_id=0, seq_len=512)
    logits = torch.randn(*x.shape, tok.vocab_size, requires_grad=True)
    next_token_loss(logits, y, reduction="sum").backward()
    per_position = logits.grad.abs().sum(-1)
    for row, ex in enumerate(encoded):
        is_target = torch.zeros(x.shape[1], dtype=torch.bool)
        is_target[:len(ex) - 1] = torch.from_numpy(ex.targets[1:])
        assert (per_position[row][~is_target] == 0).all()
        assert (per_position[row][is_target] > 0).all()
        assert is_target.sum() > 0 and (y[row][~is_target] == IGNORE_INDEX).all()


def test_truncation_and_skips_are_counted(tmp_path, tok):
    long_answer = " ".join(["word"] * 200)
    records = [{"messages": CONVERSATION[1:3]},  # fits
               {"messages": [{"role": "user", "content": "Say it."}, {"role": "assistant", "content": long_answer}]},
               {"messages": [{"role": "user", "content": " ".join(["long"] * 300)}, {"role": "assistant", "content": "ok"}]}]
    _, examples = load_examples(write(tmp_path / "m.jsonl", records))
    encoded, counts = encode_examples(examples, tok, None, 64)
    assert counts == {"examples": 3, "used": 2, "truncated": 1, "skipped": 1}
    assert max(len(e) for e in encoded) == 64


def test_loader_is_length_grouped_seeded_and_resumable(tmp_path, tok):
    from llamalab.finetune.data import Example

    rng = np.random.default_rng(0)
    lengths = rng.choice(np.arange(5, 250), 100, replace=False)  # distinct: a row's length names its example
    examples = [Example(np.arange(n, dtype=np.int32), np.ones(n, dtype=bool)) for n in lengths]
    a = InstructionLoader(examples, batch_size=4, seq_len=256, seed=1, pad_id=0)
    batches = [next(a) for _ in range(40)]  # past one epoch (25 batches)
    b = InstructionLoader(examples, batch_size=4, seq_len=256, seed=1, pad_id=0)
    for _ in range(13):
        next(b)
    c = InstructionLoader(examples, batch_size=4, seq_len=256, seed=1, pad_id=0)
    c.load_state_dict(b.state_dict())
    for x, y in batches[13:]:
        x2, y2 = next(c)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    # grouping by length: far less padding than random batches of the same examples
    real = sum(int((y != IGNORE_INDEX).sum()) + x.shape[0] for x, y in batches[:25])
    padded = sum(x.numel() for x, _ in batches[:25])
    assert padded / real < 1.25
    # epochs are permutations: the first 128 rows (two groups of 16 batches) are epoch 1 and 28 rows of epoch 2
    seen = np.bincount([int((y[i] != IGNORE_INDEX).sum()) + 1 for x, y in batches[:32] for i in range(4)])
    assert (seen[lengths] >= 1).all() and (seen[lengths] <= 2).all() and seen.sum() == 128
    # two ranks split every global batch
    r0 = InstructionLoader(examples, batch_size=2, seq_len=256, seed=1, pad_id=0, rank=0, world_size=2)
    r1 = InstructionLoader(examples, batch_size=2, seq_len=256, seed=1, pad_id=0, rank=1, world_size=2)
    for x, y in batches[:5]:
        (_, y0), (_, y1) = next(r0), next(r1)
        pad = lambda t: torch.nn.functional.pad(t, (0, y.shape[1] - t.shape[1]), value=IGNORE_INDEX)  # noqa: E731
        assert torch.equal(torch.cat([pad(y0), pad(y1)]), y)


def test_held_out_batches_cover_each_example_once_on_every_rank_count(tok):
    from llamalab.finetune.data import Example

    examples = [Example(np.arange(n, dtype=np.int32), np.ones(n, dtype=bool)) for n in range(3, 14)]
    for world in (1, 2, 3):
        parts = [held_out_batches(examples, batch_size=2, seq_len=64, pad_id=0, rank=r, world_size=world)
                 for r in range(world)]
        assert len({len(p) for p in parts}) == 1  # the same number of forward passes on every rank (FSDP2)
        counted = sorted(int(n) + 1 for p in parts for _, y in p for n in (y != IGNORE_INDEX).sum(1) if n)
        assert counted == list(range(3, 14))
    train, val = split(list(range(100)), 0.05, seed=3)
    assert len(val) == 5 and sorted(train + val) == list(range(100)) and split(list(range(100)), 0.05, 3)[1] == val


@pytest.mark.parametrize("content,match", [
    ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', r"m\.jsonl:2: not valid JSON"),
    ('{"instruction": "a"}\n', r"m\.jsonl:1: alpaca record needs a string 'output' \(missing\)"),
    ('{"messages": [{"role": "user", "content": "hi"}]}\n', r"m\.jsonl:1: this conversation has no assistant turn"),
    ('{"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]}\n', r"turn 1 has from 'robot'"),
    ('{"text": "hello"}\n', r"m\.jsonl:1: cannot tell the format of this record \(\['text'\]\)"),
    ('[{"instruction": "a", "output": "b"}, 3]', r"m\.jsonl\[1\]: a record must be a JSON object"),
    ('', r"no records"),
])
def test_bad_records_name_file_and_line(tmp_path, content, match):
    (tmp_path / "m.jsonl").write_text(content)
    with pytest.raises(LlamalabError, match=match):
        load_examples(tmp_path / "m.jsonl")
