"""Answers of one model to a question file, for judging: `llamalab generate --input questions.jsonl --out
answers.jsonl`. The questions decode together on the engine's slots; each answer is appended as it comes
(resumable: a rerun answers only the questions not in the file yet).

    {"id": "writing-01", "model": "SmolLM2-135M-Instruct.Q4_1", "question": "...", "answer": "...",
     "finish_reason": "stop"}
"""

from __future__ import annotations

from ..errors import LlamalabError
from .backends import Request
from .journal import Journal


def answer_questions(model, questions: dict[str, dict], out, *, name: str, max_tokens: int = 512,
                     temperature: float = 0.0, top_p: float | None = None, top_k: int | None = None,
                     min_p: float | None = None, repetition_penalty: float | None = None, seed: int | None = None,
                     system: str | None = None, progress: bool = True) -> int:
    """Append `model`'s answer to every question not yet in `out`; how many it answered now. Question i
    samples with seed + i, so the answers do not depend on how they were batched."""
    from tqdm.auto import tqdm

    with Journal(out) as journal:
        other = {r.get("model") for r in journal.records} - {name}
        if other:
            raise LlamalabError(f"{out} holds answers of {sorted(other)[0]!r}, not {name!r}; give a new --out file")
        have = {str(r.get("id")) for r in journal.records}
        todo = [(i, q) for i, q in enumerate(questions.values()) if q["id"] not in have]
        bar = tqdm(total=len(questions), initial=len(questions) - len(todo), desc="answers", unit="answer",
                   disable=not progress, dynamic_ncols=True)
        chunk = 2 * model.concurrency
        for start in range(0, len(todo), chunk):
            part = todo[start:start + chunk]
            requests = [Request(([{"role": "system", "content": system}] if system else [])
                                + [{"role": "user", "content": q["question"]}], max_tokens=max_tokens,
                                temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                repetition_penalty=repetition_penalty, seed=None if seed is None else seed + i)
                        for i, q in part]
            for (_, q), reply in zip(part, model.chat(requests)):
                journal.append({"id": q["id"], "model": name, "question": q["question"], "answer": reply.text,
                                "finish_reason": reply.finish_reason})
            bar.update(len(part))
        bar.close()
        return len(todo)
