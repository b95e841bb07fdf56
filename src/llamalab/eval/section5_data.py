"""The Section 5 data shipped with the package (see data/section5/SOURCES): CrowS-Pairs, WinoGender and
TruthfulQA, read with their columns checked, so a damaged or foreign file is one clear error line.

    rows = read_table(path, ("sent_more", "sent_less", "bias_type"))   # any CSV/TSV, columns checked
    crows_pairs_rows(), winogender_rows(), truthfulqa_rows()           # the shipped files
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from ..errors import LlamalabError

DATA = Path(__file__).with_name("data") / "section5"
SHA256 = {  # the files as fetched from upstream; a different hash means the installed copy was changed
    "crows_pairs_anonymized.csv": "dfb36986ce0502abbaf7055b9176da3d08d48e07df1251991b5dfbcbceab9d0c",
    "winogender_all_sentences.tsv": "bd69da16bf228cb8df63fd0843aec2d8b5c36a7f21bf8c7b168bcc83932556c8",
    "winogender_templates.tsv": "496f2e2dc77296bcebcdd8865a8dc5715ce22b772de9abb5f531d5b3114c48a0",
    "winogender_occupations_stats.tsv": "3f7f37c16381a70571356982ea7fe613ac700ad04a6d3b19b9f2be18248df567",
    "TruthfulQA.csv": "99d6ae7755e3b435eade956068c9de7c0c474770344237aeb66b56519ba4b697",
}
CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")
WINOGENDER_COLUMNS = ("sentid", "sentence")
TEMPLATE_COLUMNS = ("occupation(0)", "other-participant(1)", "answer", "sentence")
STATS_COLUMNS = ("occupation", "bls_pct_female")
TRUTHFULQA_COLUMNS = ("Category", "Question", "Best Answer", "Correct Answers", "Incorrect Answers")


def read_table(path, columns: tuple[str, ...], delimiter: str | None = None) -> list[dict]:
    """The rows of a CSV (or, for .tsv, tab-separated) file as dicts; wrong encoding, missing columns or
    empty required cells are a `LlamalabError` naming the file, the line and what to do."""
    path = Path(path)
    delimiter = delimiter or ("\t" if path.suffix == ".tsv" else ",")
    hint = "reinstall llamalab, or pass a file with the upstream format"
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise LlamalabError(f"data file {path} is missing; {hint}") from None
    except UnicodeDecodeError as e:
        raise LlamalabError(f"data file {path} is not UTF-8 text (byte {e.start}); {hint}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise LlamalabError(f"data file {path} lacks the column(s) {', '.join(missing)} (it has "
                            f"{', '.join(reader.fieldnames or []) or 'none'}); {hint}")
    rows = list(reader)
    for row in rows:
        empty = [c for c in columns if not (row.get(c) or "").strip()]
        if empty:
            raise LlamalabError(f"data file {path}, line {reader.line_num}: empty {', '.join(empty)}; {hint}")
    if not rows:
        raise LlamalabError(f"data file {path} has no rows; {hint}")
    return rows


def shipped(name: str) -> Path:
    """A shipped data file, checked against the hash of the upstream file."""
    path = DATA / name
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != SHA256[name]:
        raise LlamalabError(f"data file {path} differs from the file llamalab ships (sha256 mismatch); "
                            f"reinstall llamalab")
    return path


def crows_pairs_rows(path=None) -> list[dict]:
    return read_table(path or shipped("crows_pairs_anonymized.csv"), CROWS_COLUMNS)


def winogender_rows(sentences=None, templates=None, stats=None) -> tuple[list[dict], list[dict], list[dict]]:
    return (read_table(sentences or shipped("winogender_all_sentences.tsv"), WINOGENDER_COLUMNS),
            read_table(templates or shipped("winogender_templates.tsv"), TEMPLATE_COLUMNS),
            read_table(stats or shipped("winogender_occupations_stats.tsv"), STATS_COLUMNS))


def split_answers(text: str) -> list[str]:
    """TruthfulQA's `split_multi_answer`: answers separated by ';', each stripped and closed with a period."""
    out = []
    for a in text.strip().split(";"):
        a = a.strip()
        if a:
            out.append(a if a.endswith(".") else a + ".")
    return out


def truthfulqa_rows(path=None) -> list[dict]:
    """TruthfulQA's 817 questions, each with its best, correct and incorrect answers (lists closed with periods)."""
    path = path or shipped("TruthfulQA.csv")
    rows = read_table(path, TRUTHFULQA_COLUMNS)
    out = []
    for i, r in enumerate(rows, 2):
        correct, incorrect = split_answers(r["Correct Answers"]), split_answers(r["Incorrect Answers"])
        if not correct or not incorrect:
            raise LlamalabError(f"data file {path}, row {i}: a question needs at least one correct and one "
                                f"incorrect answer; reinstall llamalab, or pass a file with the upstream format")
        out.append({"question": r["Question"].strip(), "category": r["Category"], "type": r.get("Type", ""),
                    "best_answer": split_answers(r["Best Answer"])[0], "correct_answers": correct,
                    "incorrect_answers": incorrect})
    return out
