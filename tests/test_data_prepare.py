"""`llamalab data prepare` on real text (slices of the embedded demo corpus) with a real tokenizer.

The reference is the `sentencepiece` library itself: every shard must hold exactly
[BOS] + SentencePieceProcessor.encode(doc) + [EOS] for each document, in input order.
"""

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm

from llamalab.cli import main
from llamalab.data.corpus import demo_sources
from llamalab.data.prepare import prepare
from llamalab.data.shards import read_manifest


def _docs(name, n, skip=0):
    with open(demo_sources()[name], encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f][skip:skip + n]


@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    """A 2000-piece SentencePiece BPE model (LLaMA's settings: byte fallback, split digits), trained here."""
    d = tmp_path_factory.mktemp("sp")
    (d / "train.txt").write_text("\n".join(_docs("qa", 200) + _docs("prose", 10)), encoding="utf-8")
    spm.SentencePieceTrainer.train(input=str(d / "train.txt"), model_prefix=str(d / "sp"), vocab_size=2000,
                                   model_type="bpe", byte_fallback=True, split_digits=True, unk_id=0,
                                   bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
    return d / "sp.model"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """One source per input format, all real documents: {source: (paths, documents in order)}."""
    d = tmp_path_factory.mktemp("inputs")
    qa, prose, ref, code = _docs("qa", 40), _docs("prose", 4), _docs("reference", 60, skip=500), _docs("code", 3)
    with gzip.open(d / "qa.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(qa))
    (d / "prose" / "sub").mkdir(parents=True)
    names = ["prose/a.txt", "prose/b.txt", "prose/sub/c.txt", "prose/sub/d.txt"]  # sorted walk order
    for name, text in zip(names, prose):
        (d / name).write_text(text, encoding="utf-8")
    pq.write_table(pa.table({"text": ref[:30]}), d / "ref.parquet")
    with pa.ipc.new_stream(d / "ref.arrow", pa.schema([("text", pa.string())])) as w:  # datasets' format
        w.write_table(pa.table({"text": ref[30:]}))
    (d / "code.py").write_text(code[0], encoding="utf-8")
    with open(d / "code.txt.xz", "wb") as f:
        import lzma
        f.write(lzma.compress(code[1].encode()))
    return {"qa": ([d / "qa.jsonl.gz"], qa), "prose": ([d / "prose"], prose),
            "ref": ([d / "ref.parquet", d / "ref.arrow"], ref), "code": ([d / "code.py", d / "code.txt.xz"], code[:2])}


def _tokens(root, entry, key="shards"):
    return np.concatenate([np.zeros(0, np.uint16)] + [np.fromfile(root / s["file"], dtype=np.uint16)
                                                      for s in entry[key]])


def test_shards_equal_sentencepiece_per_document(tmp_path, sp_model, inputs):
    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    manifest = prepare({k: v[0] for k, v in inputs.items()}, sp_model, tmp_path, workers=1, progress=False,
                       log=lambda *_: None)
    assert manifest["dtype"] == "uint16" and manifest["vocab_size"] == 2000
    for name, (_, docs) in inputs.items():
        entry = manifest["sources"][name]
        expected = np.concatenate([[1] + sp.encode(d) + [2] for d in docs])
        assert entry["documents"] == len(docs) and entry["tokens"] == expected.size
        np.testing.assert_array_equal(_tokens(tmp_path, entry), expected)


def test_parallel_cli_matches_and_rerun_is_idempotent(tmp_path, sp_model, inputs, capsys):
    src = [f"--source={k}={','.join(map(str, v[0]))}" for k, v in inputs.items()]
    serial, par = tmp_path / "serial", tmp_path / "par"
    prepare({k: v[0] for k, v in inputs.items()}, sp_model, serial, workers=1, val_fraction=0.2,
            progress=False, log=lambda *_: None)
    args = ["data", "prepare", *src, "--tokenizer", str(sp_model), "--out", str(par), "--workers", "2",
            "--val-fraction", "0.2", "--shard-tokens", "3000", "--no-progress"]
    assert main(args) == 0
    a, b = read_manifest(serial)[0]["sources"], read_manifest(par)[0]["sources"]
    for name in inputs:  # same tokens, whatever the number of processes and shard size
        assert len(b[name]["shards"]) > 1 or b[name]["tokens"] <= 3000
        np.testing.assert_array_equal(_tokens(serial, a[name]), _tokens(par, b[name]))
        np.testing.assert_array_equal(_tokens(serial, a[name], "val_shards"), _tokens(par, b[name], "val_shards"))
        assert a[name]["documents"] + a[name]["val_documents"] == len(inputs[name][1])
    assert sum(s["val_documents"] for s in b.values()) > 0
    capsys.readouterr()

    stamp = {p: p.stat().st_mtime_ns for p in par.rglob("*") if p.is_file()}
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == len(inputs)
    assert {p: p.stat().st_mtime_ns for p in par.rglob("*") if p.is_file()} == stamp  # nothing rewritten

    qa_path = inputs["qa"][0][0]
    changed = tmp_path / "qa2.jsonl"
    changed.write_text(json.dumps({"text": "A brand new document."}) + "\n")
    args2 = [a.replace(f"qa={qa_path}", f"qa={qa_path},{changed}") for a in args]
    assert main(args2) == 0
    out = capsys.readouterr().out
    assert out.count("up to date") == len(inputs) - 1 and "qa: " in out
    m = read_manifest(par)[0]["sources"]["qa"]
    assert m["documents"] + m["val_documents"] == len(inputs["qa"][1]) + 1


@pytest.mark.parametrize("case, message", [
    ("missing", "input not found"),
    ("empty_dir", "no input files"),
    ("empty_file", "is empty"),
    ("binary", "not UTF-8"),
    ("no_field", "string field 'text'"),
    ("no_tokenizer", "tokenizer not found"),
    ("bad_spec", "NAME=PATH"),
    ("other_tokenizer", "another tokenizer"),
])
def test_bad_inputs_fail_cleanly_and_keep_existing_output(tmp_path, sp_model, llama_spm_gguf, capsys, case,
                                                          message):
    out = tmp_path / "out"
    good = tmp_path / "good.txt"
    good.write_text("Call me Ishmael.")
    assert main(["data", "prepare", "--source", f"a={good}", "--tokenizer", str(sp_model), "--out", str(out),
                 "--no-progress"]) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    bad = tmp_path / "bad"
    tokenizer = sp_model
    if case == "empty_dir":
        bad.mkdir()
    elif case == "empty_file":
        bad.write_text("")
    elif case == "binary":
        bad = tmp_path / "bad.txt"
        bad.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3")
    elif case == "no_field":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"content": "hello"}\n')
    elif case == "no_tokenizer":
        tokenizer = tmp_path / "nope.model"
    elif case == "other_tokenizer":
        bad = good
        tokenizer = llama_spm_gguf
    spec = "a" if case == "bad_spec" else f"a={bad}"
    capsys.readouterr()
    code = main(["data", "prepare", "--source", spec, "--tokenizer", str(tokenizer), "--out", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("llamalab data: error:") and err.count("\n") == 1
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing overwritten
    assert not [p for p in out.iterdir() if p.name.startswith(".")]               # no temp leftovers


def test_llama_vocabulary_matches_llama_cpp_test_vectors(tmp_path, llama_spm_gguf):
    # The real LLaMA 32K vocabulary (from its GGUF) on llama.cpp's own tokenizer test texts: the shard
    # must be [BOS] + ids + [EOS] per text, ids taken from llama.cpp's `.out` reference file.
    texts = llama_spm_gguf.with_name(llama_spm_gguf.name + ".inp").read_text(encoding="utf-8")
    texts = texts.split("\n__ggml_vocab_test__\n")[:-1]
    ids = llama_spm_gguf.with_name(llama_spm_gguf.name + ".out").read_text().splitlines()
    pairs = [(t, [int(i) for i in line.split()]) for t, line in zip(texts, ids, strict=True) if t]
    with open(tmp_path / "docs.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": t}) + "\n" for t, _ in pairs)
    manifest = prepare({"vectors": [tmp_path / "docs.jsonl"]}, llama_spm_gguf, tmp_path / "out", workers=1,
                       progress=False, log=lambda *_: None)
    assert manifest["vocab_size"] == 32000 and manifest["dtype"] == "uint16"
    assert manifest["tokenizer"]["add_bos"] is True and manifest["sources"]["vectors"]["documents"] == len(pairs)
    expected = np.concatenate([[1] + i + [2] for _, i in pairs])
    np.testing.assert_array_equal(_tokens(tmp_path / "out", manifest["sources"]["vectors"]), expected)
