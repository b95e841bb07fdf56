"""Wikipedia (§2.1): "We process the data to remove hyperlinks, comments and other formatting
boilerplate." Wikitext is parsed with mwparserfromhell: references, tables, files/images and
categories go, templates go, links keep their text, headings and bold/italic keep their words.
"""

from __future__ import annotations

import re

from ..stage import DocFilter

DROP_TAGS = {"ref", "table", "gallery", "math", "timeline", "score", "imagemap"}
DROP_LINKS = re.compile(r"^\s*:?\s*(file|image|category|media)\s*:", re.I)
MAGIC_WORDS = re.compile(r"__[A-Z]+__")


def strip_wikitext(text: str) -> str:
    import mwparserfromhell

    code = mwparserfromhell.parse(text)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in DROP_TAGS:
            _remove(code, tag)
    for link in code.filter_wikilinks(recursive=True):
        if DROP_LINKS.match(str(link.title)):
            _remove(code, link)
    for template in code.filter_templates(recursive=False):
        _remove(code, template)
    plain = code.strip_code(normalize=True, collapse=True)
    plain = MAGIC_WORDS.sub("", plain)
    return "\n".join(line.strip() for line in plain.split("\n")).strip()


def _remove(code, node):
    try:
        code.remove(node)
    except ValueError:  # already gone with a parent node
        pass


class Wikipedia(DocFilter):
    name = "wikipedia"

    def filter(self, doc):
        doc.text = strip_wikitext(doc.text)
        return bool(doc.text) or (False, "empty")
