"""How answers become numbers (paper §3, computed the way lm-evaluation-harness computes them).

- multiple choice: pick the continuation with the highest log-likelihood (`acc`), the highest
  log-likelihood per character of the choice (`acc_norm`), or — for OpenBookQA and BoolQ, following
  GPT-3 — the highest log P(choice | context) − log P(choice | "Answer:") (`acc_uncond`).
- free-form answers: exact match after normalization, over any of the accepted answers.
- GSM8K: the number after "The answer is" (strict) or the last number (flexible); maj@k votes.
- code: the unbiased pass@k estimator of Chen et al. (2021).
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter

import numpy as np

UNCOND_CONTEXT = "Answer:"


def argmax(xs) -> int:
    """First index of the maximum (numpy's tie rule, as lm-eval)."""
    return int(np.argmax(np.asarray(xs, dtype=np.float64)))


def choice_metrics(lls: list[float], choices: list[str], gold: int,
                   uncond_lls: list[float] | None = None) -> dict[str, float]:
    lengths = [float(len(c)) for c in choices]
    out = {
        "acc": float(argmax(lls) == gold),
        "acc_norm": float(argmax([ll / n for ll, n in zip(lls, lengths)]) == gold),
    }
    if uncond_lls is not None:
        out["acc_uncond"] = float(argmax([c - u for c, u in zip(lls, uncond_lls)]) == gold)
    return out


# ---------------------------------------------------------------------------------------------------
# exact match

NQ_ARTICLES = r"\b(?:The |the |An |A |The |a |an )"
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str, regexes_to_ignore: tuple[str, ...] = (), ignore_case: bool = True,
                     ignore_punctuation: bool = True) -> str:
    """lm-eval's `exact_match` normalization: drop the given regexes, lower-case, drop ASCII punctuation."""
    for r in regexes_to_ignore:
        text = re.sub(r, "", text)
    if ignore_case:
        text = text.lower()
    if ignore_punctuation:
        text = text.translate(_PUNCT)
    return text


def exact_match(prediction: str, targets: list[str], **normalize) -> float:
    """1.0 if the (whitespace-stripped) prediction equals any target after normalization."""
    p = normalize_answer(prediction.strip(), **normalize)
    return float(any(p == normalize_answer(t, **normalize) for t in targets))


def truncate_at_stop(text: str, until) -> str:
    """The generation up to the first stop sequence (lm-eval's `generate_until`)."""
    for s in until:
        if s and s in text:
            text = text.split(s)[0]
    return text


# ---------------------------------------------------------------------------------------------------
# GSM8K

GSM8K_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE = (",", r"\$", "(?s).*#### ", r"\.$")


def gsm8k_extract(text: str, flexible: bool = False) -> str:
    """lm-eval gsm8k_cot filters: strict = first "The answer is N."; flexible = the last number."""
    matches = (GSM8K_FLEXIBLE if flexible else GSM8K_STRICT).findall(text)
    if not matches:
        return "[invalid]"
    m = matches[-1] if flexible else matches[0]
    if isinstance(m, tuple):
        m = next((g for g in m if g), "[invalid]")
    return m.strip()


def gsm8k_match(answer: str, target: str) -> float:
    norm = dict(regexes_to_ignore=GSM8K_IGNORE, ignore_case=True, ignore_punctuation=False)
    return float(normalize_answer(answer, **norm) == normalize_answer(target, **norm))


def majority_vote(answers: list[str]) -> str:
    """maj@k: the most frequent extracted answer (ties: the first seen), ignoring invalid ones."""
    valid = [a for a in answers if a != "[invalid]"]
    return Counter(valid).most_common(1)[0][0] if valid else "[invalid]"


# ---------------------------------------------------------------------------------------------------
# pass@k

def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples passes) from n samples of which c pass:
    1 - C(n-c, k) / C(n, k), computed as a stable product (Chen et al. 2021, Fig. 3)."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def perplexity(lls: list[float]) -> float:
    """lm-eval's `perplexity` aggregation: exp of the mean negative log-likelihood per item."""
    return math.exp(-sum(lls) / len(lls))
