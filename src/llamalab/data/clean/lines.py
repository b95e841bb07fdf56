"""Unicode/whitespace normalization and CCNet's line-level deduplication.

CCNet (Wenzek et al. 2020, the pipeline LLaMA runs on CommonCrawl) hashes every normalized line of a
shard set and removes *every* occurrence of a line seen more than once — menus, cookie banners,
footers and other boilerplate that repeats across pages disappear from all of them (its
`deduplicate_two_pass`, "what is done in the paper"). Blank lines are never counted (they keep
paragraphs apart); a document with no line left is dropped.
"""

from __future__ import annotations

import operator
import re
import unicodedata
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from ...atomic import write_bytes
from .hashing import hash_strings, simplify
from .stage import CorpusStage, DocFilter, Pass

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0\u2000-\u200a\u3000]+")
_BLANK_RUNS = re.compile(r"\n{3,}")
_TRAILING = re.compile(r"[ \t]+\n")


def normalize_text(text: str, code: bool = False) -> str:
    """NFC, \\n line ends, no control characters, no trailing spaces, at most one blank line in a row;
    prose also gets runs of spaces collapsed (code keeps its indentation)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    text = _CONTROL.sub("", text)
    if code:
        text = _TRAILING.sub("\n", text + "\n")
    else:
        text = _EDGES.sub("\n", _SPACES.sub(" ", "\n" + text + "\n"))
    return _BLANK_RUNS.sub("\n\n", text).strip("\n")


class Normalize(DocFilter):
    name = "normalize"

    def __init__(self, code: bool = False):
        super().__init__()
        self.code = code

    def filter(self, doc):
        doc.text = normalize_text(doc.text, self.code)
        return bool(doc.text.strip()) or (False, "empty")


_HSPACE = re.compile(r"[^\S\n]+")
_EDGES = re.compile(r" ?\n ?")


def line_hashes(text: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(lines, hash of each normalized line, mask of blank ones)."""
    lines = text.split("\n")
    normalized = _EDGES.sub("\n", _HSPACE.sub(" ", simplify(text))).split("\n")
    if normalized and normalized[0].startswith(" "):
        normalized[0] = normalized[0][1:]
    if normalized and normalized[-1].endswith(" "):
        normalized[-1] = normalized[-1][:-1]
    return lines, hash_strings(normalized), np.fromiter(map(operator.not_, normalized), bool, len(lines))


class LineSignature(PipelineStep):
    """Per task: every distinct non-blank line hash and how often it occurs (capped at 2)."""

    type = "🫂 - DEDUP"
    name = "line dedup: signature"

    def __init__(self, folder: str):
        super().__init__()
        self.folder = folder

    def run(self, data, rank: int = 0, world_size: int = 1):
        chunks = []
        for doc in data:
            _, hashes, blank = line_hashes(doc.text)
            chunks.append(hashes[~blank])
        hashes, counts = np.unique(np.concatenate(chunks) if chunks else np.zeros(0, np.uint64),
                                   return_counts=True)
        _save(Path(self.folder) / f"{rank:05d}.npy", _records(hashes, np.minimum(counts, 2)))
        return iter(())


class LineFind(PipelineStep):
    """One task: the hashes seen twice or more across all tasks."""

    type = "🫂 - DEDUP"
    name = "line dedup: find"

    def __init__(self, folder: str, out: str):
        super().__init__()
        self.folder, self.out = folder, out

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        parts = [np.load(f, allow_pickle=False) for f in sorted(Path(self.folder).glob("*.npy"))]
        rec = np.concatenate(parts) if parts else _records(np.zeros(0, np.uint64), np.zeros(0, np.uint8))
        order = np.argsort(rec["hash"], kind="stable")
        hashes, counts = rec["hash"][order], rec["count"][order].astype(np.int64)
        starts = np.flatnonzero(np.r_[True, hashes[1:] != hashes[:-1]]) if len(hashes) else np.zeros(0, int)
        totals = np.add.reduceat(counts, starts) if len(hashes) else counts
        dups = hashes[starts][totals >= 2]
        self.stat_update("duplicated_lines", value=len(dups))
        _save(Path(self.out), dups)
        return iter(())


class LineFilter(DocFilter):
    name = "line dedup"

    def __init__(self, dups_path: str):
        super().__init__()
        self.dups_path = dups_path
        self._dups = None

    def filter(self, doc):
        if self._dups is None:
            self._dups = np.load(self.dups_path, allow_pickle=False)
        lines, hashes, blank = line_hashes(doc.text)
        pos = np.searchsorted(self._dups, hashes)
        pos[pos == len(self._dups)] = 0
        dup = (self._dups[pos] == hashes) & ~blank if len(self._dups) else np.zeros(len(lines), bool)
        removed = int(dup.sum())
        if not removed:
            return True
        self.stat_update("lines_removed", value=removed)
        kept = [line for line, d in zip(lines, dup) if not d]
        doc.text = _BLANK_RUNS.sub("\n\n", "\n".join(kept)).strip("\n")
        return bool(doc.text.strip()) or (False, "all_lines_duplicated")


def line_dedup(work: str) -> CorpusStage:
    sig, dups = f"{work}/lines/sig", f"{work}/lines/duplicates.npy"
    return CorpusStage("line dedup", LineSignature(sig),
                       find=[Pass("line dedup: find", [LineFind(sig, dups)], 1)], filter=LineFilter(dups))


def _records(hashes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    rec = np.zeros(len(hashes), dtype=[("hash", "<u8"), ("count", "u1")])
    rec["hash"], rec["count"] = hashes, counts
    return rec


def _save(path: Path, array: np.ndarray):
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    write_bytes(path, buf.getvalue())
