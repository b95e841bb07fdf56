"""The paper's data pipeline (§2.1): CCNet-style cleaning, deduplication, language ID, quality filtering
and per-source preprocessing, as pipeline steps of datatrove (one machine, Ray or Slurm, unchanged).

    from llamalab.data.clean import clean, Options
    clean(["crawl/"], "clean/", Options(preset="commoncrawl", workers=8))

Modules: `read` (inputs → documents, shards), `stage` (what stages share), `lines` (normalization,
CCNet line dedup), `dedup` (exact, MinHash), `language`, `heuristics` (C4, Gopher), `quality` (the
linear classifier), `decontaminate` (13-gram overlap with the eval sets), `sources/` (GitHub, arXiv,
Wikipedia, StackExchange, Books), `presets`, `pipeline` (passes and executors), `report`.
Needs the `data` extra: pip install 'llamalab[data]'.
"""

from __future__ import annotations

import os

from ...errors import LlamalabError

# datatrove logs through loguru, which reads its default level once, at import: warnings and up
os.environ.setdefault("LOGURU_LEVEL", "WARNING")

MISSING_HINT = "`data clean` needs the data-pipeline libraries: pip install 'llamalab[data]'"


def require():
    """One clear error when the data extra is not installed."""
    for module in ("datatrove", "py3langid", "sklearn", "zstandard", "orjson", "mwparserfromhell"):
        try:
            __import__(module)
        except ImportError:
            raise LlamalabError(f"{MISSING_HINT} ({module} is missing)") from None


def clean(*args, **kwargs):
    require()
    from .pipeline import clean as run

    return run(*args, **kwargs)


def __getattr__(name):
    if name == "Options":
        require()
        from .pipeline import Options

        return Options
    raise AttributeError(name)
