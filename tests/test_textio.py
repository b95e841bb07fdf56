"""The one text-input reader: formats, compression, line ends, bad records named by file and line.

Expected texts are the inputs written here, read back; compression by the standard library's own writers
(and zstandard's for .zst)."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from llamalab.cli import main
from llamalab.textio import expand_inputs, iter_texts
from llamalab.errors import LlamalabError

DOCS = ["first document\nwith two lines", "second: 12 🦙", "  third\r\nends"]


@pytest.mark.parametrize("opener, suffix", [(open, ""), (gzip.open, ".gz"), (lzma.open, ".xz"), (bz2.open, ".bz2"),
                                            (zstandard.open, ".zst")], ids=["plain", "gz", "xz", "bz2", "zst"])
def test_jsonl_any_compression(tmp_path, opener, suffix):
    path = tmp_path / f"docs.jsonl{suffix}"
    lines = [json.dumps(DOCS[0]), "", json.dumps({"text": DOCS[1], "id": 7}), "   ", json.dumps({"text": DOCS[2]})]
    with opener(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    assert list(iter_texts(path)) == DOCS  # JSON strings or {"text": ...}; blank lines skipped
    assert list(iter_texts(path, lines=True)) == ["first document", "with two lines", DOCS[1], "  third", "ends"]
    read = []
    assert len(list(iter_texts(path, on_read=read.append))) == 3 and sum(read) == path.stat().st_size


def test_plain_text_is_one_document_or_its_lines(tmp_path):
    path = tmp_path / "book.txt.xz"
    with lzma.open(path, "wb") as f:
        f.write("Call me Ishmael.\r\nSome years ago\rnever mind\n\nhow long".encode())
    assert list(iter_texts(path)) == ["Call me Ishmael.\nSome years ago\nnever mind\n\nhow long"]  # universal newlines
    assert list(iter_texts(path, lines=True)) == ["Call me Ishmael.", "Some years ago", "never mind", "", "how long"]


def test_tables_read_their_text_column(tmp_path):
    table = pa.table({"content": ["a b", None, "c"], "n": [1, 2, 3]})
    pq.write_table(table, tmp_path / "t.parquet")
    with pa.ipc.new_stream(tmp_path / "t.arrow", table.schema) as w:  # what datasets.save_to_disk writes
        w.write_table(table)
    for name in ("t.parquet", "t.arrow"):
        assert list(iter_texts(tmp_path / name, "content")) == ["a b", "c"]
        with pytest.raises(LlamalabError, match="no column 'text'.*content"):
            list(iter_texts(tmp_path / name))


@pytest.mark.parametrize("content, message", [
    (b'"ok"\n{"text": 3}\n', r"bad\.jsonl:2: expected a JSON string or an object with a string field 'text'"),
    (b'"ok"\n\n{"txt": "x"}\n', r"bad\.jsonl:3: expected .* field 'text'"),
    (b'"ok"\n{not json\n', r"bad\.jsonl:2: not a JSON line"),
    (b'"ok"\n"caf\xe9"\n', r"bad\.jsonl:2: not UTF-8 text"),
])
def test_bad_records_name_file_and_line(tmp_path, content, message):
    (tmp_path / "bad.jsonl").write_bytes(content)
    with pytest.raises(LlamalabError, match=message):
        list(iter_texts(tmp_path / "bad.jsonl"))


def test_bad_bytes_in_plain_text_name_the_line(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"fine\nstill fine\nbad \xff here\n")
    for lines in (False, True):
        with pytest.raises(LlamalabError, match=r"a\.txt:3: not UTF-8"):
            list(iter_texts(tmp_path / "a.txt", lines=lines))
    (tmp_path / "b.txt.gz").write_bytes(b"not gzip at all")
    with pytest.raises(LlamalabError, match="cannot read .*b.txt.gz"):
        list(iter_texts(tmp_path / "b.txt.gz"))


def test_stdin_and_directories(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO('"one"\n{"text": "two"}\n'))
    assert list(iter_texts("-", fmt=".jsonl")) == ["one", "two"]
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/b.txt", "d/sub/a.jsonl", "d/.hidden"):
        (tmp_path / name).write_text("x")
    assert [p.relative_to(tmp_path).as_posix() for p in expand_inputs([tmp_path / "d"])] == ["d/b.txt", "d/sub/a.jsonl"]
    with pytest.raises(LlamalabError, match="input not found"):
        expand_inputs([tmp_path / "missing"])


def test_tokenize_jsonl_reports_the_bad_line(tmp_path, capsys, llama_spm_gguf):
    (tmp_path / "in.jsonl").write_text('"fine"\n{"text": null}\n')
    assert main(["tokenize", "-t", str(llama_spm_gguf), "--jsonl", str(tmp_path / "in.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in.jsonl:2:" in err and "Traceback" not in err
