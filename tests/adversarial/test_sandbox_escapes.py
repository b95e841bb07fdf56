"""Model-written code trying to escape the code sandbox. Every attack must fail to escape.

Each attack runs twice: with the in-process audit hook, and without it (`audit_hook=False`), which is what
a program that found a way around the hook gets: the operating-system boundary must hold on its own.
The attacks that could hurt the evaluator itself run it in a child process, so that a successful escape
fails the test instead of the test run.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import subprocess
import sys
import sysconfig
import time
import uuid

import pytest

from llamalab.eval.sandbox import filesystem_view, run_program

# The evaluator, in a child process: reads the program on stdin and its run_program keywords as argv[1],
# prints the result and how much the evaluator grew (without torch, which the sandbox never loads).
EVALUATOR = r"""
import json, os, resource, sys
from llamalab.eval.sandbox import run_program
program = sys.stdin.read().replace("EVALUATOR_PID", str(os.getpid()))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
r = run_program(program, **json.loads(sys.argv[1]))
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"status": r.status, "stdout": r.stdout, "stderr": r.stderr, "seconds": r.seconds,
                  "grew_kb": grew}))
"""
EVALUATOR_MEMORY = 1 << 30


def evaluate_in_child(program: str, **kwargs) -> dict:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (EVALUATOR_MEMORY, EVALUATOR_MEMORY))
    p = subprocess.run([sys.executable, "-c", EVALUATOR, json.dumps(kwargs)], input=program, capture_output=True,
                       text=True, timeout=60, preexec_fn=limit)
    assert p.returncode == 0, f"the evaluator died ({p.returncode}): {p.stderr[-2000:]}"
    return json.loads(p.stdout)


@pytest.fixture(params=[True, False], ids=["with-hook", "os-boundary-only"])
def hook(request):
    return request.param


def processes_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(pid)
        except OSError:
            pass
    return found


def test_output_flood_keeps_the_evaluator_small():
    # the reproduction grew the evaluator from 245 MB to 8.6 GB in 3 s
    start = time.monotonic()
    r = evaluate_in_child("import sys\nb = 'x' * (1 << 20)\nwhile True:\n    sys.stdout.write(b)\n"
                          "    sys.stderr.write(b)", timeout=3, max_output=10_000)
    assert time.monotonic() - start < 30 and r["status"] == "timeout"
    assert r["grew_kb"] < 64 << 10, r["grew_kb"]
    for stream in ("stdout", "stderr"):
        assert len(r[stream]) < 10_100 and "bytes of output dropped" in r[stream]


def test_audit_hook_tables_are_out_of_reach():
    # the reproduction overwrote the hook's tables through sys.modules['__main__']
    target = os.path.join(os.path.dirname(os.__file__), f"llamalab-escape-{uuid.uuid4().hex}")
    program = (
        "import sys\nm = sys.modules['__main__']\n"
        "for name in ('REFUSED', 'PATH_EVENTS', 'WRITE_FLAGS', 'ROOT', 'inside', 'hook', 'refused'):\n"
        "    setattr(m, name, ())\n"
        "m.inside = lambda p: True\n")
    for attack in (f"open({target!r}, 'w').write('x')", "import subprocess\nsubprocess.run(['true'])",
                   "import ctypes", "import gc\ngc.get_objects()", "import os\nos.kill(1, 9)"):
        r = run_program(program + attack)
        assert not r.passed and "not allowed" in r.stderr, attack
    assert not os.path.exists(target)


def test_writes_and_deletes_outside_the_temp_dir_fail(tmp_path, hook):
    host_file, victim = tmp_path / "escaped.txt", tmp_path / "keep.txt"
    victim.write_text("keep")
    stdlib = os.path.dirname(os.__file__)
    probe = os.path.join(stdlib, f"llamalab-escape-{uuid.uuid4().hex}")
    attacks = [
        f"open({str(host_file)!r}, 'w').write('x')",
        f"import os\nos.remove({str(victim)!r})",
        # relative to a directory descriptor, which the audit hook cannot see
        "import os\nfd = os.open('/', os.O_RDONLY)\nos.open('escaped', os.O_WRONLY | os.O_CREAT, dir_fd=fd)",
        f"import os\nfd = os.open({stdlib!r}, os.O_RDONLY)\n"
        f"os.close(os.open({os.path.basename(probe)!r}, os.O_WRONLY | os.O_CREAT, dir_fd=fd))",
        f"import os\nfd = os.open({str(tmp_path)!r}, os.O_RDONLY)\nos.unlink('keep.txt', dir_fd=fd)",
        f"import os\nos.symlink({stdlib!r}, 'lib')\nopen('lib/{os.path.basename(probe)}', 'w').write('x')",
        # a child process, and C, both without the hook
        f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'open({str(host_file)!r}, \"w\")'], check=True)",
        f"import ctypes\nassert ctypes.CDLL(None).unlink({str(victim).encode()!r}) == 0",
    ]
    try:
        for attack in attacks:
            r = run_program(attack, audit_hook=hook)
            assert not r.passed, attack
            assert not host_file.exists() and victim.read_text() == "keep" and not os.path.exists(probe), attack
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def test_evaluator_cannot_be_signalled(hook):
    # the reproduction killed the evaluator with pidfd_send_signal(pidfd_open(getppid()), SIGKILL)
    program = ("import os, signal\n"
               "for pid in (os.getppid(), EVALUATOR_PID):\n"
               "    for send in (lambda: signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL),\n"
               "                 lambda: os.kill(pid, signal.SIGKILL)):\n"
               "        try:\n            send()\n        except Exception as e:\n            print(pid, e)\n"
               "print('still here')")
    r = evaluate_in_child(program, audit_hook=hook)  # fails inside if the evaluator died
    assert r["status"] in ("passed", "failed")


@pytest.mark.parametrize("then", ["exit", "hang"])
def test_every_descendant_dies_at_the_end(hook, then):
    # the reproduction: a child in its own session outlived the timeout and held the pipe (2 s -> 12 s)
    marker = f"llamalab-escape-{uuid.uuid4().hex}"
    program = (
        "import os, subprocess, sys, time\n"
        f"sleeper = [sys.executable, '-c', 'import time; time.sleep(60)  # {marker}']\n"
        "subprocess.Popen(sleeper, start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n        os.execv(sys.executable, sleeper)\n"
        "    os._exit(0)\n"
        "time.sleep(0.5)\n" + ("time.sleep(60)\n" if then == "hang" else ""))
    start = time.monotonic()
    r = run_program(program, timeout=2, audit_hook=hook)
    assert time.monotonic() - start < 20  # (the reproduction waited for the sleeper: 12 s and more)
    assert r.status == ("timeout" if then == "hang" and not hook else r.status)
    time.sleep(0.3)
    assert processes_with(marker) == []


def test_fork_bomb_is_bounded(hook):
    marker = f"llamalab-escape-{uuid.uuid4().hex}"
    program = ("import os, sys\nn = 0\n"
               "while n < 64:\n    try:\n        pid = os.fork()\n    except OSError:\n        break\n"
               f"    if pid == 0:\n        os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)  # {marker}'])\n"
               "    n += 1\nprint(n)")
    start = time.monotonic()
    r = run_program(program, timeout=3, max_processes=8, audit_hook=hook)
    assert time.monotonic() - start < 20
    assert r.passed and int(r.stdout) < 8 and (int(r.stdout) == 0 or not hook)
    time.sleep(0.3)
    assert processes_with(marker) == []


def test_files_of_the_machine_are_not_readable(tmp_path, hook):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-" + uuid.uuid4().hex)
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    program = ("import json, os\nfound = {}\n"
               f"for p in ({str(secret)!r}, {os.path.abspath(readme)!r}, '/etc/passwd', '/etc/hostname',\n"
               "          '/proc/1/environ', '/proc/self/mountinfo', '/sys/kernel/notes', os.path.expanduser('~/.bashrc')):\n"
               "    try:\n        found[p] = open(p, errors='replace').read()\n    except OSError:\n        pass\n"
               "print(json.dumps({'found': found, 'root': sorted(os.listdir('/'))}))")
    r = run_program(program, audit_hook=hook)
    assert r.passed, r.stderr
    seen = json.loads(r.stdout)
    assert seen["found"] == {}
    binds, symlinks = filesystem_view()
    top = {p.split("/")[1] for p in [*binds, *symlinks]}
    assert set(seen["root"]) == top | {"dev", "tmp"}


def test_no_network(hook):
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    abstract = socket.socket(socket.AF_UNIX)
    name = f"\0llamalab-escape-{uuid.uuid4().hex}"
    abstract.bind(name)
    abstract.listen()
    abstract.setblocking(False)
    program = ("import socket\nreached = []\n"
               f"for family, addr in ((socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_UNIX, {name!r})):\n"
               "    try:\n        socket.socket(family).connect(addr)\n        reached.append(addr)\n"
               "    except OSError:\n        pass\n"
               "print(reached)")
    try:
        r = run_program(program, audit_hook=hook)
        for s in (listener, abstract):
            with pytest.raises(BlockingIOError):
                s.accept()
        assert r.passed and r.stdout.strip() == "[]"
    finally:
        listener.close()
        abstract.close()


def test_no_privileges_inside():
    program = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nout = {}\n"
               "try:\n    os.setuid(0)\n    out['setuid'] = 'ok'\nexcept OSError:\n    pass\n"
               # each aimed at the program's own directory and parent (the namespace's init), so that
               # even a broken sandbox could not do harm with them
               "out['mount'] = libc.mount(b'none', os.getcwd().encode(), b'tmpfs', 0, None)\n"
               "out['ptrace'] = libc.ptrace(16, os.getppid(), 0, 0)\n"  # PTRACE_ATTACH
               "out['chroot'] = libc.chroot(b'.')\n"
               "print(out)")
    r = run_program(program, audit_hook=False)
    assert r.passed and r.stdout.strip() == str({"mount": -1, "ptrace": -1, "chroot": -1}), r.stdout + r.stderr


def test_memory_and_disk_are_bounded(hook):
    r = run_program("x = bytearray(8 << 30)", memory_mb=512, audit_hook=hook)
    assert not r.passed and "MemoryError" in r.stderr
    r = run_program("open('big', 'wb').write(bytes(200 << 20))", disk_mb=16, audit_hook=hook)
    assert not r.passed and "OSError" in r.stderr
    r = run_program("for i in range(100_000):\n    open(f'f{i}', 'w').close()", audit_hook=hook)
    assert not r.passed and "OSError" in r.stderr


def test_the_interpreter_view_is_read_only():
    binds = filesystem_view()[0]
    assert all(os.path.exists(p) for p in binds)
    assert any((os.path.dirname(os.__file__) + "/").startswith(p + "/") for p in binds)
    # every mount but /tmp and the devices is read-only (whatever the files' owners would allow)
    r = run_program(f"import os\nprint([p for p in ['/', *{binds!r}] if not os.statvfs(p).f_flag & os.ST_RDONLY])\n"
                    f"open({sysconfig.get_paths()['stdlib'] + '/this.py'!r}, 'a')", audit_hook=False)
    assert r.stdout.strip() == "[]"
    assert not r.passed and ("Read-only file system" in r.stderr or "Permission denied" in r.stderr)
