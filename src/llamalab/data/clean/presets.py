"""The stages by name, and the paper's per-source presets (§2.1, Table 1) as lists of them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ... import assets
from ...errors import LlamalabError
from . import dedup, heuristics, language, lines
from .decontaminate import Decontaminate
from .quality import QualityFilter
from .sources import arxiv, books, github, stackexchange, wikipedia
from .stage import CorpusStage, DocFilter

PRESETS: dict[str, list[str]] = {
    # CCNet: line dedup, fastText language ID (English), an n-gram LM and a linear quality classifier.
    # Here exact document dedup runs first, so that CCNet's line dedup (which removes *every* copy of a
    # repeated line) does not erase both copies of a duplicated page; Gopher's quality rules stand in for
    # the n-gram LM (its repetition rules, a third of the run time, are the `repetition` stage); MinHash
    # catches the near-duplicates that are left.
    "commoncrawl": ["normalize", "exact_dedup", "line_dedup", "language", "gopher", "quality", "decontaminate",
                    "near_dedup"],
    "c4": ["normalize", "language", "c4", "decontaminate", "exact_dedup"],
    "github": ["github", "normalize_code", "decontaminate", "exact_dedup"],
    "wikipedia": ["wikipedia", "normalize", "language", "decontaminate", "exact_dedup"],
    "books": ["books", "normalize", "decontaminate", "exact_dedup", "near_dedup"],
    "arxiv": ["arxiv", "normalize_code", "exact_dedup"],
    "stackexchange": ["stackexchange", "normalize_code", "language", "decontaminate", "exact_dedup"],
}
# per-preset defaults the user can override
LANGUAGES = {"wikipedia": language.WIKIPEDIA_20}
NEAR_THRESHOLD = {"books": 0.9}  # "removing books with more than 90% content overlap"
STAGES = ["normalize", "normalize_code", "line_dedup", "exact_dedup", "near_dedup", "language", "c4", "gopher",
          "repetition", "quality", "decontaminate", "github", "arxiv", "wikipedia", "stackexchange", "books"]


@dataclass
class Settings:
    """What the stages need beyond their names."""
    work: str
    languages: tuple[str, ...] = language.ENGLISH
    language_threshold: float = 0.5
    near_threshold: float = 0.8
    quality_model: str | None = None
    quality_threshold: float = 0.5
    decontaminate: str = "drop"          # or "report"
    decontaminate_index: str | None = None


def stage_names(preset: str, stages: str | None, quality_model: str | None) -> list[str]:
    """The stage list of a run: `--stages` as given, else the preset's (its quality stage only with a model)."""
    if preset not in PRESETS:
        raise LlamalabError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    if stages:
        names = [s.strip().replace("-", "_") for s in stages.split(",") if s.strip()]
        unknown = [s for s in names if s not in STAGES]
        if unknown:
            raise LlamalabError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
        if "quality" in names and not quality_model:
            raise LlamalabError("stage quality needs --quality-model MODEL (train one with "
                                "`llamalab data train-quality`)")
        return names
    return [s for s in PRESETS[preset] if s != "quality" or quality_model]


def build(name: str, s: Settings) -> DocFilter | CorpusStage:
    """The pipeline object of one stage."""
    makers = {
        "normalize": lambda: lines.Normalize(),
        "normalize_code": lambda: lines.Normalize(code=True),
        "line_dedup": lambda: lines.line_dedup(s.work),
        "exact_dedup": lambda: dedup.exact_dedup(s.work),
        "near_dedup": lambda: dedup.near_dedup(s.work, s.near_threshold),
        "language": lambda: language.LanguageFilter(s.languages, s.language_threshold),
        "c4": heuristics.c4_filter,
        "gopher": heuristics.gopher_filter,
        "repetition": heuristics.repetition_filter,
        "quality": lambda: QualityFilter(s.quality_model, s.quality_threshold),
        "decontaminate": lambda: Decontaminate(s.decontaminate_index, s.decontaminate),
        "github": github.GitHub,
        "arxiv": arxiv.ArXiv,
        "wikipedia": wikipedia.Wikipedia,
        "stackexchange": stackexchange.StackExchange,
        "books": books.Books,
    }
    return makers[name]()


def benchmarks_dir(given: str | None) -> Path:
    return Path(given) if given else assets.path("benchmarks")
