"""The sandbox that runs model-written code (HumanEval/MBPP): real subprocesses, real limits."""

import os
import time

from llamalab.eval.sandbox import run_program


def test_passing_and_failing_programs():
    ok = run_program("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('fine')")
    assert ok.passed and ok.stdout.strip() == "fine"
    bad = run_program("def add(a, b):\n    return a * b\nassert add(2, 3) == 5")
    assert bad.status == "failed" and "AssertionError" in bad.stderr


def test_infinite_loop_is_killed():
    start = time.monotonic()
    r = run_program("while True:\n    pass", timeout=1.0)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - start < 10


def test_fork_bomb_is_contained():
    before = len(os.listdir("/proc"))
    start = time.monotonic()
    r = run_program("import os\nwhile True:\n    os.fork()", timeout=3.0)
    assert not r.passed and "os.fork is not allowed" in r.stderr
    assert time.monotonic() - start < 10
    r = run_program("import multiprocessing as mp\nps = [mp.Process(target=print) for _ in range(100)]\n"
                    "[p.start() for p in ps]", timeout=3.0)
    assert not r.passed and "not allowed" in r.stderr
    r = run_program("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", timeout=3.0)
    assert not r.passed and "subprocess.Popen is not allowed" in r.stderr
    time.sleep(0.5)
    assert len(os.listdir("/proc")) < before + 20  # nothing left multiplying behind our back


def test_write_outside_temp_dir_is_blocked(tmp_path):
    target = tmp_path / "escaped.txt"
    for code in [f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nfd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)\nos.write(fd, b'x')",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')",
                 f"import shutil\nshutil.copyfile('program.py', {str(target)!r})"]:
        r = run_program(code)
        assert not r.passed and "not allowed" in r.stderr, code
        assert not target.exists(), code
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    r = run_program(f"import os\nos.remove({str(victim)!r})")
    assert not r.passed and victim.read_text() == "keep"
    # inside its own fresh directory, files work normally
    r = run_program("open('out.txt', 'w').write('hi')\nprint(open('out.txt').read())\nimport os\nos.remove('out.txt')")
    assert r.passed and r.stdout.strip() == "hi"


def test_no_network_and_memory_limit():
    r = run_program("import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert not r.passed
    r = run_program("x = bytearray(8 << 30)", memory_mb=512)
    assert not r.passed and "MemoryError" in r.stderr
