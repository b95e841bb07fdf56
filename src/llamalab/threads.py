"""The thread policy: how many threads a command that runs a model uses, on a machine it may share.

    threads.configure(None)   # auto: the CPUs this process may use, fewer while other processes keep them busy
    threads.configure(4)      # exactly 4 (also `--threads 4`, LLAMALAB_THREADS=4, OMP_NUM_THREADS=4)
    threads.adapt()           # between steps, in the thread that computes: applies the current count

Why: torch runs its kernels on an OpenMP team whose threads spin at every barrier. With as many threads as
cores and one other busy process beside them, a thread is often descheduled while its partners spin waiting
for it, and every one of the hundreds of parallel regions of a decoding step waits out a scheduler slice:
decoding fell from ~60 to ~1 token/s, training tenfold. One thread fewer than the busy cores leaves the other
process its core and the team never waits (measurements: README, "Sharing the machine").

The rule, in order:
1. a request: `--threads N` (commands that run a model), else LLAMALAB_THREADS, else OMP_NUM_THREADS (as torch
   reads it). A request is fixed: the policy does not adapt it. LLAMALAB_THREADS=auto asks for rule 2.
2. auto: the CPUs available — the affinity mask (`os.sched_getaffinity`: taskset, cpusets), capped by a cgroup
   CPU quota (v2 `cpu.max`, v1 `cpu.cfs_quota_us`) rounded up. Quiet, that is every core, as before.
   Then, every `interval` seconds of work, `adapt()` measures how much of those CPUs other processes used
   (busy time of the CPUs in the mask from /proc/stat, minus this process's own CPU time; the time of niced
   processes not counted when this one is not niced: they yield to us) and runs with
   round(available − others) threads, at least 1, at most the available count. Back to all of them when the
   others go quiet.

OpenMP's spinning itself is left at libgomp's default: a short spin (GOMP_SPINCOUNT) or a passive wait
slows quiet decoding by half (every region then pays a sleep and a wake-up) and helps less under contention
than a thread fewer. torch reads its thread count per calling thread, so `adapt()` must be called by the
thread that runs the model (the decoding engine, the training loop and the scorers do).

This module is imported before torch by the command line and never imports torch itself: it applies the count
(torch.set_num_threads) once torch is loaded, at the first `adapt()`, before the first step.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from dataclasses import dataclass, field

ENV = "LLAMALAB_THREADS"


@dataclass
class Policy:
    threads: int  # the count in force
    ceiling: int  # the most it may use (auto: the CPUs available)
    fixed: bool  # requested: never adapted
    why: str
    cpus: tuple[int, ...] = ()  # the CPUs of the affinity mask (auto)
    interval: float = 0.5  # seconds between measurements (auto)
    applied: int = 0  # the count torch was last given (0: not yet)
    others: float = 0.0  # CPUs the other processes used over the last measurement
    changes: int = 0
    logged: bool = False
    calls: int = 0  # adapt() calls so far
    before: int = 0  # torch's count in the configuring thread before (0: torch was not loaded)
    _last: tuple | None = field(default=None, repr=False)  # (wall time, busy CPU seconds, our CPU seconds)

    def line(self) -> str:
        busy = f"; other processes are using {self.others:.1f} of them now" if self.threads < self.ceiling else ""
        return f"llamalab: {self.threads} thread{'s' * (self.threads != 1)} ({self.why}{busy})"


_policy: Policy | None = None


def cgroup_quota(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """CPUs the cgroup's quota allows (the tightest along the cgroup path), or None without one."""
    try:
        lines = open(proc_cgroup).read().splitlines()
    except OSError:
        return None
    quotas = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: cpu.max = "QUOTA PERIOD" or "max PERIOD", in each directory up the path
            parts = path.strip("/").split("/") if path.strip("/") else []
            for i in range(len(parts), -1, -1):
                quota, period = _read_words(os.path.join(root, *parts[:i], "cpu.max"), 2)
                if quota not in (None, "max"):
                    quotas.append(int(quota) / int(period))
        elif "cpu" in controllers.split(","):  # v1
            for base in (os.path.join(root, controllers, path.lstrip("/")), os.path.join(root, controllers)):
                (quota,), (period,) = _read_words(os.path.join(base, "cpu.cfs_quota_us"), 1), _read_words(
                    os.path.join(base, "cpu.cfs_period_us"), 1)
                if quota is not None and period is not None and int(quota) > 0:
                    quotas.append(int(quota) / int(period))
                    break
    return min(quotas) if quotas else None


def _read_words(path: str, n: int) -> tuple:
    try:
        words = open(path).read().split()
    except (OSError, ValueError):
        return (None,) * n
    return tuple(words[:n]) if len(words) >= n else (None,) * n


def available_cpus() -> tuple[int, str]:
    """(CPUs this process may use, why): the affinity mask, capped by a cgroup quota rounded up."""
    try:
        n, why = len(os.sched_getaffinity(0)), "CPUs in the affinity mask"
    except (AttributeError, OSError):  # not Linux
        n, why = os.cpu_count() or 1, "CPUs"
    quota = cgroup_quota()
    if quota is not None and math.ceil(quota) < n:
        return max(1, math.ceil(quota)), f"the cgroup's CPU quota of {quota:g}"
    return n, f"{n} {why}"


def requested(threads: int | None) -> tuple[int | None, str]:
    """The count asked for and where it came from: --threads, else LLAMALAB_THREADS, else OMP_NUM_THREADS."""
    from .errors import LlamalabError

    if threads is not None:
        if threads < 1:
            raise LlamalabError(f"--threads must be >= 1, got {threads}")
        return threads, "--threads"
    for name in (ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if name == ENV and value.lower() == "auto":  # the policy, whatever OMP_NUM_THREADS says
            break
        if value:
            if not value.isdigit() or int(value) < 1:
                if name == ENV:
                    raise LlamalabError(f"{ENV}={value!r} is not a thread count: set a number >= 1 or 'auto'")
                continue  # OMP_NUM_THREADS lists ("4,2") are OpenMP's business
            return int(value), name
    return None, ""


def configure(threads: int | None = None, *, interval: float = 0.5) -> Policy:
    """Choose the thread count (see the module's rule) for this process; torch gets it now if it is loaded,
    else at the first `adapt()`. Returns the policy; `adapt()` keeps it."""
    global _policy
    n, source = requested(threads)
    if n is not None:
        _policy = Policy(n, n, True, f"{source} {n}")
    else:
        n, why = available_cpus()
        try:
            cpus = tuple(sorted(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            cpus = ()
        _policy = Policy(n, n, False, f"auto: {why}; fewer while other processes keep them busy", cpus, interval)
        _policy._last = _sample(cpus)
    if "torch" in sys.modules:
        _policy.before = torch_threads()
        _apply(_policy)
    return _policy


@contextlib.contextmanager
def policy(threads: int | None = None):
    """`configure(threads)` for the duration of a command (the command line's `main`); afterwards no policy,
    and this thread's torch count as it was (so that commands run in one process leave nothing behind)."""
    chosen = configure(threads)
    try:
        yield chosen
    except BaseException:
        release()
        raise
    if chosen.calls and not chosen.logged:  # a command of one step: said at its end
        _log(chosen)
    release()


def release() -> None:
    global _policy
    chosen, _policy = _policy, None
    if chosen is not None and chosen.before and torch_threads() != chosen.before:
        import torch

        torch.set_num_threads(chosen.before)


def torch_threads() -> int:
    """torch's thread count in this thread, or 0 when torch is not loaded."""
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else 0


def current() -> Policy | None:
    return _policy


def _sample(cpus: tuple[int, ...]) -> tuple[float, float, float] | None:
    """(now, busy CPU seconds of `cpus` since boot, this process's CPU seconds), or None where /proc/stat
    cannot be read."""
    try:
        with open("/proc/stat") as f:
            lines = [line for line in f if line.startswith("cpu") and line[3:4].isdigit()]
    except OSError:
        return None
    wanted, busy = set(cpus), 0
    # user nice system idle iowait irq softirq steal: all but idle and iowait are busy (steal too: the hypervisor
    # gave that time to another machine) — except `nice`, the time of lower-priority processes, when this one is
    # not niced itself: the scheduler gives them what our threads leave over (a `nice 19` job costs our team ~1%),
    # so they take no thread from us
    fields = (0, 2, 5, 6, 7) if os.getpriority(os.PRIO_PROCESS, 0) <= 0 else (0, 1, 2, 5, 6, 7)
    for line in lines:
        words = line.split()
        if not wanted or int(words[0][3:]) in wanted:
            busy += sum(int(words[1 + i]) for i in fields)
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), time.process_time()


def measure(policy: Policy) -> int | None:
    """The count the CPUs allow now (None: measured too recently, or cannot measure): round(available − the
    CPUs other processes used since the last measurement), within 1..ceiling."""
    last = policy._last
    now = time.monotonic()
    if last is None or now - last[0] < policy.interval:
        return None
    sample = _sample(policy.cpus)
    if sample is None:
        return None
    policy._last = sample
    wall = sample[0] - last[0]
    policy.others = max(0.0, ((sample[1] - last[1]) - (sample[2] - last[2])) / wall)
    return max(1, min(policy.ceiling, round(policy.ceiling - policy.others)))


def adapt(announce: bool = False) -> None:
    """Between steps, in the thread that runs the model: re-measure (auto, at most every `interval` seconds)
    and hand torch the count. Nothing unless `configure` was called (the command line does). The policy's line
    is logged at the second call (the first step ran: a command that fails on its input says only its error),
    or at once with `announce` (decoding: before the first token is printed)."""
    policy = _policy
    if policy is None:
        return
    if not policy.fixed:
        n = measure(policy)
        if n is not None and n != policy.threads:
            away = policy.logged and n < policy.ceiling  # a change away from the count the line announced
            if away and policy.changes == 0 and _is_main():  # the first one is said once; a return is not
                print(f"llamalab: other processes are using {policy.others:.1f} of the {policy.ceiling} CPUs: "
                      f"{n} thread{'s' * (n != 1)} while they do (back to {policy.ceiling} when they stop)",
                      file=sys.stderr)
            policy.threads, policy.changes = n, policy.changes + away
    policy.calls += 1
    if not policy.logged and (announce or policy.calls == 2):
        _log(policy)
    _apply(policy)


def _log(policy: Policy) -> None:
    policy.logged = True
    if _is_main():
        print(policy.line(), file=sys.stderr)


def _apply(policy: Policy) -> None:
    torch = sys.modules.get("torch")
    if torch is None:  # nothing to apply yet (data prepare never loads torch)
        return
    if torch.get_num_threads() != policy.threads:  # per calling thread: a new thread starts at torch's default
        torch.set_num_threads(policy.threads)
    policy.applied = policy.threads


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def worker_count() -> int:
    """Processes for CPU-bound work that is not torch's (tokenizing shards): the policy's count when one is
    configured, else the CPUs available."""
    return _policy.threads if _policy is not None else available_cpus()[0]
