"""Run untrusted model-written code (HumanEval/MBPP completions) behind an operating-system boundary.

The boundary is built by `sandbox_init.py` from Linux namespaces (user, mount, PID, network, IPC, UTS):
- the program sees only the interpreter and the system's shared libraries, read-only, four harmless
  devices, and a private size-limited /tmp as its working directory: no other file on the machine;
- it runs as an unprivileged user with no capabilities, no network, and no way to name (signal,
  trace, pidfd) any process outside its PID namespace, the evaluator included;
- rlimits bound CPU seconds, address space per process, file size, open files and processes; at the
  time limit the namespace's init is killed and the kernel kills every process left in it;
- the evaluator reads at most `max_output` bytes of each stream (the head and the tail; the middle is
  dropped and marked), so a program printing in a loop costs it nothing but the reads.
Inside, a Python audit hook (PEP 578) refusing writes outside /tmp, process creation, signals, C
libraries and sockets stays as an extra layer; it is not what the guarantees rest on.

Where namespaces are unavailable (kernels or containers that forbid unprivileged user namespaces)
running code is refused, unless LLAMALAB_SANDBOX=weak asks for the weak mode: the same limits and hook
in a plain subprocess, which protects against accidents but not against an adversarial program.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import select
import selectors
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import LlamalabError

INIT = Path(__file__).with_name("sandbox_init.py")
SYSTEM_LIBS = ("/lib", "/lib64", "/lib32", "/usr/lib", "/usr/lib64", "/usr/lib32")

# Runs in the program's process before the program: installs the audit hook, then runs program.py as __main__.
# The hook's tables live in a closure that nothing the program can reach refers to (and gc's object walks
# are refused), so the program cannot edit them.
BOOTSTRAP = r'''
def _install():
    import os, sys
    root = os.path.realpath(os.getcwd())
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    # event -> (positions of path arguments, positions of dir_fd arguments)
    path_events = {"os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)), "os.mkdir": ((0,), (2,)),
                   "os.chmod": ((0,), (2,)), "os.chown": ((0,), (3,)), "os.utime": ((0,), (3,)),
                   "os.truncate": ((0,), ()), "os.rename": ((0, 1), (2, 3)), "os.link": ((0, 1), (2, 3)),
                   "os.symlink": ((0, 1), (2,)), "shutil.rmtree": ((0,), (1,)), "shutil.copyfile": ((0, 1), ()),
                   "shutil.copytree": ((0, 1), ()), "shutil.move": ((0, 1), ())}
    refused = frozenset((
        "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system", "os.kill", "os.killpg",
        "subprocess.Popen", "pty.spawn", "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
        "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr", "ctypes.dlopen", "ctypes.dlsym",
        "resource.setrlimit", "sys.addaudithook", "os.chdir", "os.chroot", "gc.get_objects",
        "gc.get_referrers", "gc.get_referents"))

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            p = os.path.realpath(os.fsdecode(os.fspath(path)))
        except TypeError:
            return False
        return p == root or p.startswith(root + os.sep)

    def hook(event, args):
        if event in refused:
            raise PermissionError(f"sandbox: {event} is not allowed")
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (flags or 0) & write_flags
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing {path!r} outside the sandbox directory is not allowed")
        elif event in path_events:
            paths, dir_fds = path_events[event]
            if any(i < len(args) and args[i] not in (None, -1) for i in dir_fds):
                raise PermissionError(f"sandbox: {event} relative to a directory descriptor is not allowed")
            for i in paths:
                if args[i] is not None and not inside(args[i]):
                    raise PermissionError(f"sandbox: {event} on {args[i]!r} outside the sandbox directory is not allowed")

    with open("program.py", "rb") as f:
        code = compile(f.read(), "program.py", "exec")
    import builtins
    def quit(code=None):
        raise SystemExit(code)
    builtins.exit = builtins.quit = quit  # what `site` adds (python -S: no site-packages either)
    if AUDIT_HOOK:
        sys.addaudithook(hook)
    main = type(sys)("__main__")
    main.__file__ = "program.py"
    sys.modules["__main__"], sys.argv = main, ["program.py"]
    return code, main.__dict__

def _run(code, globs):
    import os, sys
    write, token = os.write, os.read(0, 64).strip()  # the evaluator's nonce; this frame alone holds it
    exec(code, globs)
    # reached only when the program (its tests included) ran to its end: not after os._exit, sys.exit,
    # SystemExit or an exception
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    write(DONE_FD, token)

_run(*_install())
'''


class SandboxUnavailable(LlamalabError):
    """The OS boundary cannot be built here and the weak mode was not asked for."""


@dataclass
class Result:
    status: str        # "passed" | "failed" | "timeout"
    returncode: int | None
    completed: bool    # the program ran to its end (the bootstrap's sentinel came back)
    stdout: str
    stderr: str
    seconds: float

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def interpreter() -> str:
    """The base interpreter (not a virtual environment's wrapper): the only program in the sandbox's view."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    return os.path.realpath(base if base.exists() else sys.executable)


def filesystem_view() -> tuple[list[str], dict[str, str]]:
    """What the program sees, read-only: the interpreter, its standard library and shared libraries.
    Returns (directories and files to bind at the same path, symlinks to recreate: path -> target)."""
    wanted = [interpreter(), os.path.dirname(os.__file__), sysconfig.get_config_var("DESTSHARED")]
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        wanted.append(sysconfig.get_config_var("LIBDIR"))
    wanted += [p for p in SYSTEM_LIBS if os.path.lexists(p)]
    symlinks = {p: os.readlink(p) for p in wanted if os.path.islink(p)}
    binds: list[str] = []
    for p in sorted({os.path.realpath(p) for p in wanted if p and os.path.exists(p)}):
        if not any(p.startswith(b.rstrip("/") + "/") for b in binds):  # sorted: parents come first
            binds.append(p)
    return binds, symlinks


def mode() -> str:
    """"namespaces", or "weak" when LLAMALAB_SANDBOX=weak; SandboxUnavailable when neither can run."""
    if os.environ.get("LLAMALAB_SANDBOX", "").strip().lower() == "weak":
        return "weak"
    problem = _namespaces_problem()
    if problem:
        raise SandboxUnavailable(
            f"cannot run model-written code safely here: the code sandbox needs Linux user, PID, mount and "
            f"network namespaces ({problem}). Allow unprivileged user namespaces (sysctl "
            f"kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0, or the container's seccomp/"
            f"AppArmor profile), or set LLAMALAB_SANDBOX=weak to run it with only resource limits and an audit "
            f"hook, which an adversarial program can escape")
    return "namespaces"


@functools.cache
def _namespaces_problem() -> str | None:
    try:
        _launch("", isolate=True, timeout=10, memory_mb=256, max_processes=4, max_output=1000, disk_mb=1,
                audit_hook=False)
    except SandboxUnavailable as e:
        return str(e)
    return None


def run_program(program: str, *, timeout: float = 10.0, memory_mb: int = 1024, max_processes: int = 16,
                max_output: int = 10_000, disk_mb: int = 64, audit_hook: bool = True) -> Result:
    """Run `program` (Python source) in the sandbox; passed = ran to its end and exited 0 within `timeout`
    seconds. "Ran to its end" is a sentinel: after the program's last statement the bootstrap writes a random
    nonce, which the program never sees on any channel it is given, to a pipe the evaluator checks; a
    program that leaves early (os._exit(0), sys.exit(0), raise SystemExit(0), exit()) before its tests have
    run has not written it, so it fails. (A program that hunts the nonce in its own interpreter's frames
    could still write it: the sentinel stops early exits, the OS boundary is what contains hostile code.)

    Limits: `memory_mb` of address space per process, `max_processes` processes and threads, files up to
    `disk_mb` in total, `max_output` bytes kept of each of stdout and stderr. `audit_hook=False` leaves
    out the in-process layer (to check that the OS boundary holds on its own)."""
    return _launch(program, isolate=mode() == "namespaces", timeout=timeout, memory_mb=memory_mb,
                   max_processes=max_processes, max_output=max_output, disk_mb=disk_mb, audit_hook=audit_hook)


def _launch(program, *, isolate, timeout, memory_mb, max_processes, max_output, disk_mb, audit_hook) -> Result:
    binds, symlinks = filesystem_view()
    nonce = secrets.token_hex(16).encode()
    with tempfile.TemporaryDirectory(prefix="llamalab-sandbox-") as mountpoint:
        status_r, status_w = os.pipe()
        done_r, done_w = os.pipe()
        cfg = {"isolate": isolate, "mountpoint": mountpoint, "binds": binds, "symlinks": symlinks,
               "exe": interpreter(), "status_fd": status_w, "tmp_bytes": disk_mb << 20,
               "bootstrap": f"AUDIT_HOOK = {bool(audit_hook)}\nDONE_FD = {done_w}\n{BOOTSTRAP}",
               "limits": {"cpu_seconds": int(timeout) + 1, "memory_bytes": memory_mb << 20,
                          "file_bytes": disk_mb << 20, "processes": max_processes}}
        proc = subprocess.Popen([interpreter(), "-I", "-S", "-B", str(INIT), json.dumps(cfg)], env={},
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                pass_fds=(status_w, done_w), start_new_session=True)
        os.close(status_w)
        os.close(done_w)
        try:
            _send(proc, nonce + b"\n" + program.encode("utf-8", errors="surrogateescape"))
            ready = _read_status(status_r, deadline=time.monotonic() + 30)
            if ready != "ready":
                raise SandboxUnavailable(ready.removeprefix("error: ") or "the launcher died during setup")
            start = time.monotonic()
            out, err, timed_out = _collect(proc, start + timeout, max_output)
        finally:
            os.close(status_r)
            _kill(proc)
            completed = _drain(done_r) == nonce  # every writer is dead now
            os.close(done_r)
        seconds = time.monotonic() - start
    status = "timeout" if timed_out else "passed" if proc.returncode == 0 and completed else "failed"
    return Result(status, proc.returncode, completed, out, err, seconds)


def _drain(fd, limit: int = 4096) -> bytes:
    """What is in the pipe `fd` (at most `limit` bytes), without waiting."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while len(data) <= limit and (chunk := os.read(fd, limit)):
            data += chunk
    except BlockingIOError:
        pass
    return data


def _send(proc, data: bytes):
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the launcher failed; its status line says why


def _read_status(fd, deadline) -> str:
    buf = b""
    while b"\n" not in buf and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace").strip()


class _Capture:
    """The first and last `limit`/2 bytes of a stream, and how many bytes were dropped between them."""

    def __init__(self, limit: int):
        self.half = max(limit // 2, 1)
        self.head, self.tail, self.dropped = bytearray(), bytearray(), 0

    def add(self, data: bytes):
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        self.tail += data
        if len(self.tail) > self.half:
            self.dropped += len(self.tail) - self.half
            del self.tail[:len(self.tail) - self.half]

    def text(self) -> str:
        mark = f"\n[... {self.dropped} bytes of output dropped ...]\n".encode() if self.dropped else b""
        return bytes(self.head + mark + self.tail).decode(errors="replace")


def _collect(proc, deadline, max_output):
    """Read stdout and stderr until the program ends or the deadline; (stdout, stderr, timed_out)."""
    captures = {proc.stdout.fileno(): _Capture(max_output), proc.stderr.fileno(): _Capture(max_output)}
    timed_out = False
    with selectors.DefaultSelector() as sel:
        for fd in captures:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while sel.get_map() and not timed_out:
            left = deadline - time.monotonic()
            timed_out = left <= 0
            for key, _ in sel.select(max(left, 0)):
                data = os.read(key.fd, 1 << 16)
                if data:
                    captures[key.fd].add(data)
                else:
                    sel.unregister(key.fd)
    if not timed_out:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            timed_out = True
    out, err = (c.text() for c in captures.values())
    return out, err, timed_out


def _kill(proc):
    """Kill the launcher and its process group. In the namespaced mode the launcher's death kills the
    namespace's init (PR_SET_PDEATHSIG), and with it every process the program started."""
    for kill in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass
    proc.wait()
    for f in (proc.stdin, proc.stdout, proc.stderr):
        f.close()
