"""Language identification: keep documents whose most likely language is one of `languages` with a
probability of at least `threshold` (CCNet: fastText, 0.5). The model is py3langid's (langid.py's
97-language naive Bayes, shipped inside the package: nothing is downloaded at run time).

A long document is judged on three 700-character windows (start, middle, end), which bounds the
cost per document without letting a header or footer in another language decide alone.
"""

from __future__ import annotations

from .stage import DocFilter

ENGLISH = ("en",)
# Wikipedia in the paper: bg, ca, cs, da, de, en, es, fr, hr, hu, it, nl, pl, pt, ro, ru, sl, sr, sv, uk
WIKIPEDIA_20 = ("bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu", "it", "nl", "pl", "pt", "ro",
                "ru", "sl", "sr", "sv", "uk")
WINDOW = 700

_identifier = None


def identifier():
    global _identifier
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        _identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    return _identifier


def sample(text: str, window: int = WINDOW) -> str:
    if len(text) <= 3 * window:
        return text
    mid = len(text) // 2 - window // 2
    return "\n".join((text[:window], text[mid:mid + window], text[-window:]))


def detect(text: str) -> tuple[str, float]:
    """(language code, probability) of a text."""
    lang, prob = identifier().classify(sample(text))
    return lang, float(prob)


class LanguageFilter(DocFilter):
    name = "language"

    def __init__(self, languages=ENGLISH, threshold: float = 0.5):
        super().__init__()
        self.languages = tuple(languages)
        self.threshold = threshold

    def filter(self, doc):
        lang, prob = detect(doc.text)
        if lang not in self.languages:
            self.stat_update(f"language_{lang}")
            return False, "other_language"
        if prob < self.threshold:
            return False, "low_confidence"
        return True
