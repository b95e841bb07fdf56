"""Books (§2.1): Project Gutenberg and Books3, "deduplication at the book level, removing books with more
than 90% content overlap" (MinHash at threshold 0.9, a separate stage). Here: Project Gutenberg's
license header and footer are cut off, keeping the book itself.
"""

from __future__ import annotations

import re

from ..stage import DocFilter

START = re.compile(r"^\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E(?:-?BOOK|TEXT).*$", re.I | re.M)
END = re.compile(r"^\*\*\*\s*END OF (?:THE|THIS) PROJECT GUTENBERG E(?:-?BOOK|TEXT).*$", re.I | re.M)


def strip_gutenberg(text: str) -> str:
    start = START.search(text)
    if start:
        text = text[start.end():]
    end = END.search(text)
    if end:
        text = text[:end.start()]
    return text.strip()


class Books(DocFilter):
    name = "books"

    def filter(self, doc):
        doc.text = strip_gutenberg(doc.text)
        return bool(doc.text) or (False, "empty")
