"""The per-stage report: documents and bytes in and out of every stage, % removed, and why — summed over
the per-task statistics datatrove saves (so a resumed run still reports the whole corpus)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ...bounded import read_json


DETAIL_PREFIXES = ("language_",)  # per-language counts: in stats.json, too many for the table


def _task_stats(logs: str, tasks: int):
    """Per task, [(step name, {counter: total})] as datatrove saved them (a count, or a dict with 'total')."""
    for rank in range(tasks):
        f = Path(logs) / "stats" / f"{rank:05d}.json"
        if f.exists():
            yield [(step["name"], {k: v["total"] if isinstance(v, dict) else v for k, v in step["stats"].items()})
                   for step in read_json(f)]


def collect(passes, work: str, names: list[str]) -> dict:
    """{'read': counters, 'stages': [{'stage', counters...}] in stage order, 'bad_records': [...]}."""
    stages: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    read: dict[str, float] = defaultdict(float)
    for i, p in enumerate(passes):
        for task in _task_stats(f"{work}/logs/{i:02d}", p.tasks):
            for step_name, counters in task:
                kind, _, name = step_name.partition(": ")
                staged = "STAGE" in kind or "SIGNATURE" in kind
                target = read if (name == "read" and i == 0) else stages[name] if staged else None
                if target is not None:
                    for key, value in counters.items():
                        target[key] += value
        seconds = Path(work, "logs", f"{i:02d}", "seconds")
        if p.stage and seconds.exists():
            stages[p.stage]["seconds"] += float(seconds.read_text())
    bad = []
    for f in sorted(Path(work, "bad").glob("*.json")):
        bad += read_json(f)
    rows = []
    for name in names:
        rows.append({"stage": name, **{k: _number(v) for k, v in stages.get(name, {}).items()}})
    return {"read": {k: _number(v) for k, v in read.items()}, "stages": rows, "bad_records": bad}


def _number(v: float):
    return int(v) if float(v).is_integer() else round(v, 3)


def _pct(removed: float, total: float) -> str:
    return f"{100 * removed / total:5.1f}%" if total else "    —"


def _reasons(row: dict) -> str:
    parts = []
    for key, value in row.items():
        if key in ("stage", "docs_in", "docs_out", "bytes_in", "bytes_out", "seconds") \
                or key.startswith(DETAIL_PREFIXES):
            continue
        parts.append(f"{key.removeprefix('dropped_')} {value:,}")
    return ", ".join(parts)


def format_table(report: dict) -> str:
    head = f"{'stage':14s} {'docs in':>10s} {'docs out':>10s} {'removed':>7s} {'MB in':>9s} {'MB out':>9s} " \
           f"{'removed':>7s}  reasons"
    lines = [head, "-" * len(head)]
    r = report["read"]
    bad = r.get("bad_records", 0)
    lines.append(f"{'read':14s} {'':>10s} {r.get('docs_out', 0):>10,} {'':>7s} {'':>9s} "
                 f"{r.get('bytes_out', 0) / 1e6:>9.2f} {'':>7s}  {f'{bad:,} bad records' if bad else ''}")
    for row in report["stages"]:
        di, do, bi, bo = (row.get(k, 0) for k in ("docs_in", "docs_out", "bytes_in", "bytes_out"))
        lines.append(f"{row['stage']:14s} {di:>10,} {do:>10,} {_pct(di - do, di):>7s} {bi / 1e6:>9.2f} "
                     f"{bo / 1e6:>9.2f} {_pct(bi - bo, bi):>7s}  {_reasons(row)}")
    first_in = r.get("bytes_out", 0)
    last = report["stages"][-1] if report["stages"] else {"docs_out": r.get("docs_out", 0), "bytes_out": first_in}
    lines.append(f"kept {last.get('docs_out', 0):,} of {r.get('docs_out', 0):,} documents, "
                 f"{last.get('bytes_out', 0) / 1e6:.2f} of {first_in / 1e6:.2f} MB ({_pct(last.get('bytes_out', 0), first_in).strip()})")
    for b in report.get("bad_records", [])[:5]:
        lines.append(f"bad record: {b['file']}:{b['line']}: {b['error']}")
    return "\n".join(lines)
