"""Training LLaMA's tokenizer, and the `tokenize` / `tokenizer` CLI.

References: the `sentencepiece` library itself (loading the written tokenizer.model), `tokenizers` and
transformers loading the written tokenizer.json, and the texts themselves (exact round trips).
Training data: real text — HellaSwag contexts (benchmark asset) and Python standard-library sources.
"""

from __future__ import annotations

import gzip
import json
import sysconfig
from pathlib import Path

import pytest

from llamalab.cli import main
from llamalab.tokenizer import load_tokenizer

VOCAB = 1500
STDLIB = ["argparse.py", "textwrap.py", "difflib.py", "json/decoder.py"]


def hellaswag_texts(benchmarks_dir) -> list[str]:
    import pyarrow as pa
    import pyarrow.ipc as ipc

    f = benchmarks_dir / "hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow"
    rows = ipc.open_stream(pa.memory_map(str(f))).read_all().to_pylist()
    return [r["ctx"] + " " + r["endings"][int(r["label"])] for r in rows]


@pytest.fixture(scope="module")
def corpus(benchmarks_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    texts = hellaswag_texts(benchmarks_dir)
    (d / "hellaswag.txt.gz").write_bytes(gzip.compress("\n".join(texts[:6000]).encode()))
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    (d / "code.txt").write_text("".join((stdlib / n).read_text(encoding="utf-8") for n in STDLIB), encoding="utf-8")
    held_out = texts[6000:6300]
    with gzip.open(benchmarks_dir / "human_eval/HumanEval.jsonl.gz", "rt", encoding="utf-8") as f:
        held_out += [json.loads(line)["prompt"] for _, line in zip(range(40), f)]
    return d, held_out


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    d, _ = corpus
    out = tmp_path_factory.mktemp("tok")
    rc = main(["tokenizer", "train", "--input", str(d / "hellaswag.txt.gz"), str(d / "code.txt"),
               "--vocab-size", str(VOCAB), "--out", str(out)])
    assert rc == 0
    return out


# Characters that never occur in the training text: they must come back through byte fallback.
UNSEEN = ["日本語のテキスト", "🦙👨‍👩‍👧‍👦🇫🇷", "Привет мир", "مرحبا", "\x00\x01\x7f control", "\U0010ffff \ue000",
          "ﬁ ligature, ＡＢＣ full width, Å vs Å", "  many   spaces\t\ttabs\n\n\nnewlines  ", " ", "", "\n", "  "]
NUMBERS = ["0", "42", "1234567890", "3.14159", "2024-11-24", "1,000,000 people", "x=12345;y=67890", "v1.2.3",
           "phone 555 0100", "٣٤٥ Arabic-Indic", "１２３ full width"]


def test_trained_tokenizer_files_and_settings(trained):
    from sentencepiece import sentencepiece_model_pb2 as pb

    assert {p.name for p in trained.iterdir()} >= {"tokenizer.model", "tokenizer.json", "tokenizer_config.json"}
    m = pb.ModelProto()
    m.ParseFromString((trained / "tokenizer.model").read_bytes())
    ts, ns = m.trainer_spec, m.normalizer_spec
    assert (ts.model_type, ts.vocab_size, ts.split_digits, ts.byte_fallback) == (pb.TrainerSpec.BPE, VOCAB, True, True)
    assert (ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id) == (0, 1, 2, -1)
    assert (ns.name, ns.add_dummy_prefix, ns.remove_extra_whitespaces) == ("identity", True, False)
    assert ts.allow_whitespace_only_pieces
    tok = load_tokenizer(trained / "tokenizer.model")
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.unk_id, tok.pad_id, tok.add_bos) == (VOCAB, 1, 2, 0, None, True)
    assert sum(tok.id_to_piece(i).startswith("<0x") for i in range(VOCAB)) == 256


def test_digits_are_single_tokens(trained, corpus):
    tok = load_tokenizer(trained / "tokenizer.model")
    # no piece of the vocabulary joins a digit to anything
    for i in range(tok.vocab_size):
        piece = tok.id_to_piece(i)
        if any(c.isdigit() for c in piece) and not piece.startswith("<0x"):
            assert len(piece) == 1, piece
    for text in NUMBERS + corpus[1][:50]:
        pieces = [tok.id_to_piece(i) for i in tok.encode(text)]
        assert [p for p in pieces if any(c.isdigit() for c in p) and not p.startswith("<0x")] == \
               [c for c in text if c.isdigit() and c in "".join(pieces)], text  # one piece per digit
        assert sum(p in "0123456789" for p in pieces) == sum(c in "0123456789" for c in text)


def test_unseen_utf8_round_trips_through_byte_fallback(trained):
    tok = load_tokenizer(trained / "tokenizer.model")
    for text in UNSEEN + NUMBERS:
        ids = tok.encode(text)
        assert tok.unk_id not in ids
        assert tok.decode(ids) == text, repr(text)
    assert any(tok.id_to_piece(i).startswith("<0x") for i in tok.encode("🦙"))


def test_tokenizer_json_encodes_like_the_model(trained, corpus):
    """tokenizer.json, read by `tokenizers` and by transformers, against tokenizer.model read by sentencepiece."""
    import sentencepiece as spm
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    sp = spm.SentencePieceProcessor(model_file=str(trained / "tokenizer.model"))
    tj = Tokenizer.from_file(str(trained / "tokenizer.json"))
    hf = AutoTokenizer.from_pretrained(trained)
    texts = corpus[1] + UNSEEN + NUMBERS
    expected = sp.encode(texts)
    for text, ids in zip(texts, expected):
        assert tj.encode(text, add_special_tokens=False).ids == ids, repr(text)
        assert hf(text).input_ids == [1] + ids
        assert tj.decode(ids) == sp.decode(ids) == text
    ours = load_tokenizer(trained)  # the directory: tokenizer.json wins
    assert ours.kind == "hf" and ours.encode_batch(texts) == expected
    assert (ours.bos_id, ours.eos_id, ours.add_bos) == (1, 2, True)


@pytest.mark.parametrize("file", ["tokenizer.model", "tokenizer.json"])
def test_stream_decoder_on_trained_tokenizer(trained, corpus, file):
    tok = load_tokenizer(trained / file)
    for text in UNSEEN + corpus[1][:20]:
        ids = tok.encode(text, bos=True)
        dec = tok.stream_decoder()
        assert "".join([dec.push(i) for i in ids] + [dec.flush()]) == tok.decode(ids) == text


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def test_cli_tokenize(trained, capsys, tmp_path, monkeypatch):
    import io

    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(trained / "tokenizer.model"))
    text = "Hello world, it is 2024!"
    assert main(["tokenize", "--tokenizer", str(trained), "--ids", text]) == 0
    assert capsys.readouterr().out == " ".join(map(str, sp.encode(text))) + "\n"
    assert main(["tokenize", "--tokenizer", str(trained / "tokenizer.model"), "--ids", "--bos", "--eos", text]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in [1] + sp.encode(text) + [2]]
    assert main(["tokenize", "-t", str(trained / "tokenizer.json"), text]) == 0
    assert capsys.readouterr().out.split() == sp.encode(text, out_type=str)
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"from stdin\n")))  # bytes underneath, as a pipe
    assert main(["tokenize", "-t", str(trained), "--ids", "-"]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in sp.encode("from stdin\n")]
    texts = ["first text", "second: 12 🦙", "", "  x"]
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps(t) for t in texts[:3]) + "\n" + json.dumps({"text": texts[3]}))
    assert main(["tokenize", "-t", str(trained), "--jsonl", str(tmp_path / "in.jsonl")]) == 0
    assert capsys.readouterr().out == "".join(" ".join(map(str, ids)) + "\n" for ids in sp.encode(texts))


def test_cli_tokenizer_info_and_export(trained, capsys, tmp_path):
    assert main(["tokenizer", "info", str(trained / "tokenizer.model")]) == 0
    out = capsys.readouterr().out
    assert f"vocab_size  {VOCAB}" in out and "bos_id      1 '<s>'" in out
    assert main(["tokenizer", "export", str(trained / "tokenizer.model"), "--out", str(tmp_path / "x")]) == 0
    assert load_tokenizer(tmp_path / "x").encode("abc 123") == load_tokenizer(trained).encode("abc 123")


@pytest.mark.parametrize("argv, message", [
    (["tokenize", "--tokenizer", "{tmp}/nope.model", "x"], "does not exist"),
    (["tokenize", "--tokenizer", "{tmp}/garbage.model", "x"], "not a valid SentencePiece model"),
    (["tokenize", "--tokenizer", "{tmp}/garbage.gguf", "x"], "not a readable GGUF file"),
    (["tokenize", "--tokenizer", "{tmp}/garbage.json", "x"], "not a valid tokenizer.json"),
    (["tokenize", "--tokenizer", "{tmp}/emptydir", "x"], "no tokenizer.json, tokenizer.model"),
    (["tokenize", "--tokenizer", "{tmp}/small.txt"], "exactly one of TEXT"),
    (["tokenizer", "train", "--input", "{tmp}/small.txt", "--vocab-size", "100", "--out", "{tmp}/o"], "too small"),
    (["tokenizer", "train", "--input", "{tmp}/small.txt", "--vocab-size", "5000", "--out", "{tmp}/o"],
     "Vocabulary size too high"),
    (["tokenizer", "train", "--input", "{tmp}/empty.txt", "--vocab-size", "1000", "--out", "{tmp}/o"], "no text"),
    (["tokenizer", "train", "--input", "{tmp}/missing.txt", "--vocab-size", "1000", "--out", "{tmp}/o"],
     "input file not found"),
])
def test_cli_bad_input(argv, message, tmp_path, capsys):
    (tmp_path / "garbage.model").write_bytes(b"\x0a\xff\xff not a model" * 10)
    (tmp_path / "garbage.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    (tmp_path / "garbage.json").write_text('{"model": {"type": "BPE", "vocab": 3}}')
    (tmp_path / "small.txt").write_text("a tiny corpus with few characters\n" * 20)
    (tmp_path / "empty.txt").write_text("\n\n   \n")
    (tmp_path / "emptydir").mkdir()
    rc = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "o" / "tokenizer.model").exists()  # nothing half-written
