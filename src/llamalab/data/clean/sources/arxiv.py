"""arXiv (§2.1): "We processed arXiv LaTeX files ... removed everything before the first section, as well
as the bibliography. We also removed the comments from the .tex files, and inline-expanded definitions
and macros written by users to increase consistency across papers."

Macros defined with \\newcommand / \\renewcommand / \\providecommand (optionally starred, with [n]
arguments) or \\def (with #1..#9 parameters) are expanded where they are used, repeatedly (macros that
use macros), within bounds: hostile input cannot make the text grow without limit.
"""

from __future__ import annotations

import re

from ..stage import DocFilter

COMMENT = re.compile(r"(?<!\\)%.*")
COMMENT_ENV = re.compile(r"\\begin\{comment\}.*?\\end\{comment\}", re.S)
NEWCOMMAND = re.compile(r"\\(?:re|provide)?newcommand\*?\s*\{?\s*\\([A-Za-z@]+)\s*\}?\s*(?:\[(\d)\])?\s*(?=\{)")
DEF = re.compile(r"\\def\s*\\([A-Za-z@]+)\s*((?:#\d)*)\s*(?=\{)")
FIRST_SECTION = re.compile(r"\\(?:section|chapter)\*?\s*[\[{]")
BIBLIOGRAPHY = re.compile(r"\\begin\{thebibliography\}|\\bibliography\{|\\printbibliography"
                          r"|\\section\*?\{\s*(?:references|bibliography)\s*\}|\\end\{document\}", re.I)
MAX_ROUNDS, MAX_GROWTH = 8, 4


def braced(text: str, i: int) -> int:
    """Index just past the brace group opening at text[i] ('{'), or -1 if unbalanced."""
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":  # an escaped character, \{ or \} included
            j += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    return -1


def strip_comments(tex: str) -> str:
    tex = COMMENT_ENV.sub("", tex)
    out = []
    for line in tex.split("\n"):
        stripped = COMMENT.sub("", line)
        if stripped.strip() or not line.strip():  # drop lines that were only a comment
            out.append(stripped.rstrip())
    return "\n".join(out)


def extract_macros(tex: str) -> tuple[str, dict[str, tuple[int, str]]]:
    """(text without the definitions, {name: (number of arguments, body)})."""
    macros, pieces, pos = {}, [], 0
    for m in sorted(list(NEWCOMMAND.finditer(tex)) + list(DEF.finditer(tex)), key=lambda m: m.start()):
        if m.start() < pos:
            continue
        end = braced(tex, m.end())
        if end < 0:
            continue
        nargs = int(m.group(2)) if m.re is NEWCOMMAND and m.group(2) else len(m.group(2) or "") // 2
        macros[m.group(1)] = (nargs, tex[m.end() + 1:end - 1])
        pieces.append(tex[pos:m.start()])
        pos = end
    pieces.append(tex[pos:])
    return "".join(pieces), macros


def expand(tex: str, macros: dict[str, tuple[int, str]]) -> str:
    if not macros:
        return tex
    use = re.compile(r"\\(" + "|".join(sorted(map(re.escape, macros), key=len, reverse=True)) + r")(?![A-Za-z@])")
    limit = MAX_GROWTH * len(tex) + 10_000
    for _ in range(MAX_ROUNDS):
        out, pos, changed = [], 0, False
        for m in use.finditer(tex):
            if m.start() < pos:
                continue
            nargs, body = macros[m.group(1)]
            end, args = m.end(), []
            for _ in range(nargs):
                j = end
                while j < len(tex) and tex[j] in " \t\n":
                    j += 1
                if j < len(tex) and tex[j] == "{" and (k := braced(tex, j)) > 0:
                    args.append(tex[j + 1:k - 1])
                    end = k
                elif j < len(tex):  # a single-token argument
                    args.append(tex[j])
                    end = j + 1
            text = body
            for n, arg in enumerate(args, 1):
                text = text.replace(f"#{n}", arg)
            out += [tex[pos:m.start()], text]
            pos, changed = end, True
        out.append(tex[pos:])
        new = "".join(out)
        if not changed or len(new) > limit:
            break
        tex = new
    return tex


def clean_latex(tex: str) -> str | None:
    """The paper's arXiv treatment; None when the file has no section."""
    tex = strip_comments(tex)
    tex, macros = extract_macros(tex)
    first = FIRST_SECTION.search(tex)
    if not first:
        return None
    tex = tex[first.start():]
    end = BIBLIOGRAPHY.search(tex)
    if end:
        tex = tex[:end.start()]
    return expand(tex, macros).strip()


class ArXiv(DocFilter):
    name = "arxiv"

    def filter(self, doc):
        text = clean_latex(doc.text)
        if text is None:
            return False, "no_section"
        doc.text = text
        return bool(text) or (False, "empty")
