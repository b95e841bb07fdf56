"""Generation on the real SmolLM2-135M-Instruct checkpoint, token for token against transformers.

Reference: transformers 5.24 `LlamaForCausalLM.generate(do_sample=False)` on the same GGUF
(the `hf_smollm2` fixture, dequantized to fp32 by transformers' own GGUF reader). Stopping is off on
both sides so every comparison covers all 64 tokens.
"""

import pytest
import torch

from llamalab.chat_templates import render_for
from llamalab.cli import main as cli_main
from llamalab.device import has_cxx_compiler
from llamalab.generate import decode_text, generate, stream, stream_text
from llamalab.tokenizer import load_tokenizer

N = 64
RAW = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea,",
    "The three laws of thermodynamics are",
    "Ingredients for a simple pancake recipe:\n1.",
]
CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Describe your ship."}],
    [{"role": "user", "content": "Say hello in Chinese and Japanese."}],
    [{"role": "user", "content": "Name a color."}, {"role": "assistant", "content": "Blue."},
     {"role": "user", "content": "Another one?"}],
]


@pytest.fixture(scope="module")
def ours(smollm2_fp32):
    return smollm2_fp32


def hf_greedy(hf_smollm2, prompts: list[list[int]]) -> list[list[int]]:
    """transformers' greedy continuation of a left-padded batch, with stopping disabled."""
    model, tok = hf_smollm2
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    attention = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    # generate() fills unset values from model.generation_config, so eos must be unset there
    saved, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:
        with torch.no_grad():
            out = model.generate(ids, attention_mask=attention, do_sample=False, max_new_tokens=N, pad_token_id=0,
                                 temperature=None, top_p=None, top_k=None, repetition_penalty=None)
    finally:
        model.generation_config.eos_token_id = saved
    return out[:, T:].tolist()


@pytest.fixture(scope="module")
def raw_case(ours, hf_smollm2):
    tok = ours.tokenizer
    prompts = [tok.encode(p, bos=tok.add_bos) for p in RAW]
    assert prompts == [hf_smollm2[1](p)["input_ids"] for p in RAW]  # same input ids on both sides
    expected = hf_greedy(hf_smollm2, prompts)
    assert all(len(e) == N for e in expected)  # nothing stopped early
    return prompts, expected


def test_raw_prompts_greedy_equals_transformers(ours, raw_case):
    prompts, expected = raw_case
    assert generate(ours.model, prompts, max_new_tokens=N) == expected


def test_chat_prompts_greedy_equals_transformers(ours, hf_smollm2):
    tok = ours.tokenizer
    prompts = [tok.encode(render_for(tok, chat), bos=False) for chat in CHATS]
    hf_ids = [hf_smollm2[1].apply_chat_template(c, add_generation_prompt=True, tokenize=True) for c in CHATS]
    hf_ids = [getattr(x, "input_ids", x) for x in hf_ids]  # BatchEncoding or list, by version
    assert prompts == [list(x) for x in hf_ids]
    expected = hf_greedy(hf_smollm2, prompts)
    assert all(len(e) == N for e in expected)
    assert generate(ours.model, prompts, max_new_tokens=N) == expected


def test_cli_generate_prints_the_transformers_continuation(raw_case, hf_smollm2, smollm2_gguf, capsys):
    expected = raw_case[1][0][:24]  # a greedy run's prefix is the shorter greedy run
    assert cli_main(["generate", "--model", str(smollm2_gguf), "--prompt", RAW[0],
                     "--max-new-tokens", "24", "--ignore-eos", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out == hf_smollm2[1].decode(expected, skip_special_tokens=True)


def test_streamed_text_equals_decoded_text_with_multibyte_chars(ours):
    tok = ours.tokenizer
    prompt = tok.encode(render_for(tok, CHATS[3]))
    tokens = []  # what the stream produced, decoded in one go afterwards
    pieces = list(stream_text((tokens.append(t) or t for t in stream(ours.model, prompt, max_new_tokens=40,
                                                                     stop_ids=tok.stop_ids)),
                              tok, stop_ids=tok.stop_ids))
    text = decode_text(tokens, tok, stop_ids=tok.stop_ids)
    assert any(ord(c) > 0x2E80 for c in text)  # the answer has CJK characters (3-byte UTF-8)
    assert "".join(pieces) == text and len(pieces) > 5
    # never half a character (only the final flush may hold the bytes of one cut off by max_new_tokens)
    assert not any("\ufffd" in p for p in pieces[:-1])
    # a stop string cuts the text at the same place in both modes
    stop = [text[len(text) // 2: len(text) // 2 + 3]]
    streamed = "".join(stream_text(iter(tokens), tok, stop_ids=tok.stop_ids, stop=stop))
    assert streamed == decode_text(tokens, tok, stop_ids=tok.stop_ids, stop=stop) == text[:text.index(stop[0])]


@pytest.mark.parametrize("asset", ["smollm2", "llama-spm"])
def test_stream_text_never_splits_a_character(asset):
    # emoji (4 bytes), CJK (3), accents (2): byte-level BPE and SentencePiece byte fallback pieces
    from llamalab import assets
    tok = load_tokenizer(assets.path(asset))
    text = "Llamas 🦙 eat grass; 日本語 and café, ß ≠ ∑ 🇫🇷!"
    ids = tok.encode(text)
    pieces = list(stream_text(iter(ids), tok))
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


@pytest.mark.skipif(not has_cxx_compiler(), reason="torch.compile on CPU needs a C++ compiler")
def test_compiled_fast_path_equals_transformers_one_prompt_at_a_time(ours, raw_case, hf_smollm2):
    """The decode step through torch.compile at batch 1 (projections as fused matrix-vector products, see
    `llamalab.fast`): a raw prompt and a chat prompt give transformers' greedy tokens."""
    tok = ours.tokenizer
    chat = tok.encode(render_for(tok, CHATS[2]), bos=False)
    for prompt, expected in [(raw_case[0][1], raw_case[1][1]), (chat, hf_greedy(hf_smollm2, [chat])[0])]:
        assert list(stream(ours.model, prompt, max_new_tokens=N, compile=True)) == expected
