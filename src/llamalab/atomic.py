"""Writes that never leave a half-written file: write a temp file beside the target, fsync, rename.

Readers see the old content or the new one, never a mix; a crash leaves at most a stray `.name.*` temp.
"""

from __future__ import annotations

import errno
import hashlib
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
