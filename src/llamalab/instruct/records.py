"""Records from a JSON array or JSON Lines file, each with where it came from ("file:line" / "file[i]"),
and the question files built on them."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import LlamalabError


def read_records(path) -> list[tuple[str, object]]:
    path = Path(path)
    if not path.is_file():
        raise LlamalabError(f"{path} not found (want a .json or .jsonl file of records)")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlamalabError(f"{path}: not UTF-8 text (byte {e.start}); is it compressed or binary?") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise LlamalabError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        out = [(f"{path}[{i}]", r) for i, r in enumerate(records)]
    else:
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise LlamalabError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}); each line must be "
                                    f"one JSON record") from None
    if not out:
        raise LlamalabError(f"{path}: no records (the file is empty)")
    return out


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

