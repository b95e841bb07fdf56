"""An append-only JSON Lines file that a run can be killed in the middle of and resumed from.

    journal = Journal("pairs.jsonl")      # reads what a previous run wrote
    journal.records                       # [dict, ...]
    journal.append({"instruction": ...})  # one whole line, one write, fsync'd before it returns

A record is on disk once `append` returns. A kill can only cut the line being written; the next open
drops that partial line (it has no newline yet), so the file never holds a broken or a repeated record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..bounded import loads
from ..errors import LlamalabError


class Journal:
    def __init__(self, path):
        self.path = Path(path)
        if self.path.is_dir():
            raise LlamalabError(f"{self.path} is a directory; give a .jsonl file to write to")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._read()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the line a kill cut short: it was never acknowledged, drop it
            with open(self.path, "r+b") as f:
                f.truncate(end)
                os.fsync(f.fileno())
        records = []
        for n, line in enumerate(data[:end].decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = loads(line)
            except json.JSONDecodeError as e:
                raise LlamalabError(f"{self.path}:{n}: not a JSON record ({e.msg}); this file was not written by "
                                    f"llamalab — give a new --out path") from None
            if not isinstance(record, dict):
                raise LlamalabError(f"{self.path}:{n}: expected a JSON object per line; give a new --out path")
            records.append(record)
        return records

    def append(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        view = memoryview(line)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)
        self.records.append(record)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
