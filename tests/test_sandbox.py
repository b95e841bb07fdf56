"""The sandbox that runs model-written code (HumanEval/MBPP): real subprocesses, real limits.
(The escapes an adversarial program would try are in tests/adversarial/.)"""

import os
import shutil
import subprocess
import sys
import time

import pytest

from llamalab.eval import get_task
from llamalab.eval.sandbox import run_program


def test_passing_and_failing_programs():
    ok = run_program("def add(a, b):\n    return a + b\nassert add(2, 3) == 5\nprint('fine')")
    assert ok.passed and ok.stdout.strip() == "fine"
    bad = run_program("def add(a, b):\n    return a * b\nassert add(2, 3) == 5")
    assert bad.status == "failed" and "AssertionError" in bad.stderr
    r = run_program("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok')")  # bytes that are not UTF-8
    assert r.passed and r.stdout.endswith(" ok")


def test_infinite_loop_is_killed():
    start = time.monotonic()
    r = run_program("while True:\n    pass", timeout=1.0)
    assert r.status == "timeout" and not r.passed
    assert time.monotonic() - start < 10


def test_memory_limit_and_private_directory():
    r = run_program("x = bytearray(8 << 30)", memory_mb=512)
    assert not r.passed and "MemoryError" in r.stderr
    # inside its own fresh directory, files work normally; nothing is left for the next program
    r = run_program("open('out.txt', 'w').write('hi')\nprint(open('out.txt').read())")
    assert r.passed and r.stdout.strip() == "hi"
    r = run_program("import os\nprint(sorted(os.listdir('.')))")
    assert r.passed and r.stdout.strip() == "['program.py']"


def test_output_is_capped_and_marked():
    r = run_program("import sys\nsys.stdout.write('a' * 5000 + 'b' * 100_000 + 'c' * 5000)", max_output=10_000)
    assert r.passed and r.stdout.startswith("a" * 5000) and r.stdout.endswith("c" * 5000)
    assert "\n[... 100000 bytes of output dropped ...]\n" in r.stdout and "bb" not in r.stdout


def test_audit_hook_layer_refuses_processes_writes_and_signals():
    r = run_program("import os\nwhile True:\n    os.fork()", timeout=3.0)
    assert not r.passed and "os.fork is not allowed" in r.stderr
    r = run_program("import multiprocessing as mp\nps = [mp.Process(target=print) for _ in range(100)]\n"
                    "[p.start() for p in ps]", timeout=3.0)
    assert not r.passed and "not allowed" in r.stderr
    r = run_program("import subprocess\nsubprocess.run(['sh', '-c', ':(){ :|:& };:'])", timeout=3.0)
    assert not r.passed and "subprocess.Popen is not allowed" in r.stderr
    r = run_program(f"open({os.path.dirname(os.__file__) + '/escaped.py'!r}, 'w')")
    assert not r.passed and "outside the sandbox directory is not allowed" in r.stderr
    r = run_program("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)")
    assert not r.passed and "os.kill is not allowed" in r.stderr


def test_humaneval_canonical_solutions_pass_and_wrong_ones_fail(benchmarks_dir):
    task = get_task("humaneval")
    docs = task.docs(benchmarks_dir)
    for i in (0, 32, 53, 100, 163):
        doc, other = docs[i], docs[(i + 1) % len(docs)]
        it = task.item(doc)
        assert run_program(it.prefix + doc["canonical_solution"] + it.tests).passed, doc["task_id"]
        # the next problem's solution, and an empty body, are wrong answers here
        assert not run_program(it.prefix + other["canonical_solution"] + it.tests).passed, doc["task_id"]
        assert not run_program(it.prefix + "    pass\n" + it.tests).passed, doc["task_id"]


NO_USER_NAMESPACES = "echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\""


def test_without_namespaces_code_is_refused_unless_the_weak_mode_is_asked_for(tmp_path):
    # a user namespace (ours, so the host is untouched) in which no further user namespace may be made
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed to take namespaces away for this test"
    program = "from llamalab.eval.sandbox import run_program\nprint(run_program('print(6 * 7)').stdout)"
    cmd = [unshare, "--user", "--map-root-user", "sh", "-c", NO_USER_NAMESPACES, "sh", sys.executable, "-c", program]
    env = {k: v for k, v in os.environ.items() if k != "LLAMALAB_SANDBOX"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode != 0 and "cannot run model-written code safely here" in r.stderr
    assert "LLAMALAB_SANDBOX=weak" in r.stderr
    r = subprocess.run(cmd, capture_output=True, text=True, env={**env, "LLAMALAB_SANDBOX": "weak"}, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr


def test_weak_mode_keeps_the_limits_and_the_hook(monkeypatch):
    monkeypatch.setenv("LLAMALAB_SANDBOX", "weak")
    assert run_program("print(6 * 7)").stdout.strip() == "42"
    assert run_program("while True:\n    pass", timeout=1.0).status == "timeout"
    r = run_program(f"open({os.path.dirname(os.__file__) + '/escaped.py'!r}, 'w')")
    assert not r.passed and "not allowed" in r.stderr
    r = run_program("print('x' * 100_000)", max_output=1000)
    assert len(r.stdout) < 1100 and "dropped" in r.stdout


@pytest.mark.parametrize("value", ["", "strict"])
def test_only_weak_opts_out(monkeypatch, value):
    monkeypatch.setenv("LLAMALAB_SANDBOX", value)
    r = run_program("import os\nprint(os.listdir('/'))")
    assert r.passed and "work" not in r.stdout and "etc" not in r.stdout


EXITS = {"os._exit": "import os\nos._exit(0)\n", "SystemExit": "raise SystemExit(0)\n", "sys.exit": "import sys\nsys.exit(0)\n",
         "exit": "exit(0)\n", "atexit": "import atexit, os\natexit.register(os._exit, 0)\nraise SystemExit(0)\n",
         "guess the pipe": "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'0' * 32)\n"
                           "    except OSError:\n        pass\nos._exit(0)\n"}


@pytest.mark.parametrize("weak", [False, True], ids=["namespaces", "weak"])
@pytest.mark.parametrize("leave", list(EXITS))
def test_a_completion_that_leaves_before_its_tests_fails(benchmarks_dir, monkeypatch, leave, weak):
    # the exit status alone said "passed": the tests never ran
    if weak:
        monkeypatch.setenv("LLAMALAB_SANDBOX", "weak")
    task = get_task("humaneval")
    doc = task.docs(benchmarks_dir)[0]
    it = task.item(doc)
    body = "\n".join("    " + line for line in EXITS[leave].splitlines())
    r = run_program(it.prefix + body + "\n" + it.tests)
    assert r.returncode == 0 and not r.completed and r.status == "failed" and not r.passed, r
    r = run_program(it.prefix + doc["canonical_solution"] + it.tests)  # a genuine pass still passes
    assert r.passed and r.completed


def test_mbpp_exit_before_the_asserts_fails(benchmarks_dir):
    task = get_task("mbpp")
    doc = task.docs(benchmarks_dir)[0]
    it = task.item(doc)
    assert not run_program(it.prefix + "import os\nos._exit(0)\n" + it.tests).passed
    assert run_program(it.prefix + doc["code"] + "\n" + it.tests).passed
