"""LLM-as-a-judge over answer files, MT-bench style: pairwise (both orders, a tie when they disagree) or
single-answer grading 1–10, resumable, with the malformed replies counted, retried once and reported.

    questions = load_questions("questions.jsonl")
    answers = load_answers(["base.jsonl", "tuned.jsonl"], questions)
    report = judge(open_model(URL_OR_PATH), questions, answers, "runs/judge", mode="pairwise")

Every judgment is appended to DIR/judgments.jsonl as it comes (fsync'd); a rerun asks only what is missing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from ..errors import LlamalabError
from ..instruct.backends import Request
from ..instruct.journal import Journal
from ..textio import read_records
from ..instruct.records import load_questions
from .prompts import pair_messages, parse_rating, parse_verdict, retry_messages, single_messages

MODES = ("pairwise", "single")
__all__ = ["load_questions", "load_answers", "load_references", "judge"]


def load_answers(paths, questions: dict[str, dict]) -> dict[str, dict[str, str]]:
    """{model: {question id: answer}} from answer files ({"id", "answer", "model"} per line, as `llamalab
    generate --input` writes them; the model defaults to the file's name)."""
    answers = {}
    for path in paths:
        model, got = None, {}
        for where, r in read_records(path):
            if not isinstance(r, dict) or not isinstance(r.get("answer"), str) or "id" not in r:
                raise LlamalabError(f"{where}: an answer record needs 'id' and a string 'answer'")
            if str(r["id"]) not in questions:
                raise LlamalabError(f"{where}: question id {r['id']!r} is not in the question file")
            model = model or (str(r["model"]) if r.get("model") else None)
            got[str(r["id"])] = r["answer"]
        model = model or Path(path).stem
        if model in answers:
            raise LlamalabError(f"{path}: two answer files are both from model {model!r}; give them different "
                                f"'model' fields or file names")
        answers[model] = got
    return answers


def load_references(path, questions: dict[str, dict]) -> dict[str, str]:
    refs = {}
    for where, r in read_records(path):
        if not isinstance(r, dict) or not isinstance(r.get("reference"), str) or "id" not in r:
            raise LlamalabError(f"{where}: a reference record needs 'id' and a string 'reference'")
        refs[str(r["id"])] = r["reference"]
    return {k: v for k, v in refs.items() if k in questions}


def jobs(questions, answers, references, mode: str) -> list[dict]:
    """Every judgment to ask: pairwise, each pair of models on each question both had, in both orders."""
    if mode not in MODES:
        raise LlamalabError(f"unknown mode {mode!r}; use pairwise or single")
    models = list(answers)
    if mode == "pairwise" and len(models) < 2:
        raise LlamalabError("pairwise judging needs answers from two or more models (--answers A.jsonl B.jsonl)")
    out = []
    for qid, q in questions.items():
        ref = references.get(qid)
        if mode == "single":
            out += [{"mode": mode, "question_id": qid, "model": m,
                     "messages": single_messages(q["question"], answers[m][qid], ref)}
                    for m in models if qid in answers[m]]
            continue
        for a, b in itertools.combinations(models, 2):
            if qid in answers[a] and qid in answers[b]:
                for x, y in ((a, b), (b, a)):
                    out.append({"mode": mode, "question_id": qid, "models": [x, y],
                                "messages": pair_messages(q["question"], answers[x][qid], answers[y][qid], ref)})
    return out


def key(record: dict) -> tuple:
    return (record["mode"], record["question_id"], tuple(record.get("models") or [record.get("model")]))


def judge(judge_model, questions, answers, out_dir, *, mode: str = "pairwise", references=None,
          max_tokens: int = 512, progress: bool = True) -> list[dict]:
    """Ask `judge_model` every judgment not yet in OUT_DIR/judgments.jsonl; all the judgments."""
    from tqdm.auto import tqdm

    todo = jobs(questions, answers, references or {}, mode)
    with Journal(Path(out_dir) / "judgments.jsonl") as journal:
        for r in journal.records:
            if r.get("judge") != judge_model.name:
                raise LlamalabError(f"{journal.path} holds judgments by {r.get('judge')!r}, not {judge_model.name!r}; "
                                    f"give a new --out directory")
        have = {key(r) for r in journal.records}
        todo = [j for j in todo if key(j) not in have]
        bar = tqdm(total=len(todo), desc="judge", unit="judgment", disable=not progress, dynamic_ncols=True)
        chunk = 2 * judge_model.concurrency
        for start in range(0, len(todo), chunk):
            for record in _ask(judge_model, todo[start:start + chunk], mode, max_tokens):
                journal.append(record)
            bar.update(len(todo[start:start + chunk]))
        bar.close()
        return [r for r in journal.records if r["mode"] == mode]


def _ask(judge_model, batch: list[dict], mode: str, max_tokens: int) -> list[dict]:
    """The judgments of a batch: each reply parsed; the unparsable ones asked once more for the verdict alone."""
    parse = parse_verdict if mode == "pairwise" else parse_rating
    replies = judge_model.chat([Request(j["messages"], max_tokens=max_tokens) for j in batch])
    retry = [i for i, r in enumerate(replies) if parse(r.text) is None]
    second = judge_model.chat([Request(retry_messages(batch[i]["messages"], replies[i].text, mode),
                                       max_tokens=16) for i in retry])
    again = dict(zip(retry, second))
    records = []
    for i, (j, reply) in enumerate(zip(batch, replies)):
        text = reply.text if i not in again else f"{reply.text}\n\n[retry]\n{again[i].text}"
        value = parse(reply.text) if i not in again else parse(again[i].text, bare=True)
        record = {k: v for k, v in j.items() if k != "messages"}
        record.update({"judge": judge_model.name, "verdict" if mode == "pairwise" else "rating": value,
                       "malformed": i in again, "judgment": text})  # malformed: retried once
        records.append(record)
    return records
