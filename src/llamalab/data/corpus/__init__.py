"""The embedded demo corpus: ~12 MB of public-domain / CC0 / PSF-licensed text in four categories, a
miniature of the paper's mixture (see SOURCES for provenance and licenses, built by
scripts/build_demo_corpus.py):

    prose       State of the Union addresses (1900-), Moby-Dick            ~ CommonCrawl / C4 / Books
    reference   The Jargon File, The Devil's Dictionary, Python's docs      ~ Wikipedia
    qa          Python's FAQ as question/answer pairs                       ~ StackExchange
    code        Python standard-library modules                             ~ GitHub

Each is `<name>.jsonl.xz`: one document per line, {"text": ..., "source": ...}.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import shutil
from pathlib import Path

from ...atomic import staged_file

CORPUS_DIR = Path(__file__).resolve().parent
CATEGORIES = ("prose", "reference", "qa", "code")

# Sampling weights for the demo: prose dominates as web text does in Table 1; the small reference and
# Q&A sets are sampled above their share of the bytes, as the paper does for Wikipedia and Books.
DEMO_MIXTURE = {"prose": 0.52, "reference": 0.25, "code": 0.20, "qa": 0.03}


def cache_root() -> Path:
    return Path(os.environ.get("LLAMALAB_CACHE") or Path.home() / ".cache" / "llamalab")


def demo_sources(cache_dir: str | Path | None = None) -> dict[str, Path]:
    """{category: path of its decompressed .jsonl}, decompressing into the cache on first use.
    The directory name carries a hash of the compressed files, so an updated corpus gets a new one."""
    files = {name: CORPUS_DIR / f"{name}.jsonl.xz" for name in CATEGORIES}
    digest = hashlib.sha256()
    for path in files.values():
        digest.update(path.read_bytes())
    root = Path(cache_dir or cache_root()) / f"demo-corpus-{digest.hexdigest()[:12]}"
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, src in files.items():
        dest = root / f"{name}.jsonl"
        if not dest.is_file():
            with staged_file(dest) as tmp, lzma.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        out[name] = dest
    return out
