"""The thread policy (`llamalab.threads`): the count from the CPUs available (affinity mask, cgroup quota),
`--threads` / LLAMALAB_THREADS / OMP_NUM_THREADS, and decoding beside a busy process."""

import os
import subprocess
import sys

import pytest
import torch

from llamalab import threads
from llamalab.cli import main

CPUS = sorted(os.sched_getaffinity(0))
# a child that reports the count the policy chose and the count torch then runs with
CHOSEN = """
from llamalab import threads
policy = threads.configure(None)
import torch
threads.adapt()
print(policy.threads, policy.ceiling, torch.get_num_threads())
"""


def env(**extra):
    """This environment without a thread request (the suite runs with OMP_NUM_THREADS=1), plus `extra`."""
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", threads.ENV)}
    return {**base, **extra}


def run_under_mask(mask, code=CHOSEN, **extra):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env(**extra),
                         preexec_fn=lambda: os.sched_setaffinity(0, mask))
    assert out.returncode == 0, out.stderr
    return out


@pytest.mark.parametrize("size", sorted({1, len(CPUS)}))
def test_auto_count_follows_the_affinity_mask(size):
    """Under a mask of `size` CPUs (as `taskset` sets it), auto uses at most that many threads, torch included."""
    mask = set(CPUS[:size])
    chosen, ceiling, torch_count = map(int, run_under_mask(mask).stdout.split())
    assert ceiling == size and 1 <= chosen <= size and torch_count == chosen


def test_requests_override_auto_in_order():
    """--threads beats LLAMALAB_THREADS, which beats OMP_NUM_THREADS; a request is fixed (not adapted)."""
    one = set(CPUS[:1])
    assert run_under_mask(one, OMP_NUM_THREADS="3").stdout.split() == ["3", "3", "3"]  # torch runs with it too
    light = CHOSEN.replace("import torch", "").replace("torch.get_num_threads()", "policy.fixed")  # no torch: quicker
    assert run_under_mask(one, light, LLAMALAB_THREADS="2", OMP_NUM_THREADS="3").stdout.split() == ["2", "2", "True"]
    auto = run_under_mask(one, light, LLAMALAB_THREADS="auto", OMP_NUM_THREADS="3")
    assert auto.stdout.split() == ["1", "1", "False"]
    code = light.replace("configure(None)", "configure(4)")
    assert run_under_mask(one, code, LLAMALAB_THREADS="2").stdout.split() == ["4", "4", "True"]


def test_configure_and_release_in_process():
    before = torch.get_num_threads()
    with threads.policy(3) as chosen:
        threads.adapt()
        assert chosen.fixed and torch.get_num_threads() == 3 and threads.current() is chosen
    assert threads.current() is None and torch.get_num_threads() == before


def test_cli_threads_flag_and_env_are_logged_once(smollm2_gguf, tmp_path):
    """`--threads` on a command that runs a model: the count and why, one line on stderr."""
    cmd = [sys.executable, "-m", "llamalab", "generate", "--model", str(smollm2_gguf), "--prompt", "Paris is",
           "--max-new-tokens", "3", "--no-stream"]
    flag = subprocess.run(cmd + ["--threads", "1"], capture_output=True, text=True, timeout=300,
                          env=env(LLAMALAB_THREADS="2"))
    assert flag.returncode == 0, flag.stderr
    assert [line for line in flag.stderr.splitlines() if "thread" in line] == ["llamalab: 1 thread (--threads 1)"]
    var = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(LLAMALAB_THREADS="2"))
    assert "llamalab: 2 threads (LLAMALAB_THREADS 2)" in var.stderr.splitlines(), var.stderr
    assert var.stdout == flag.stdout  # greedy: the same text with 1 or 2 threads


@pytest.mark.parametrize("argv, message", [
    (["perplexity", "--model", "m.gguf", "--input", "t.txt", "--threads", "0"], "--threads must be >= 1, got 0"),
    (["quantize", "--model", "m.gguf", "--bits", "8", "--out", "o.gguf", "--threads", "-2"], "--threads must be >= 1"),
])
def test_bad_thread_counts_are_one_error_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


def test_bad_env_count_is_one_error_line(monkeypatch, capsys):
    monkeypatch.setenv(threads.ENV, "many")
    assert main(["data", "prepare", "--demo", "--tokenizer", "t", "--out", "o"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "LLAMALAB_THREADS='many' is not a thread count" in err, err


def test_cgroup_quota_v2_and_v1(tmp_path):
    """The quota as the kernel's files state it: v2 `cpu.max` (the tightest along the path), v1 cfs files."""
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "cpu.max").write_text("250000 100000\n")
    (tmp_path / "a" / "b" / "cpu.max").write_text("max 100000\n")
    (tmp_path / "v2").write_text("0::/a/b\n")
    assert threads.cgroup_quota(str(tmp_path), str(tmp_path / "v2")) == 2.5
    (tmp_path / "a" / "b" / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota(str(tmp_path), str(tmp_path / "v2")) == 1.5
    v1 = tmp_path / "cpu,cpuacct" / "job"
    v1.mkdir(parents=True)
    (v1 / "cpu.cfs_quota_us").write_text("50000\n")
    (v1 / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "v1").write_text("4:memory:/job\n3:cpu,cpuacct:/job\n")
    assert threads.cgroup_quota(str(tmp_path), str(tmp_path / "v1")) == 0.5
    (v1 / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert threads.cgroup_quota(str(tmp_path), str(tmp_path / "v1")) is None


def busy(cpu=None):
    """One busy single-threaded process (pinned to `cpu` if given)."""
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pin)


ADAPTS = """
import time
from llamalab import threads
policy = threads.configure(None, interval=0.3)
import torch
x = torch.randn(256, 256)
t = time.monotonic()
while time.monotonic() - t < 1.5:
    threads.adapt()
    x @ x
print(policy.threads, round(policy.others, 2), torch.get_num_threads())
"""


@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs")
def test_auto_gives_a_busy_process_its_cpu():
    """Beside a process busy on one of our 2 CPUs, auto measures it and runs with 1 thread (torch too)."""
    mask = set(CPUS[:2])
    hog = busy(CPUS[1])
    try:
        chosen, others, torch_count = run_under_mask(mask, ADAPTS).stdout.split()
    finally:
        hog.kill()
        hog.wait()
    assert chosen == "1" and float(others) >= 0.5 and torch_count == "1", (chosen, others)


def test_decoding_completes_beside_a_busy_process(smollm2_gguf):
    """`generate` on the auto policy next to a busy single-threaded process finishes (no speed asserted: the
    old default of 2 spinning threads could take minutes here)."""
    hog = busy()
    try:
        out = subprocess.run([sys.executable, "-m", "llamalab", "generate", "--model", str(smollm2_gguf), "--prompt",
                              "The capital of France is", "--max-new-tokens", "16", "--ignore-eos", "--no-stream"],
                             capture_output=True, text=True, timeout=600, env=env())
    finally:
        hog.kill()
        hog.wait()
    assert out.returncode == 0 and out.stdout.strip(), out.stderr
    assert any(line.startswith("llamalab: ") and "thread" in line for line in out.stderr.splitlines()), out.stderr


@pytest.mark.parametrize("busy_cpus, ours, expected", [(0.0, 1.9, 4), (0.3, 1.0, 4), (1.0, 3.0, 3), (2.6, 1.4, 1),
                                                       (9.0, 0.5, 1)])
def test_measured_count_is_cpus_minus_what_others_use(monkeypatch, busy_cpus, ours, expected):
    """Over one interval on 4 CPUs: the CPUs' busy time minus our own is the others' use; quiet gives all 4."""
    policy = threads.Policy(4, 4, False, "test", (0, 1, 2, 3), interval=1.0, _last=(0.0, 100.0, 10.0))
    monkeypatch.setattr(threads, "_sample", lambda cpus: (1.0, 100.0 + busy_cpus + ours, 10.0 + ours))
    monkeypatch.setattr(threads.time, "monotonic", lambda: 1.0)
    assert threads.measure(policy) == expected and policy.others == pytest.approx(busy_cpus)
    assert threads.measure(policy) is None  # measured too recently


def test_change_notice_only_for_a_drop_not_for_the_return_to_the_ceiling(monkeypatch, capsys):
    """The count dropped before the policy's line was said (so the line said 3 of 4); the others then go quiet:
    back to 4 is no "other processes are using" notice. The first drop after that is said, once."""
    policy = threads.Policy(3, 4, False, "test", (0, 1, 2, 3), interval=1.0, logged=True, _last=(0.0, 100.0, 10.0))
    clock = {"t": 0.0, "busy": 100.0}

    def sample(cpus):  # `others` CPUs busy over each 1 s interval; our own process idle
        return clock["t"], clock["busy"], 10.0

    monkeypatch.setattr(threads, "_sample", sample)
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads, "_apply", lambda p: None)  # this test process's torch count stays as it is
    monkeypatch.setattr(threads, "_policy", policy)

    def step(others):
        clock["t"] += 1.0
        clock["busy"] += others
        threads.adapt()
        return policy.threads, capsys.readouterr().err

    assert step(0.0) == (4, "")  # back to the ceiling: nothing to announce
    count, err = step(2.0)
    assert count == 2 and "other processes are using 2.0 of the 4 CPUs: 2 threads while they do" in err, err
    assert step(0.0) == (4, "") and step(1.0) == (3, "")  # said once
