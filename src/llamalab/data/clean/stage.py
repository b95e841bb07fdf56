"""What every cleaning stage shares: per-stage accounting, the word tokenizer handed to datatrove's
filters, and the two shapes a stage takes.

A *document stage* looks at one document at a time (normalize, language ID, heuristics, quality,
decontamination, the per-source cleaners): it is a datatrove filter that may also rewrite `doc.text`.
A *corpus stage* needs to see every document first (line dedup, exact dedup, MinHash): it computes a
signature per document in one pass, finds the duplicates in one or more tasks, and filters in the
next pass. `pipeline.compile_passes` turns a list of stages into those passes.
"""

from __future__ import annotations

import re
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer

# counters of a wrapped step that are bookkeeping, not reasons
_NOT_REASONS = {"total", "forwarded", "dropped", "doc_len", "doc_len_tokens", "batches"}


def nbytes(text: str) -> int:
    return len(text.encode("utf-8"))


class Measured(PipelineStep):
    """Wraps one stage's step: documents and bytes in and out, and the step's own reasons
    (`dropped_<reason>`, line counts, benchmark hits), all under the stage's name."""

    type = "🧮 - STAGE"

    def __init__(self, stage: str, step: PipelineStep, reason: str = "filtered"):
        self.name = stage
        super().__init__()
        self.step = step
        self.reason = reason  # for drops the step does not explain (datatrove's dedup filters)

    def run(self, data, rank: int = 0, world_size: int = 1):
        clock = _Clock()

        def counted():
            for doc in clock.upstream(data):
                self.stat_update("docs_in")
                self.stat_update("bytes_in", value=nbytes(doc.text))
                yield doc

        for doc in self.step.run(counted(), rank, world_size):
            self.stat_update("docs_out")
            self.stat_update("bytes_out", value=nbytes(doc.text))
            with clock.away():
                yield doc
        self.stat_update("seconds", value=clock.own())
        counters = {k: getattr(m, "total", m) for k, m in self.step.stats.stats.items()}
        for key, value in counters.items():
            if key not in _NOT_REASONS:
                self.stat_update(key, value=value)
        if counters.get("dropped") and not any(k.startswith("dropped_") for k in counters):
            self.stat_update(f"dropped_{self.reason}", value=counters["dropped"])


class Timed(PipelineStep):
    """Wraps a corpus stage's signature step: the seconds it takes, under the stage's name."""

    type = "⏱ - SIGNATURE"

    def __init__(self, stage: str, step: PipelineStep):
        self.name = stage
        super().__init__()
        self.step = step

    def run(self, data, rank: int = 0, world_size: int = 1):
        clock = _Clock()
        rest = self.step.run(clock.upstream(data), rank, world_size)
        if rest is not None:
            deque(rest, maxlen=0)
        self.stat_update("seconds", value=clock.own())


class _Clock:
    """Seconds a step spends itself: wall time minus the time spent upstream (producing its input) and
    downstream (consuming its output)."""

    def __init__(self):
        self.start, self.elsewhere = time.perf_counter(), 0.0

    def upstream(self, data):
        it = iter(data or ())
        while True:
            with self.away():
                doc = next(it, None)
            if doc is None:
                return
            yield doc

    @contextmanager
    def away(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.elsewhere += time.perf_counter() - t

    def own(self) -> float:
        return time.perf_counter() - self.start - self.elsewhere


class DocFilter(BaseFilter):
    """A document stage of ours: `filter(doc)` returns True to keep (possibly after rewriting
    `doc.text`) or (False, reason) to drop."""

    type = "🔻 - FILTER"

    def __init__(self):
        super().__init__()

    def filter(self, doc):  # pragma: no cover - abstract
        raise NotImplementedError


_WORD = re.compile(r"\w+|[^\w\s]+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])[\"')\]]*\s+")


class SimpleWordTokenizer(WordTokenizer):
    """Words and punctuation runs by regular expression, sentences at terminal punctuation — what
    datatrove's C4/Gopher filters need, without NLTK's downloaded models."""

    def __init__(self):
        super().__init__("en")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [text[a:b] for a, b in self.span_tokenize(text)]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        spans, start = [], 0
        for m in _SENTENCE_END.finditer(text):
            if text[start:m.start()].strip():
                spans.append((start, m.start()))
            start = m.end()
        if text[start:].strip():
            spans.append((start, len(text)))
        return spans


@dataclass
class Pass:
    """One run of an executor: `tasks` tasks each running `steps` in order."""
    name: str
    steps: list
    tasks: int
    stage: str | None = None  # the corpus stage a find pass belongs to


@dataclass
class CorpusStage:
    """A stage that needs the whole corpus: signature (end of a pass), find passes, filter (next pass)."""
    name: str
    signature: PipelineStep
    find: list[Pass] = field(default_factory=list)
    filter: PipelineStep | None = None
