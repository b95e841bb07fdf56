"""The judge's prompts and the parsing of its verdicts, after MT-bench (Zheng et al. 2023, "Judging
LLM-as-a-Judge"): the judge explains first, then ends with a verdict in double brackets.

    pairwise  [[A]] / [[B]] / [[C]] (a tie)   the two answers to one question, in a given order
    single    Rating: [[7]]                   one answer graded 1–10
    with a reference answer (math, reasoning, code): shown to the judge as the correct solution.
"""

from __future__ import annotations

import re

PAIR_SYSTEM = (
    "You are a fair and careful judge. Compare the answers of two AI assistants to the user's question "
    "below and decide which one follows the instructions and answers the question better. Weigh helpfulness, "
    "relevance, accuracy, depth and clarity. The order in which the answers are shown must not influence you, "
    "nor must their length or the assistants' names. Start with a short explanation, then give your final "
    "verdict in exactly this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, "
    "\"[[C]]\" for a tie.")
SINGLE_SYSTEM = (
    "You are a fair and careful judge. Rate the answer of an AI assistant to the user's question below. "
    "Weigh helpfulness, relevance, accuracy, depth and clarity. Start with a short explanation, then give a "
    "rating from 1 to 10 in exactly this format: \"Rating: [[5]]\".")
REFERENCE_NOTE = " A reference answer is given: compare with it; an answer that contradicts it is wrong."
# asked once when a reply has no verdict; a bare letter or number is accepted as the answer to these
PAIR_RETRY = "Which assistant's answer is better? Reply with one letter only: A, B, or C for a tie."
SINGLE_RETRY = "Rate the answer from 1 to 10. Reply with the number only."


def _reference(reference: str | None) -> str:
    return (f"[The Start of Reference Answer]\n{reference}\n[The End of Reference Answer]\n\n"
            if reference else "")


def pair_messages(question: str, answer_a: str, answer_b: str, reference: str | None = None) -> list[dict]:
    user = (f"[User Question]\n{question}\n\n{_reference(reference)}"
            f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
            f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]")
    return [{"role": "system", "content": PAIR_SYSTEM + (REFERENCE_NOTE if reference else "")},
            {"role": "user", "content": user}]


def single_messages(question: str, answer: str, reference: str | None = None) -> list[dict]:
    user = (f"[Question]\n{question}\n\n{_reference(reference)}"
            f"[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]")
    return [{"role": "system", "content": SINGLE_SYSTEM + (REFERENCE_NOTE if reference else "")},
            {"role": "user", "content": user}]


def retry_messages(messages: list[dict], reply: str, mode: str) -> list[dict]:
    """The conversation again with the judge's unusable reply and a request for the verdict alone."""
    return [*messages, {"role": "assistant", "content": reply},
            {"role": "user", "content": PAIR_RETRY if mode == "pairwise" else SINGLE_RETRY}]


VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")
RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*(?:/\s*10\s*)?\]\]")
RATING_LOOSE = re.compile(r"rating\s*[:=]?\s*\[?\s*(\d+(?:\.\d+)?)\s*(?:/\s*10)?\s*\]?", re.IGNORECASE)


BARE_VERDICT = re.compile(r"^\W*(?:assistant\s+)?([ABC])\b(?!')", re.IGNORECASE)
BARE_RATING = re.compile(r"^\W*(\d+(?:\.\d+)?)\b")


def parse_verdict(text: str, bare: bool = False) -> str | None:
    """"A", "B" or "C" (tie) from the last [[X]] in the reply; with bare=True (the reply to PAIR_RETRY) also a
    reply that starts with the letter. None if there is none."""
    found = VERDICT.findall(text) or (BARE_VERDICT.findall(text) if bare else [])
    return found[-1].upper() if found else None


def parse_rating(text: str, bare: bool = False) -> float | None:
    """The last [[N]] (or "Rating: N") in the reply, if it is a grade from 1 to 10; with bare=True (the reply to
    SINGLE_RETRY) also a reply that starts with the number. Else None."""
    found = RATING.findall(text) or RATING_LOOSE.findall(text) or (BARE_RATING.findall(text) if bare else [])
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None
