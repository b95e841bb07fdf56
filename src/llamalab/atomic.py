"""Writes that never leave a half-written file or directory: write beside the target, then rename.

    write_text("results.json", text)           # a small file, in one call
    with staged_file("model.gguf") as tmp:     # a file another library writes (torch.save, GGUFWriter, ...)
        writer.write(tmp)
    with staged_dir("model/") as tmp:          # a whole directory (a checkpoint, a shard set)
        save_files_into(tmp)

Readers see the old content or the new one, never a mix; a crash leaves at most a stray `.name.*`
temporary. What is written gets the permissions the user's umask gives new files (some libraries create
0600 files; a staged directory is normalized before it goes live). Whether a target may be replaced at
all is the caller's decision (see `llamalab.formats.output` for checkpoints); one rule holds for every
writer, `check_apart`: an output is never, never holds, and never lies inside what the command reads.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LlamalabError


def check_apart(out, inputs, what: str = "output") -> None:
    """Refuse (LlamalabError) to write `out` when it is, holds, or lies inside one of `inputs` (the paths
    the command reads; None and paths that do not exist are skipped): the write would replace or mix with
    its own input. Symlinks are followed on both sides. Call it before anything is read or written."""
    where = Path(os.path.realpath(out))
    for src in inputs:
        if src is None or not os.path.lexists(src):
            continue
        real = Path(os.path.realpath(src))
        how = ("is" if real == where else "holds" if where in real.parents
               else "lies inside" if real in where.parents else None)
        if how:
            raise LlamalabError(f"refusing to write {what} {out}: it {how} the input {src}; choose another "
                                f"{what} path")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def staged_file(path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on success it is synced, given normal permissions and
    renamed to `path`; on failure it is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as f:  # the writer closed it; its data must be on disk before the rename
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staged_dir(path) -> Iterator[Path]:
    """A new empty directory beside `path` to write into. When the block succeeds it takes `path`'s place:
    an existing `path` is moved aside first and deleted only once the new directory is in place (put back
    if that fails). When the block fails, the new directory is removed and `path` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        mask = _umask()
        for f in [tmp, *tmp.rglob("*")]:
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        old = None
        if path.exists() or path.is_symlink():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except BaseException:
            if old is not None:
                os.replace(old, path)
            raise
        if old is not None:
            shutil.rmtree(old) if old.is_dir() and not old.is_symlink() else old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path, data: bytes) -> Path:
    with staged_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def refused_write(path) -> OSError | None:
    """Why a write under `path` just failed, when the machine is the reason (its filesystem is read-only
    or full), as an OSError naming `path`; None otherwise. For writers that hide the errno (torch.save
    reports a full disk as "unexpected pos")."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    code = errno.EROFS if st.f_flag & os.ST_RDONLY else errno.ENOSPC if st.f_bavail * st.f_frsize < 1 << 20 else None
    return OSError(code, os.strerror(code), str(path)) if code else None
