"""Scoring that survives a kill: items are scored in chunks and each finished item is appended to a journal
(`instruct.journal.Journal`, one fsync'd JSON line per item), so a rerun with the same journal scores only
the items not yet there. Used by the Section 5 tasks (bias, truthfulness, toxicity).

    records = resumable(journal, "crows_pairs", items, score_chunk)   # journal None: one chunk, nothing kept
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

from ..errors import LlamalabError
from ..instruct.journal import Journal

CHUNK = 128  # items scored between two journal writes


def open_journal(path, model: str) -> Journal:
    """The journal at `path`; one written for another model is refused (its items would mix two models)."""
    journal = Journal(path)
    head = next((r for r in journal.records if r.get("task") == "_run"), None)
    if head is None:
        journal.append({"task": "_run", "model": model})
    elif head.get("model") != model:
        journal.close()
        raise LlamalabError(f"{Path(path)} holds items scored for {head.get('model')!r}, not {model!r}; give "
                            f"another --resume file")
    return journal


def resumable(journal: Journal | None, name: str, items: list, score_chunk: Callable[[list], list[dict]],
              chunk: int = CHUNK) -> list[dict]:
    """One record per item, in order: those the journal holds for task `name`, the rest from `score_chunk`
    (a list of items → their records), appended to the journal as each chunk finishes."""
    done = {r["doc_id"]: r for r in (journal.records if journal else ()) if r.get("task") == name}
    todo = [i for i in range(len(items)) if i not in done]
    step = chunk if journal else max(1, len(todo))
    for start in range(0, len(todo), step):
        ids = todo[start:start + step]
        for i, record in zip(ids, score_chunk([items[i] for i in ids])):
            record = {**record, "task": name, "doc_id": i}
            if journal:
                journal.append(record)
            done[i] = record
    return [done[i] for i in range(len(items))]


def mean_and_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    m = sum(values) / n
    var = sum((v - m) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return m, math.sqrt(var / n)


def grouped_metrics(records: list[dict], metrics: tuple[str, ...], groups: tuple[str, ...] = ()) -> dict[str, float]:
    """Each metric's mean (and stderr) over all records, then its mean over the records of each group
    (`metric_group`, only for groups that have records)."""
    out = {}
    for k in metrics:
        out[k], out[f"{k}_stderr"] = mean_and_stderr([r[k] for r in records])
    for g in groups:
        members = [r for r in records if g in r.get("groups", ())]
        for k in metrics:
            if members:
                out[f"{k}_{g}"] = sum(r[k] for r in members) / len(members)
    return out


def choice_runner(item_metrics: Callable, groups: tuple[str, ...] = ()):
    """A task runner for likelihood-scored items (`ChoiceItem`s, with `groups` if they have them):
    `item_metrics(loglikelihoods, item)` gives each item's metrics; the task reports their means overall and
    per group. The log-likelihoods come from the engine's one scorer (`LLM.loglikelihood`)."""
    def run(llm, task, items, journal=None, **_):
        def score(batch):
            requests = [(c, x) for it in batch for c, x in zip(it.contexts, it.continuations)]
            lls = [r[0] for r in llm.loglikelihood(requests, desc=task.name)]
            out, at = [], 0
            for it in batch:
                ll = lls[at:at + len(it.continuations)]
                at += len(it.continuations)
                out.append({"contexts": it.contexts, "continuations": it.continuations, "gold": it.gold,
                            "groups": list(getattr(it, "groups", ())), "loglikelihoods": ll, **item_metrics(ll, it)})
            return out
        records = resumable(journal, task.name, items, score)
        return grouped_metrics(records, task.metrics, groups), records
    return run
