"""Question files (for `generate --input` and `judge`), read as the instruction data is: a JSON array or
JSON Lines, each record with where it came from ("file:line" / "file[i]") for the errors."""

from __future__ import annotations

from ..errors import LlamalabError
from ..textio import read_records


def load_questions(path) -> dict[str, dict]:
    """{id: {"id", "category", "question"}} from JSONL/JSON records with a "question" (or "instruction" /
    "prompt", an Alpaca "input" appended) and an optional "id" (default: the record's number) and "category"."""
    out = {}
    for i, (where, r) in enumerate(read_records(path), 1):
        text = next((r[k] for k in ("question", "instruction", "prompt") if k in r), None) if isinstance(r, dict) else None
        if not isinstance(text, str) or not text.strip():
            raise LlamalabError(f"{where}: a question needs a non-empty string 'question'")
        if isinstance(r.get("input"), str) and r["input"].strip():
            text = f"{text.strip()}\n\n{r['input'].strip()}"
        qid = str(r.get("id", r.get("question_id", i)))
        if qid in out:
            raise LlamalabError(f"{where}: question id {qid!r} appears twice")
        out[qid] = {"id": qid, "category": str(r.get("category", "")), "question": text.strip()}
    return out

