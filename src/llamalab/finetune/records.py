"""Instruction data on disk → conversations.

Four formats, detected from the first record's keys or named with `--format`:

    alpaca      {"instruction", "input" (optional), "output"}                 Stanford Alpaca
    sharegpt    {"conversations": [{"from": "human"|"gpt"|"system", "value"}]}  Vicuna's ShareGPT dumps
    messages    {"messages": [{"role": "system"|"user"|"assistant", "content"}]}   OpenAI chat fine-tuning
    completion  {"prompt", "completion"}                                      plain text, no chat template

A file is a JSON array of records or JSON Lines (one record per line). Every record becomes a list of
messages ({"role", "content"}); a completion record becomes {"prompt", "completion"}. Errors name the
file and the line (JSONL) or record number (JSON array).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data.text import read_text
from ..bounded import loads
from ..errors import LlamalabError

FORMATS = ("alpaca", "sharegpt", "messages", "completion")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "bard": "assistant", "system": "system"}


def read_records(path) -> list[tuple[str, object]]:
    """[(where, record)] of a JSON array or JSON Lines file; `where` is "file:line" or "file[record]"."""
    path = Path(path)
    text = read_text(path, f"instruction data {path} not found (want a .json or .jsonl file of records)")
    if text.lstrip().startswith("["):
        try:
            records = loads(text)
        except json.JSONDecodeError as e:
            raise LlamalabError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from None
        return [(f"{path}[{i}]", r) for i, r in enumerate(records)]
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append((f"{path}:{n}", loads(line)))
        except json.JSONDecodeError as e:
            raise LlamalabError(f"{path}:{n}: not valid JSON ({e.msg}, column {e.colno}); each line must be "
                                f"one JSON record") from None
    if not out:
        raise LlamalabError(f"{path}: no records (the file is empty)")
    return out


def detect_format(record, where: str) -> str:
    if isinstance(record, dict):
        if "conversations" in record:
            return "sharegpt"
        if "messages" in record:
            return "messages"
        if "instruction" in record or "output" in record:
            return "alpaca"
        if "prompt" in record or "completion" in record:
            return "completion"
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise LlamalabError(f"{where}: cannot tell the format of this record ({keys}); expected alpaca "
                        f"(instruction, input, output), sharegpt (conversations), messages, or prompt/completion "
                        f"records, or name one with --format")


def _text(record: dict, key: str, where: str, fmt: str, required: bool = True) -> str:
    value = record.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        got = "missing" if key not in record else f"a {type(value).__name__}"
        raise LlamalabError(f"{where}: {fmt} record needs a string {key!r} ({got})")
    return value


def _turns(items, where: str, fmt: str, role_key: str, text_key: str, roles=None) -> list[dict]:
    if not isinstance(items, list) or not items:
        raise LlamalabError(f"{where}: {fmt} record needs a non-empty list of turns")
    out = []
    for k, turn in enumerate(items):
        if not isinstance(turn, dict):
            raise LlamalabError(f"{where}: turn {k} is a {type(turn).__name__}, not an object")
        role = turn.get(role_key)
        role = roles.get(role) if roles is not None else role
        if role not in ("system", "user", "assistant"):
            raise LlamalabError(f"{where}: turn {k} has {role_key} {turn.get(role_key)!r}; expected "
                                f"{', '.join(sorted(roles)) if roles else 'system, user or assistant'}")
        out.append({"role": role, "content": _text(turn, text_key, f"{where} turn {k}", fmt)})
    return out


def to_example(record, fmt: str, where: str, alpaca_input: bool = False) -> dict:
    """One record as {"messages": [...]} or {"prompt", "completion"}. alpaca_input: keep an Alpaca record's
    input as the user turn's "input" (the alpaca template has an "### Input:" section); otherwise it is
    appended to the instruction."""
    if not isinstance(record, dict):
        raise LlamalabError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if fmt == "completion":
        return {"prompt": _text(record, "prompt", where, fmt), "completion": _text(record, "completion", where, fmt)}
    if fmt == "alpaca":
        instruction, output = _text(record, "instruction", where, fmt), _text(record, "output", where, fmt)
        extra = _text(record, "input", where, fmt, required=False)
        user = {"role": "user", "content": instruction}
        if extra and alpaca_input:
            user["input"] = extra
        elif extra:
            user["content"] = f"{instruction}\n\n{extra}"
        messages = [user, {"role": "assistant", "content": output}]
        if record.get("system"):
            messages.insert(0, {"role": "system", "content": _text(record, "system", where, fmt)})
    elif fmt == "sharegpt":
        messages = _turns(record.get("conversations"), where, fmt, "from", "value", SHAREGPT_ROLES)
    elif fmt == "messages":
        messages = _turns(record.get("messages"), where, fmt, "role", "content")
    else:
        raise LlamalabError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not any(m["role"] == "assistant" for m in messages):
        raise LlamalabError(f"{where}: this conversation has no assistant turn, so there is nothing to learn "
                            f"from it; remove it or add the answer")
    return {"messages": messages}


def load_examples(path, fmt: str = "auto", alpaca_input: bool = False) -> tuple[str, list[tuple[str, dict]]]:
    """(format, [(where, example)]) for every record of an instruction file."""
    records = read_records(path)
    if fmt in (None, "auto"):
        fmt = detect_format(records[0][1], records[0][0])
    elif fmt not in FORMATS:
        raise LlamalabError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)} (or auto)")
    return fmt, [(where, to_example(r, fmt, where, alpaca_input)) for where, r in records]
