"""Start-up time of `import llamalab` and `llamalab --help`: this tree against another revision, one run.

    python bench/startup.py --base main [--runs 40]

The base revision's `src/` is exported with `git archive` into a temporary directory; each measurement is a
fresh interpreter with PYTHONPATH pointing at one tree or the other, the two interleaved (alternating which
goes first) so both see the same machine load. Prints median and minimum wall time of the import / of
building and formatting the CLI help inside the interpreter, and of the whole `python -m llamalab --help`.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IN_PROCESS = {
    "import llamalab": "import time; t = time.perf_counter(); import llamalab; print(time.perf_counter() - t)",
    "llamalab --help (in process)": "import time; t = time.perf_counter(); import llamalab.cli as c; "
                                    "c.build_parser().format_help(); print(time.perf_counter() - t)",
}


def timed(argv: list[str], src: Path) -> float:
    env = dict(os.environ, PYTHONPATH=str(src))
    if argv[1] == "-c":  # the interpreter reports its own in-process time
        return float(subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout)
    start = time.perf_counter()
    subprocess.run(argv, env=env, capture_output=True, check=True)
    return time.perf_counter() - start


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="git revision to compare with (default: main)")
    ap.add_argument("--runs", type=int, default=40)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", a.base, "src"], capture_output=True, check=True)
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(tmp, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        trees = {a.base: Path(tmp) / "src", "this tree": ROOT / "src"}
        cases = {name: [sys.executable, "-c", code] for name, code in IN_PROCESS.items()}
        cases["python -m llamalab --help"] = [sys.executable, "-m", "llamalab", "--help"]
        for name, argv in cases.items():
            times = {t: [] for t in trees}
            for i in range(a.runs):
                for t in (list(trees) if i % 2 else list(trees)[::-1]):
                    times[t].append(1000 * timed(argv, trees[t]))
            base, ours = (statistics.median(times[t]) for t in trees)
            print(f"{name:30s} {a.base}: {base:6.1f} ms (min {min(times[a.base]):5.1f})   this tree: {ours:6.1f} ms "
                  f"(min {min(times['this tree']):5.1f})   ratio {ours / base:.2f}")


if __name__ == "__main__":
    main()
