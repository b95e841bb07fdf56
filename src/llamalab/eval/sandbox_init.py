"""The sandbox's launcher: run as a script (`python -I -S sandbox_init.py CONFIG`) by sandbox.py, never imported.

It reads a nonce line and the program from stdin and runs the program in a fresh set of Linux namespaces
(its standard input holds the nonce, which its bootstrap takes and writes to the config's "done" pipe once
the program has run to its end):

    launcher (the evaluator's child, its own session)
      unshare: user, mount, PID, network, IPC and UTS namespaces; map one unprivileged user
      └── init (PID 1 of the new PID namespace; dies with the launcher; when it exits the kernel kills
          │     every process left in the namespace)
          │  root = a read-only tmpfs holding the interpreter and the system's shared libraries (read-only
          │  binds), /dev/{null,zero,full,random,urandom}, and /tmp: a private, size-limited tmpfs
          └── python -I -S -c BOOTSTRAP  (the program: unprivileged, no capabilities, no_new_privs,
                                       rlimits on CPU, memory, file size, open files and processes)

Nothing of the host's filesystem but the interpreter is visible, the network namespace has no
interface up, and the evaluator is in no namespace the program can name. Setup errors are written to
the status descriptor (config "status_fd") as one line "error: ..."; "ready" means the program runs.
With config "isolate" false (the weak mode) only the limits and the audit hook apply.
Standard library only: this runs with `-I -S` before any site-packages exist for it.
"""

import ctypes
import json
import os
import resource
import select
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "arm64": 41, "riscv64": 41}
# statvfs flags a bind mount inherits and a read-only remount must keep (the kernel refuses to drop them)
KEPT_FLAGS = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC),
              (os.ST_NOATIME, MS_NOATIME), (os.ST_NODIRATIME, MS_NODIRATIME), (os.ST_RELATIME, MS_RELATIME))
NOBODY = 65534
DEVICES = ("null", "zero", "full", "random", "urandom")

libc = ctypes.CDLL(None, use_errno=True)


def _check(ret, what):
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _b(s):
    return None if s is None else os.fsencode(s)


def mount(source, target, fstype, flags, data=None):
    _check(libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data)), f"mount {target}")


def prctl(option, value):
    _check(libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0), f"prctl {option}")


def nobody_exists():
    """Whether "nobody" has an id here (not so in a container's user namespace that maps only root)."""
    with open("/proc/self/uid_map") as f:
        return any(int(first) <= NOBODY < int(first) + int(count) for first, _, count in map(str.split, f))


def enter_namespaces():
    """New user/mount/PID/network/IPC/UTS namespaces for a child of this process. Returns the child's pid
    in the parent, 0 in the child. The program will run as user and group 1000 inside: for an
    unprivileged user, that is the user itself (the only id it may map); for root, "nobody" (so that
    RLIMIT_NPROC, which root ignores, applies), with root mapped to itself for the launcher's setup
    (a root that is root of a user namespace mapping only itself is treated as unprivileged).
    The parent writes the maps: mapping an id other than one's own needs CAP_SETUID out here."""
    if os.geteuid() == 0 and nobody_exists():
        os.setgroups([])  # an unprivileged user cannot drop these; root must not carry group 0 inside
        uid_map = gid_map = f"0 0 1\n1000 {NOBODY} 1"
    else:
        uid_map, gid_map = f"1000 {os.geteuid()} 1", f"1000 {os.getegid()} 1"
    unshared_r, unshared_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(unshared_r), os.close(mapped_w)
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
        _check(libc.unshare(flags), "unshare")
        os.write(unshared_w, b"1")
        if os.read(mapped_r, 1) != b"1":
            raise OSError("the launcher could not map the sandbox's user")
        return 0
    os.close(unshared_w), os.close(mapped_r)
    if os.read(unshared_r, 1) == b"1":  # else the child failed and reports why
        for name, text in (("setgroups", "deny"), ("uid_map", uid_map), ("gid_map", gid_map)):
            with open(f"/proc/{pid}/{name}", "w") as f:
                f.write(text)
        os.write(mapped_w, b"1")
    return pid


def bind(source, target, read_only=True):
    """Bind `source` at `target` (created as a mount point), nosuid, read-only unless asked otherwise."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND)
    kept = sum(ms for st, ms in KEPT_FLAGS if os.statvfs(target).f_flag & st)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | kept | (MS_RDONLY if read_only else 0))


def build_root(root, cfg, program):
    """Fill the empty directory `root` with the program's view of the filesystem, then make it `/`."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for path in cfg["binds"]:
        bind(path, root + path)
    for link, target in cfg["symlinks"].items():
        os.makedirs(os.path.dirname(root + link), exist_ok=True)
        os.symlink(target, root + link)
    for name in DEVICES:
        bind("/dev/" + name, root + "/dev/" + name, read_only=False)
    os.mkdir(root + "/tmp")
    mount("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
          f"size={cfg['tmp_bytes']},nr_inodes=4096,mode=700,uid=1000,gid=1000")
    with open(root + "/tmp/program.py", "wb") as f:
        f.write(program)
    os.chown(root + "/tmp/program.py", 1000, 1000)
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    pivot = SYS_PIVOT_ROOT.get(os.uname().machine)
    if pivot is None:
        raise OSError(f"pivot_root: unknown system call number on {os.uname().machine}")
    os.chdir(root)
    _check(libc.syscall(pivot, b".", b"."), "pivot_root")  # the old root now sits on top of the new one
    _check(libc.umount2(b".", MNT_DETACH), "umount old root")
    os.chdir("/tmp")


def limit(cfg):
    lim = cfg["limits"]
    for name, value in (("CPU", lim["cpu_seconds"]), ("AS", lim["memory_bytes"]), ("FSIZE", lim["file_bytes"]),
                        ("NPROC", lim["processes"]), ("NOFILE", 256), ("CORE", 0)):
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
    prctl(PR_SET_NO_NEW_PRIVS, 1)


def start_program(cfg, status):
    """Fork the program: as user 1000 (in the namespaced mode), limited, `python -I -S -c BOOTSTRAP`.
    Setup errors go to the status line; once "ready" is written, only the program's own output follows."""
    pid = os.fork()
    if pid:
        return pid
    try:
        if cfg["isolate"]:
            os.setresgid(1000, 1000, 1000)
            os.setresuid(1000, 1000, 1000)  # capabilities in the namespace are gone at exec: not uid 0 there
        limit(cfg)
        env = {"PATH": "/nonexistent", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "HOME": os.getcwd(),
               "TMPDIR": os.getcwd()}
        argv = [cfg["exe"], "-I", "-S", "-B", "-c", cfg["bootstrap"]]
    except BaseException as e:  # noqa: BLE001
        os.write(status, f"error: {e}\n".encode())
        os._exit(125)
    os.write(status, b"ready\n")
    try:
        os.execve(argv[0], argv, env)  # the status descriptor closes here (close-on-exec)
    except OSError as e:
        os.write(2, f"sandbox: cannot start {argv[0]}: {e}\n".encode())
    os._exit(127)


def wait_for(pid):
    """Reap every child (PID 1 inherits orphans) until `pid` exits; its exit code, 128+N for signal N."""
    while True:
        child, status = os.waitpid(-1, 0)
        if child == pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def forbid_nested_namespaces():
    """No user namespaces inside ours (less kernel surface for the program). The limit is per user
    namespace, so this changes nothing outside; where /proc/sys is read-only it stays an unused layer:
    mounts made by a more privileged namespace stay locked for any nested one."""
    try:
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    except OSError:
        pass


def init(cfg, program, status, parent_alive):
    """PID 1 of the new PID namespace."""
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if select.select([parent_alive], [], [], 0)[0]:  # the launcher died before the line above
        os._exit(1)
    prctl(PR_SET_DUMPABLE, 0)
    signal.signal(signal.SIGALRM, lambda *_: os._exit(124))
    signal.alarm(int(cfg["limits"]["cpu_seconds"]) + 5)
    forbid_nested_namespaces()
    build_root(cfg["mountpoint"], cfg, program)
    pid = start_program(cfg, status)
    os.close(status)
    return wait_for(pid)


def main():
    cfg = json.loads(sys.argv[1])
    status = cfg["status_fd"]
    os.set_inheritable(status, False)  # the program must not hold it
    try:
        nonce, _, program = sys.stdin.buffer.read().partition(b"\n")
        # the program's standard input: the evaluator's nonce, which its bootstrap reads first (then EOF)
        nonce_r, nonce_w = os.pipe()
        os.write(nonce_w, nonce + b"\n")
        os.close(nonce_w)
        os.dup2(nonce_r, 0)
        os.close(nonce_r)
        if not cfg["isolate"]:
            os.chdir(cfg["mountpoint"])
            with open("program.py", "wb") as f:
                f.write(program)
            pid = start_program(cfg, status)
            os.close(status)
            os._exit(wait_for(pid))
        child = enter_namespaces()
        if child:  # the launcher: wait
            os.close(status)
            os._exit(wait_for(child))
        parent_alive, keep = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(keep)
            try:
                os._exit(init(cfg, program, status, parent_alive))
            except BaseException as e:  # noqa: BLE001 - report any setup failure on the status line
                os.write(status, f"error: {e}\n".encode())
                os._exit(125)
        os.close(status)
        os._exit(wait_for(pid))
    except Exception as e:  # noqa: BLE001
        os.write(status, f"error: {e}\n".encode())
        os._exit(125)


if __name__ == "__main__":
    main()
