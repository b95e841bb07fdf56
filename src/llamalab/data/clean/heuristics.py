"""Rule-based quality heuristics, as datatrove implements them, with a word/sentence splitter that
needs no downloaded model:

  c4          C4 (Raffel et al. 2020): keep lines ending in terminal punctuation with ≥ 3 words, drop
              lines about javascript or cookie/terms-of-use boilerplate; drop pages with < 5
              sentences, "lorem ipsum" or a curly brace.
  gopher      Gopher (Rae et al. 2021): 50–100,000 words, mean word length 3–10, symbol-to-word
              ratio ≤ 0.1, ≤ 90% bullet lines, ≤ 30% lines ending in an ellipsis, ≥ 80% words with
              a letter, ≥ 2 English stop words.
  repetition  Gopher's repetition rules: duplicated lines/paragraphs, top n-gram shares, duplicated
              n-gram character fractions.
"""

from __future__ import annotations

from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter

from .stage import SimpleWordTokenizer


def c4_filter():
    return C4QualityFilter(language=SimpleWordTokenizer())


def gopher_filter():
    return GopherQualityFilter(language=SimpleWordTokenizer())


def repetition_filter():
    return GopherRepetitionFilter(language=SimpleWordTokenizer())
