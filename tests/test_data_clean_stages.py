"""`data clean` stages on hand-made inputs whose right answers are known by construction (each test says
how), plus MinHash against datasketch, the maintained reference."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import pytest
import zstandard
from datatrove.data import Document

from llamalab.data.clean import dedup, language, quality
from llamalab.data.clean.decontaminate import build_index, contamination, prefilter
from llamalab.data.clean.heuristics import c4_filter
from llamalab.data.clean.lines import normalize_text
from llamalab.data.clean.read import InputReader, plan_units
from llamalab.data.clean.sources.arxiv import clean_latex
from llamalab.data.clean.sources.books import strip_gutenberg
from llamalab.data.clean.sources.github import GitHub
from llamalab.data.clean.sources.stackexchange import qa_text
from llamalab.data.clean.sources.wikipedia import strip_wikitext
from llamalab.errors import LlamalabError

MIT = """MIT License\n\nCopyright (c) 2020 Someone\n\nPermission is hereby granted, free of charge, to any person
obtaining a copy of this software and associated documentation files (the "Software"), to deal in the
Software without restriction, including without limitation the rights to use, copy, modify, merge."""
GPL = """                    GNU GENERAL PUBLIC LICENSE\n                       Version 3, 29 June 2007\n
 Copyright (C) 2007 Free Software Foundation, Inc. <https://fsf.org/>\n Everyone is permitted to copy and
 distribute verbatim copies of this license document, but changing it is not allowed."""
CODE = "def area(width, height):\n    \"\"\"Area of a rectangle.\"\"\"\n    return width * height\n"


def doc(text, **metadata):
    return Document(text=text, id="t", metadata={"fields": {}, **metadata})


def read_all(paths, text_key="text", **kw):
    reader = InputReader(plan_units([str(p) for p in paths], **kw), text_key)
    return list(reader.run()), reader


# ------------------------------------------------------------------------------------------- reading
def test_reader_counts_bad_records_and_keeps_reading(tmp_path):
    good = [{"text": f"document {i}", "id": i, "meta": {"k": i}} for i in range(4)]
    lines = [json.dumps(good[0]).encode(), b"{not json", json.dumps(good[1]).encode(), b'{"text": "caf\xe9"}',
             b'["a list"]', b'{"body": "no text field"}', json.dumps(good[2]).encode(), b"",
             json.dumps(good[3]).encode()]
    (tmp_path / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    docs, reader = read_all([tmp_path / "a.jsonl"])
    assert [d.text for d in docs] == [g["text"] for g in good]  # nothing after a bad line is lost
    assert docs[1].metadata["fields"] == {"text": None, "id": 1, "meta": {"k": 1}}  # every field kept
    assert [(b["line"], b["error"][:8]) for b in reader.bad] == [(2, "not JSON"), (4, "not JSON"),
                                                                 (5, "not a JS"), (6, "not a JS")]
    assert all(b["file"].endswith("a.jsonl") for b in reader.bad)


def test_reader_formats_and_byte_ranges(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"text": f"line {i} " + "x" * (i % 7), "n": i} for i in range(300)]
    blob = "".join(json.dumps(r) + "\n" for r in records).encode()
    (tmp_path / "plain.jsonl").write_bytes(blob)
    (tmp_path / "gz.jsonl.gz").write_bytes(gzip.compress(blob))
    (tmp_path / "z.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(blob))
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "t.parquet")
    for name in ("plain.jsonl", "gz.jsonl.gz", "z.jsonl.zst", "t.parquet"):
        docs, reader = read_all([tmp_path / name])
        assert [d.text for d in docs] == [r["text"] for r in records] and not reader.bad, name
    # a large uncompressed file read as 7-byte... ranges: every record exactly once, line numbers right
    docs, _ = read_all([tmp_path / "plain.jsonl"], split_bytes=1000)
    assert len(plan_units([str(tmp_path / "plain.jsonl")], split_bytes=1000)) > 5
    assert [d.text for d in docs] == [r["text"] for r in records]
    assert [d.metadata["line"] for d in docs] == list(range(1, 301))


def test_reader_text_directory(tmp_path):
    (tmp_path / "docs" / "sub").mkdir(parents=True)
    (tmp_path / "docs" / "a.txt").write_text("alpha")
    (tmp_path / "docs" / "sub" / "b.md").write_text("beta")
    (tmp_path / "docs" / "img.png").write_bytes(b"\x89PNG\0\0binary")
    (tmp_path / "docs" / "latin1.txt").write_bytes(b"ok\nna\xefve")
    docs, reader = read_all([tmp_path / "docs"])
    assert [(d.text, d.metadata["fields"]["path"]) for d in docs] == [("alpha", "a.txt"), ("beta", "sub/b.md")]
    assert sorted((b["file"].rsplit("/", 1)[1], b["line"]) for b in reader.bad) == [("img.png", 0),
                                                                                    ("latin1.txt", 2)]


def test_normalize():
    assert normalize_text("Cafe\u0301\r\n\r\n\r\n\r\nx  \t y \x07\n\n") == "Café\n\nx y"
    assert normalize_text("def f():\r\n    return  1   \n", code=True) == "def f():\n    return  1"


# ------------------------------------------------------------------------------------------- MinHash
def _text_pair(rng, jaccard_words: int, n: int = 400):
    """Two texts of n distinct made-up words sharing their first `jaccard_words` words."""
    vocab = [_word(i) for i in rng.sample(range(26**4), 2 * n)]  # letters only: digits normalize to 0
    a = vocab[:n]
    b = a[:jaccard_words] + vocab[n:2 * n - jaccard_words]
    return " ".join(a), " ".join(b)


def _word(i: int) -> str:
    return "".join(chr(97 + (i // 26**k) % 26) for k in range(4))


def _true_jaccard(a: str, b: str, n=dedup.SHINGLE) -> float:
    def grams(t):
        w = t.split()
        return {tuple(w[i:i + n]) for i in range(len(w) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_lsh_parameters_match_datasketch():
    from datasketch.lsh import _optimal_param  # the reference's own choice of bands × rows

    for threshold in (0.5, 0.8, 0.9):
        assert dedup.lsh_params(threshold, 128) == _optimal_param(threshold, 128, 0.5, 0.5)


def test_minhash_estimates_jaccard():
    rng = random.Random(0)
    a_, b_ = (np.random.RandomState(7).randint(1, 2**63, size=256, dtype=np.uint64) | np.uint64(1),
              np.random.RandomState(8).randint(0, 2**63, size=256, dtype=np.uint64))
    for shared in (100, 250, 380, 400):
        a, b = _text_pair(rng, shared)
        sa, sb = (dedup.signature(dedup.shingles(t), a_, b_) for t in (a, b))
        assert abs((sa == sb).mean() - _true_jaccard(a, b)) < 0.08


def near_dup_corpus(rng):
    """Documents in pairs at known Jaccard (0.92 and 0.85 above 0.8, 0.62 and 0.4 below), plus singletons."""
    docs, expected_removed = [], set()
    for shared in (386, 376, 310, 230):   # word overlap → Jaccard of 5-gram shingle sets
        a, b = _text_pair(rng, shared)
        j = _true_jaccard(a, b)
        docs += [{"text": a, "pair": shared, "j": round(j, 3)}, {"text": b, "pair": shared, "j": round(j, 3)}]
        if j >= 0.8:
            expected_removed.add(b)
    docs += [{"text": _text_pair(rng, 0)[0], "pair": None} for _ in range(4)]
    return docs, expected_removed


def test_near_dup_pairs_are_on_the_intended_side():
    docs, removed = near_dup_corpus(random.Random(1))
    js = sorted({d["j"] for d in docs if d["pair"]}, reverse=True)
    assert js[0] > 0.9 and 0.8 < js[1] < 0.9 and 0.6 < js[2] < 0.8 and js[3] < 0.5
    assert len(removed) == 2


def test_datasketch_finds_the_same_near_duplicates():
    from datasketch import MinHash, MinHashLSH

    docs, removed = near_dup_corpus(random.Random(1))
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    found = set()
    for i, d in enumerate(docs):
        w = d["text"].split()
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(w[k:k + 5]).encode() for k in range(len(w) - 4)])
        if lsh.query(m):
            found.add(d["text"])
        lsh.insert(str(i), m)
    assert found == removed


# ------------------------------------------------------------------------------------------- language
SENTENCES = {
    "en": "The committee will meet again next week to discuss the budget for the new library.",
    "fr": "Le comité se réunira de nouveau la semaine prochaine pour discuter du budget de la bibliothèque.",
    "de": "Der Ausschuss wird sich nächste Woche erneut treffen, um das Budget der neuen Bibliothek zu besprechen.",
    "es": "El comité se reunirá de nuevo la próxima semana para discutir el presupuesto de la nueva biblioteca.",
    "it": "Il comitato si riunirà di nuovo la prossima settimana per discutere il bilancio della nuova biblioteca.",
    "ru": "Комитет снова соберётся на следующей неделе, чтобы обсудить бюджет новой библиотеки.",
    "pl": "Komitet spotka się ponownie w przyszłym tygodniu, aby omówić budżet nowej biblioteki.",
    "ja": "委員会は来週再び集まり、新しい図書館の予算について話し合います。",
}


def test_language_id_on_several_languages():
    for lang, text in SENTENCES.items():
        assert language.detect(text)[0] == lang
    english = language.LanguageFilter()
    wiki = language.LanguageFilter(language.WIKIPEDIA_20)
    assert [english.filter(doc(t)) is True for t in SENTENCES.values()] == [True] + [False] * 7
    assert [wiki.filter(doc(t)) is True for t in SENTENCES.values()] == [True] * 7 + [False]  # no ja in the 20


# ------------------------------------------------------------------------------------------- heuristics
def test_c4_rules_on_a_navigation_menu_page():
    page = ("Home\nAbout us\nProducts\nContact\nLogin | Register\n"
            "Our bakery opened in 1921 and has served the town ever since. Every loaf is shaped by hand. "
            "We bake rye, spelt and wheat breads each morning. The shop opens at seven. Orders are welcome.\n"
            "This site uses cookies to improve your experience.\n© 2024 Example Bakery")
    f = c4_filter()
    d = doc(page)
    assert f.filter(d) is True
    assert d.text.startswith("Our bakery opened in 1921") and "\n" not in d.text  # menu, cookie, footer gone
    assert f.filter(doc("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 5)) == (False, "lorem_ipsum")
    assert f.filter(doc("One sentence here. Two is here. Three ok. Four ok. Five {ok}.")) == (False, "curly_bracket")


# ------------------------------------------------------------------------------------------- quality
def test_quality_classifier_train_save_load(tmp_path):
    rng = random.Random(0)
    topics = ["river", "bridge", "harvest", "library", "engine", "orchestra", "glacier", "market"]
    good = [f"The {t} was described in detail by the survey of {1800 + i}, which noted how its history "
            f"shaped the region and how scholars later revised those accounts." for i, t in
            enumerate(rng.choices(topics, k=120))]
    spam = [f"BUY NOW!!! cheap {t} deals click here >>> free free free {i} winner limited offer $$$ best price"
            for i, t in enumerate(rng.choices(topics, k=120))]
    result = quality.train(good, spam)
    assert result["held_out_accuracy"] == 1.0  # the two kinds share no wording but the topic words
    path = tmp_path / "q.npz"
    quality.save(path, result)
    weights, bias, meta = quality.load(path)
    s = quality.scores([good[0], spam[0]], weights, bias)
    assert s[0] > 0.9 and s[1] < 0.1
    f = quality.QualityFilter(str(path))
    assert [r is True for r in f.filter_batch([doc(good[1]), doc(spam[1])])] == [True, False]
    (tmp_path / "bad.npz").write_bytes(b"not a model")
    with pytest.raises(LlamalabError, match="not a quality model"):
        quality.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "pickled.npz", weights=np.array([object()], dtype=object))  # never unpickled
    with pytest.raises(LlamalabError):
        quality.load(tmp_path / "pickled.npz")


# ------------------------------------------------------------------------------------------- decontamination
def test_decontamination_finds_benchmark_text(benchmarks_dir):
    from llamalab.eval.tasks import TASKS

    hashes, masks, names = build_index(benchmarks_dir, ["arc_easy", "piqa"])
    question = TASKS["arc_easy"].docs(benchmarks_dir)[5]["question"]
    assert len(question.split()) >= 13
    leaked = "Some study notes.\n" + question.upper() + "\nMore notes follow here."  # case and layout ignored
    assert contamination(leaked, hashes, masks) == 1 << names.index("arc_easy")
    assert contamination(leaked, hashes, masks, prefilter(hashes)) == 1 << names.index("arc_easy")
    assert contamination(" ".join(question.split()[:12]), hashes, masks) == 0  # 12 words: no 13-gram
    assert contamination(SENTENCES["en"] * 3, hashes, masks) == 0


# ------------------------------------------------------------------------------------------- sources
def test_github_keeps_mit_drops_gpl(tmp_path):
    for repo, lic_name, lic in (("mit_repo", "LICENSE", MIT), ("gpl_repo", "COPYING", GPL)):
        (tmp_path / repo / "src").mkdir(parents=True)
        (tmp_path / repo / lic_name).write_text(lic)
        (tmp_path / repo / "src" / "area.py").write_text("# Copyright 2020 Someone\n# SPDX-License-Identifier: X\n"
                                                         + CODE)
    (tmp_path / "mit_repo" / "src" / "table.py").write_text("DATA = [" + "1, " * 600 + "]\n")
    docs, _ = read_all([tmp_path])
    f = GitHub()
    result = {d.metadata["fields"]["path"]: f.filter(d) for d in docs}
    assert result == {"gpl_repo/COPYING": (False, "license_file"), "gpl_repo/src/area.py": (False, "license_gpl"),
                      "mit_repo/LICENSE": (False, "license_file"), "mit_repo/src/area.py": True,
                      "mit_repo/src/table.py": (False, "long_line")}
    kept = next(d for d in docs if d.metadata["fields"]["path"] == "mit_repo/src/area.py")
    assert kept.text == CODE  # the license header is gone
    assert f.filter(doc(CODE, fields={"license": "Apache-2.0"})) is True
    assert f.filter(doc(CODE, fields={"licenses": ["GPL-3.0"]})) == (False, "license_gpl")


LATEX = r"""\documentclass{article}
\usepackage{amsmath} % math
\newcommand{\R}{\mathbb{R}}
\newcommand{\norm}[1]{\left\| #1 \right\|}
\def\eps{\varepsilon}
\title{A Paper}
\begin{document}
\maketitle
\begin{abstract}We study things.\end{abstract}
\section{Introduction}
Let $x \in \R^n$ with $\norm{x} < \eps$. % a remark
% a whole-line comment
We pay 5\% of costs.
\section{Results}
It works.
\begin{thebibliography}{9}
\bibitem{a} A. Author, A book.
\end{thebibliography}
\end{document}
"""


def test_arxiv_cleaning():
    assert clean_latex(LATEX) == (r"\section{Introduction}" "\n"
                                  r"Let $x \in \mathbb{R}^n$ with $\left\| x \right\| < \varepsilon$." "\n"
                                  r"We pay 5\% of costs." "\n"
                                  r"\section{Results}" "\n"
                                  "It works.")
    assert clean_latex(r"\documentclass{article}\begin{document}No sections.\end{document}") is None
    bomb = "\\def\\a{\\a\\a}\n\\section{S}\n\\a"  # a macro that doubles itself: expansion is bounded
    assert len(clean_latex(bomb)) < 1000


def test_stackexchange_html_with_code_and_answer_order():
    fields = {"title": "How do I reverse a list?",
              "question": "<p>I have <code>xs</code>. How do I reverse it?</p>",
              "answers": [{"body": "<p>Slice it:</p><pre><code>ys = xs[::-1]\nprint(ys)\n</code></pre>", "score": 3},
                          {"body": "<p>Use <code>reversed()</code> &amp; <em>list</em>.</p>", "score": 10},
                          {"body": "<p>No idea.</p>", "score": -2}]}
    assert qa_text(fields, "") == ("Q: How do I reverse a list?\n\nI have xs. How do I reverse it?\n\n"
                                   "A: Use reversed() & list.\n\n"
                                   "A: Slice it:\n\nys = xs[::-1]\nprint(ys)\n\n"
                                   "A: No idea.")


def test_wikipedia_markup():
    wikitext = ("{{Infobox city|name=Paris}}'''Paris''' is the [[capital city|capital]] of [[France]].<ref>A "
                "source</ref>\n== History ==\nIt was founded ''long'' ago.<!-- hidden -->\n"
                "[[File:Paris.jpg|thumb|A view]]\n{| class=wikitable\n|-\n| a || b\n|}\n[[Category:Cities]]")
    assert strip_wikitext(wikitext) == "Paris is the capital of France.\nHistory\nIt was founded long ago."


def test_gutenberg_header_and_footer():
    book = ("The Project Gutenberg eBook of X\nlicense text\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\n\n"
            "CHAPTER I\nCall me Ishmael.\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore license")
    assert strip_gutenberg(book) == "CHAPTER I\nCall me Ishmael."
