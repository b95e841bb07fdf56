"""Data mixtures: sampling weights per source, and the epochs they imply (the paper's Table 1).

A mixture is a plain `{source: weight}` dict; weights need not sum to one. Training on N tokens
samples weight·N tokens from each source, i.e. weight·N / tokens(source) epochs of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import LlamalabError
from .shards import read_manifest


@dataclass(frozen=True)
class PaperSource:
    """One row of the paper's Table 1."""
    weight: float     # sampling proportion, %
    disk_gb: float    # disk size
    epochs: float     # epochs when training on 1.4T tokens


# LLaMA paper, Table 1: pre-training data (sampling proportion, disk size, epochs for 1.4T tokens).
TABLE1 = {
    "CommonCrawl": PaperSource(67.0, 3300, 1.10),
    "C4": PaperSource(15.0, 783, 1.06),
    "GitHub": PaperSource(4.5, 328, 0.64),
    "Wikipedia": PaperSource(4.5, 83, 2.45),
    "Books": PaperSource(4.5, 85, 2.23),
    "ArXiv": PaperSource(2.5, 92, 1.06),
    "StackExchange": PaperSource(2.0, 78, 1.03),
}
TABLE1_TOKENS = 1.4e12  # the 33B/65B models' training tokens, the budget Table 1's epochs refer to

MIXTURES: dict[str, dict[str, float]] = {
    "llama": {name: row.weight for name, row in TABLE1.items()},
}


def parse_mixture(spec: str) -> dict[str, float]:
    """A preset name (`llama`) or `name=weight,name=weight,...`."""
    if spec in MIXTURES:
        return dict(MIXTURES[spec])
    mixture = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, eq, value = part.partition("=")
        try:
            if not eq or not name:
                raise ValueError
            mixture[name.strip()] = float(value)
        except ValueError:
            raise LlamalabError(f"bad mixture entry {part!r}: write name=weight,name=weight "
                                f"or a preset ({', '.join(MIXTURES)})") from None
    check_mixture(mixture)
    return mixture


def check_mixture(mixture: dict[str, float], available=None) -> None:
    """Weights must be non-negative with a positive sum, and (given the dataset's `available` source
    names) name only sources the dataset has."""
    if available is not None and (unknown := sorted(set(mixture) - set(available))):
        raise LlamalabError(f"mixture names unknown source(s) {unknown} that the dataset lacks; "
                            f"it has {sorted(available)}")
    if not mixture or any(w < 0 for w in mixture.values()) or sum(mixture.values()) <= 0:
        raise LlamalabError(f"mixture weights must be non-negative with a positive sum, got {mixture}")


@dataclass(frozen=True)
class Row:
    source: str
    share: float          # normalized weight
    tokens: int           # tokens available in the source
    sampled: float        # tokens drawn from it
    epochs: float         # sampled / tokens


def source_tokens(manifest) -> dict[str, int]:
    """Tokens per source from a dataset manifest (dict or path) or a plain {source: tokens} dict."""
    if isinstance(manifest, (str, Path)):
        manifest = read_manifest(manifest)[0]
    if "sources" in manifest and isinstance(manifest["sources"], dict):
        return {k: int(v["tokens"]) for k, v in manifest["sources"].items()}
    return {k: int(v) for k, v in manifest.items()}


def report(mixture: dict[str, float], manifest, total_tokens: float) -> list[Row]:
    """Per source: share of the mixture, tokens sampled when training on total_tokens, and the
    resulting epochs (Table 1's last column)."""
    available = source_tokens(manifest)
    check_mixture(mixture, available)
    if total_tokens <= 0:
        raise LlamalabError(f"the training budget must be positive, got {total_tokens} tokens (--tokens)")
    total_weight = sum(mixture.values())
    rows = []
    for name, weight in mixture.items():
        share = weight / total_weight
        tokens = available[name]
        sampled = share * total_tokens
        rows.append(Row(name, share, tokens, sampled, sampled / tokens if tokens else float("inf")))
    return rows


def format_table1() -> str:
    """The paper's Table 1 as printed, for reference."""
    lines = [f"LLaMA paper, Table 1 (epochs for {TABLE1_TOKENS:.1e} training tokens)",
             f"{'source':16s} {'sampling':>9s} {'disk':>9s} {'epochs':>7s}"]
    for name, row in TABLE1.items():
        disk = f"{row.disk_gb / 1000:.1f} TB" if row.disk_gb >= 1000 else f"{row.disk_gb:.0f} GB"
        lines.append(f"{name:16s} {row.weight:8.1f}% {disk:>9s} {row.epochs:7.2f}")
    return "\n".join(lines)


def format_report(rows: list[Row]) -> str:
    lines = [f"{'source':16s} {'share':>7s} {'tokens':>14s} {'sampled':>14s} {'epochs':>7s}"]
    for r in rows:
        lines.append(f"{r.source:16s} {100 * r.share:6.2f}% {r.tokens:14,d} {r.sampled:14,.0f} {r.epochs:7.2f}")
    return "\n".join(lines)
