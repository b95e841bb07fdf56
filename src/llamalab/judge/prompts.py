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
PAIR_RETRY = "Give your final verdict now, in exactly this format: [[A]], [[B]] or [[C]]."
SINGLE_RETRY = "Give your rating now, in exactly this format: Rating: [[5]] (a number from 1 to 10)."


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


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "C" (tie) from the last [[X]] in the reply; None if there is none."""
    found = VERDICT.findall(text)
    return found[-1] if found else None


def parse_rating(text: str) -> float | None:
    """The last [[N]] (or "Rating: N") in the reply, if it is a grade from 1 to 10; else None."""
    found = RATING.findall(text) or RATING_LOOSE.findall(text)
    if not found:
        return None
    value = float(found[-1])
    return value if 1 <= value <= 10 else None
