"""Language-ID accuracy of `data clean`'s language stage on real text in many languages: translation catalogs
(.mo files under /usr/share/locale and other system locale folders — coreutils, glib, GTK, PAM, ... as
translated by people), labelled by the catalog's language.

    python bench/langid.py                    # ~50 documents per language, the paper's Wikipedia 20 + others
    python bench/langid.py --per-language 100 --min-chars 200

A document is consecutive translated messages (msgstr ≠ msgid, so untranslated English is left out;
ISO code-list catalogs, which are lists of names, are skipped) joined until it has --min-chars
characters: web pages are that long or longer. Prints accuracy per language and overall.
"""

from __future__ import annotations

import argparse
import struct
from collections import Counter, defaultdict
from pathlib import Path

LOCALE_DIRS = ("/usr/share/locale", "/usr/share/locale-langpack", "/usr/lib/locale")
ALIASES = {"nb": "no", "zh_CN": "zh", "zh_TW": "zh", "pt_BR": "pt"}


def read_mo(path: Path) -> list[tuple[str, str]]:
    """(msgid, msgstr) pairs of a GNU .mo catalog (plural forms: the first)."""
    data = path.read_bytes()
    if len(data) < 28:
        return []
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if end is None:
        return []
    n, orig, trans = struct.unpack(end + "3I", data[8:20])
    out = []
    for i in range(n):
        lo, oo = struct.unpack(end + "2I", data[orig + 8 * i:orig + 8 * i + 8])
        lt, ot = struct.unpack(end + "2I", data[trans + 8 * i:trans + 8 * i + 8])
        try:
            msgid = data[oo:oo + lo].split(b"\0")[0].decode("utf-8")
            msgstr = data[ot:ot + lt].split(b"\0")[0].decode("utf-8")
        except UnicodeDecodeError:
            continue
        if msgid and msgstr and msgstr != msgid:
            out.append((msgid, msgstr))
    return out


def catalogs() -> dict[str, list[Path]]:
    """{language code: its .mo files}, for the locale folders that exist here."""
    found = defaultdict(list)
    for root in map(Path, LOCALE_DIRS):
        if not root.is_dir():
            continue
        for d in sorted(root.iterdir()):
            code = ALIASES.get(d.name, d.name)
            if "_" in code or "@" in code or "." in code:
                continue
            found[code] += sorted(p for p in (d / "LC_MESSAGES").glob("*.mo") if not p.name.startswith("iso_"))
    return found


def catalog_documents(per_language: int = 50, min_chars: int = 300, languages=None) -> list[tuple[str, str]]:
    """[(language, document)] from the translation catalogs, at most `per_language` each."""
    from llamalab.data.clean.language import identifier

    known = set(identifier().nb_classes)
    docs = []
    for lang, files in sorted(catalogs().items()):
        if lang not in known or (languages and lang not in languages):
            continue
        seen, current, mine = set(), [], []
        for f in files:
            for _, msg in read_mo(f):
                msg = " ".join(msg.split())
                if len(msg) < 20 or msg in seen:
                    continue
                seen.add(msg)
                current.append(msg)
                if sum(map(len, current)) >= min_chars:
                    mine.append(" ".join(current))
                    current = []
                if len(mine) >= per_language:
                    break
            if len(mine) >= per_language:
                break
        if len(mine) >= per_language // 2:  # languages with too little text are left out
            docs += [(lang, d) for d in mine]
    return docs


def main():
    from llamalab.data.clean.language import detect

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-language", type=int, default=50)
    ap.add_argument("--min-chars", type=int, default=300)
    args = ap.parse_args()
    docs = catalog_documents(args.per_language, args.min_chars)
    if not docs:
        raise SystemExit("no translation catalogs (.mo) found under " + ", ".join(LOCALE_DIRS))
    right, total, confused = Counter(), Counter(), defaultdict(Counter)
    for lang, text in docs:
        guess = detect(text)[0]
        total[lang] += 1
        right[lang] += guess == lang
        if guess != lang:
            confused[lang][guess] += 1
    print(f"{len(docs)} documents in {len(total)} languages from translation catalogs "
          f"(≥ {args.min_chars} characters each)")
    for lang in sorted(total, key=lambda k: right[k] / total[k]):
        miss = ", ".join(f"{g} {n}" for g, n in confused[lang].most_common(3))
        print(f"  {lang:4s} {right[lang]:4d}/{total[lang]:<4d} {100 * right[lang] / total[lang]:6.1f}%  {miss}")
    acc = sum(right.values()) / sum(total.values())
    print(f"accuracy: {100 * acc:.2f}% ({sum(right.values())}/{sum(total.values())})")


if __name__ == "__main__":
    main()
