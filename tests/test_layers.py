"""The floors of docs/ARCHITECTURE.md hold: every import of a package module (at the top of a module or
inside a function) goes to the same unit, a unit of a lower floor, or a unit of the same floor that the
table lets it use; and the units import each other in no circle. The table is read from the document, so
the rule and its description cannot drift apart."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
DOC = ROOT / "docs" / "ARCHITECTURE.md"


def layer_table() -> dict[str, tuple[int, set[str]]]:
    """unit → (floor number, the units of its own floor it may import), from the document's layer table."""
    units = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"\|\s*(\d)\s+\w+\s*\|\s*(.+?)\s*\|\s*(.*?)\s*\|", line)
        if not m:
            continue
        names = re.findall(r"`([\w.]+)`", re.sub(r"\([^)]*\)", "", m.group(2)))  # (...) describes, not names
        allowed = set(re.findall(r"`([\w.]+)`", re.sub(r"\([^)]*\)", "", m.group(3))))
        for name in names:
            units[name] = (int(m.group(1)), allowed)
    return units


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, int]]:
    """(module imported, line) for every import of a llamalab module in the file, wherever it sits."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.split(".")[0] == "llamalab"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "llamalab":
                continue
            for a in node.names:  # `from . import x` imports the module x when there is one
                sub = f"{target}.{a.name}"
                is_module = (SRC / sub.replace(".", "/")).with_suffix(".py").is_file() or \
                    (SRC / sub.replace(".", "/")).is_dir()
                out.append((sub if is_module else target, node.lineno))
    return out


def unit_of(module: str, units) -> str | None:
    """The most specific unit of the table that holds `module` (names relative to the package)."""
    rel = module.removeprefix("llamalab").lstrip(".") or "llamalab"
    parts = rel.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in units:
            return ".".join(parts[:i])
    return None


def edges():
    units = layer_table()
    out = []
    for path in sorted((SRC / "llamalab").rglob("*.py")):
        source = unit_of(module_name(path), units)
        for target, line in imports(path):
            out.append((path.relative_to(SRC), line, source, unit_of(target, units), target))
    return units, out


def test_the_table_names_every_module():
    units, found = edges()
    assert len(units) > 20, "the layer table of docs/ARCHITECTURE.md was not found"
    unplaced = sorted({str(p) for p, _, s, _, _ in found if s is None} |
                      {t for _, _, _, u, t in found if u is None})
    assert not unplaced, f"not in the layer table of docs/ARCHITECTURE.md (add a row): {unplaced}"


def test_no_import_climbs_or_goes_sideways_unlisted():
    units, found = edges()
    bad = set()
    for path, line, source, target, module in found:
        if source is None or target is None or source == target:
            continue
        (floor, allowed), (target_floor, _) = units[source], units[target]
        if target_floor > floor or (target_floor == floor and target not in allowed):
            bad.add(f"{path}:{line} ({source}, floor {floor}) imports {module} ({target}, floor {target_floor})")
    assert not bad, "imports against docs/ARCHITECTURE.md's layer table:\n" + "\n".join(sorted(bad))


def test_units_import_each_other_in_no_circle():
    units, found = edges()
    graph: dict[str, set[str]] = {u: set() for u in units}
    for _, _, source, target, _ in found:
        if source and target and source != target:
            graph[source].add(target)
    state, stack, circles = {}, [], []

    def visit(u):
        state[u] = "open"
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                circles.append(" → ".join(stack[stack.index(v):] + [v]))
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = "done"

    for u in sorted(graph):
        if u not in state:
            visit(u)
    assert not circles, "import circles between units:\n" + "\n".join(circles)
