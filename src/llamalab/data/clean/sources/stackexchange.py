"""StackExchange (§2.1): "We removed the HTML tags from text and sorted the answers by score (from
highest to lowest)."

A record is a question with its answers: `title`, `question` (or `body`), and `answers`, a list of
{`body` (or `text`), `score`}. It becomes "Q: title\\n\\nquestion" followed by one "A: answer" per
answer, best first. HTML goes through the standard library's parser: paragraphs, list items and line
breaks become lines, `<pre>` blocks keep their code verbatim, entities are decoded. A record with
only a `text` field has its HTML stripped.
"""

from __future__ import annotations

from html.parser import HTMLParser

from ..stage import DocFilter

BLOCK = {"p", "div", "li", "ul", "ol", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "hr"}


class _Text(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out, self.pre = [], 0

    def handle_starttag(self, tag, attrs):
        if tag == "pre":
            self.pre += 1
            self.out.append("\n\n")
        elif tag == "br":
            self.out.append("\n")
        elif tag in BLOCK:
            self.out.append("\n\n" if tag != "li" else "\n- ")

    def handle_endtag(self, tag):
        if tag == "pre":
            self.pre = max(0, self.pre - 1)
            self.out.append("\n\n")
        elif tag in BLOCK:
            self.out.append("\n")

    def handle_data(self, data):
        self.out.append(data if self.pre else " ".join(data.split("\n")))


def html_to_text(html: str) -> str:
    parser = _Text()
    parser.feed(html)
    parser.close()
    lines = "".join(parser.out).split("\n")
    text = "\n".join(line.rstrip() for line in lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def _score(answer: dict) -> float:
    try:
        return float(answer.get("score") or 0)
    except (TypeError, ValueError):
        return 0.0


def qa_text(fields: dict, text: str) -> str:
    question = fields.get("question") or fields.get("body")
    answers = fields.get("answers")
    if not isinstance(question, str) or not isinstance(answers, list):
        return html_to_text(text)
    parts = [f"Q: {fields.get('title') or ''}".rstrip() + "\n\n" + html_to_text(question)]
    good = [a for a in answers if isinstance(a, dict) and isinstance(a.get("body") or a.get("text"), str)]
    for answer in sorted(good, key=_score, reverse=True):  # stable: equal scores keep their order
        parts.append("A: " + html_to_text(answer.get("body") or answer.get("text")))
    return "\n\n".join(parts)


class StackExchange(DocFilter):
    name = "stackexchange"

    def filter(self, doc):
        doc.text = qa_text(doc.metadata.get("fields", {}), doc.text)
        return bool(doc.text) or (False, "empty")
