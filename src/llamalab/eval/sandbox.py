"""Run untrusted generated code (HumanEval/MBPP completions) in a contained subprocess.

Layers, each cheap and independent:
- a fresh temporary working directory, removed afterwards; `python -I` (no env vars, no user site);
- resource limits: CPU seconds, address space, file size, process count (RLIMIT_NPROC, which root
  ignores — so the audit hook below also refuses to fork or exec);
- a wall-clock timeout after which the whole process group is killed;
- no network: a fresh network namespace (`unshare --net`) where the system allows one, and in any case
  an audit hook refusing socket connect/bind/sendto and name lookups;
- an audit hook (PEP 578) installed before the program runs that refuses writes, deletes, renames and
  permission changes outside the temporary directory, process creation, signals and loading C libraries.

This is protection against accidents of model-written code (runaway loops, fork bombs, stray writes),
not a security boundary against an adversary: use a VM or container for that.
"""

from __future__ import annotations

import functools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

# Runs in the child, before the program: installs the audit hook, then executes program.py.
_BOOTSTRAP = r'''
import os, sys
ROOT = os.path.realpath(os.getcwd())
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove": 1, "os.rmdir": 1, "os.mkdir": 1, "os.chmod": 1, "os.chown": 1, "os.utime": 1,
               "os.truncate": 1, "os.rename": 2, "os.link": 2, "os.symlink": 2, "shutil.rmtree": 1,
               "shutil.copyfile": 2, "shutil.copytree": 2, "shutil.move": 2}
REFUSED = ("os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill",
           "os.killpg", "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.sendto",
           "socket.sendmsg", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr",
           "ctypes.dlopen", "ctypes.dlsym", "resource.setrlimit", "sys.addaudithook", "os.chdir", "os.chroot")

def inside(path):
    if isinstance(path, int):
        return True  # an already open descriptor
    try:
        p = os.fsdecode(os.fspath(path))
    except TypeError:
        return False
    p = os.path.realpath(p)
    return p == ROOT or p.startswith(ROOT + os.sep)

def hook(event, args):
    if event in REFUSED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & WRITE_FLAGS
        if writing and not inside(path):
            raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
    elif event in PATH_EVENTS:
        for path in args[:PATH_EVENTS[event]]:
            if path is not None and not inside(path):
                raise PermissionError(f"sandbox: {event} on {path!r} outside the sandbox directory is not allowed")

with open("program.py", encoding="utf-8") as f:
    source = f.read()
code = compile(source, "program.py", "exec")
sys.addaudithook(hook)
sys.argv = ["program.py"]
exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
'''


@dataclass
class Result:
    status: str        # "passed" | "failed" | "timeout"
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@functools.cache
def _can_unshare_net() -> bool:
    exe = shutil.which("unshare")
    if exe is None:
        return False
    try:
        return subprocess.run([exe, "--net", "--map-root-user", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _limits(cpu_seconds: int, memory_bytes: int, max_processes: int, max_file_bytes: int):
    def apply():
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    return apply


def run_program(program: str, *, timeout: float = 10.0, memory_mb: int = 1024, max_processes: int = 64,
                max_output: int = 10_000) -> Result:
    """Run `program` (Python source) in the sandbox; passed = exited 0 within the time limit."""
    with tempfile.TemporaryDirectory(prefix="llamalab-sandbox-") as tmp:
        with open(os.path.join(tmp, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        cmd = [sys.executable, "-I", "-B", "-c", _BOOTSTRAP]
        if _can_unshare_net():
            cmd = [shutil.which("unshare"), "--net", "--map-root-user", *cmd]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": tmp, "TMPDIR": tmp}
        start = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True,
                                preexec_fn=_limits(int(timeout) + 1, memory_mb << 20, max_processes, 16 << 20))
        try:
            out, err = proc.communicate(timeout=timeout)
            status = "passed" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            status = "timeout"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the whole group: children too
            except ProcessLookupError:
                pass
        if status == "timeout":
            out, err = proc.communicate()
        return Result(status, proc.returncode, out.decode(errors="replace")[-max_output:],
                      err.decode(errors="replace")[-max_output:], time.monotonic() - start)
