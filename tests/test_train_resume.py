"""Resume equivalence (issue 6 acceptance): train 2N steps straight == train N, SIGKILL, resume, train N
more — identical losses at every step (bit-exact on CPU), for one process and 2-process gloo DDP; a kill
during a checkpoint write leaves the previous complete checkpoint as `latest`, and resuming from it
still reproduces the straight run.

The reference is the uninterrupted run of the same command; the comparison is exact float equality.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from token_data import write_token_dataset

N = 4
COMMON = ["model=tiny", "seq_len=32", "micro_batch_size=4", f"max_steps={2 * N}", "warmup_fraction=0.25",
          "lr=3e-3", f"ckpt_every={N}", "eval_every=4", "eval_batches=2", "export=false", "progress=false"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    write_token_dataset(root, {"a": rng.integers(0, 512, 30_000), "b": rng.integers(0, 512, 10_000)},
                        vocab_size=512, eos_id=0, val={"a": rng.integers(0, 512, 2_000), "b": rng.integers(0, 512, 2_000)})
    return root


def command(nproc: int, parallel: str = "ddp") -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "llamalab", "train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "llamalab", "train", f"parallel={parallel}"]


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def run(nproc, data, out, *extra, parallel="ddp", **hooks):
    p = subprocess.run(command(nproc, parallel) + COMMON + [f"data={data}", f"out_dir={out}", *extra],
                       env=env(**hooks), capture_output=True, text=True, timeout=300)
    return p


def losses(out: Path) -> dict[int, tuple]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: (r["loss"], r["grad_norm"], r.get("val_loss")) for r in recs}


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (torchrun starts its workers in sessions of their own, so killing the
    launcher's process group would leave them running)."""
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [d for k in kids for d in (k, *descendants(k))]


def kill_after_checkpoint(nproc, data, out, step, parallel="ddp"):
    """Start a run that hangs once checkpoint `step` is complete, and SIGKILL it: the launcher and every
    worker, as a crashed node would lose them."""
    p = subprocess.Popen(command(nproc, parallel) + COMMON + [f"data={data}", f"out_dir={out}"],
                         env=env(LLAMALAB_TEST_HANG_AFTER_CHECKPOINT=str(step)), start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (out / "ckpt" / f"step-{step:06d}").is_dir():
        assert p.poll() is None, f"run ended early: {p.stderr.read()}"
        assert time.time() < deadline, "checkpoint never appeared"
        time.sleep(0.1)
    workers = descendants(p.pid)  # none for a single process: it is its own worker
    os.killpg(p.pid, signal.SIGKILL)
    for pid in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL and len(workers) >= (nproc if nproc > 1 else 0)
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text()
              for pid in workers):
        time.sleep(0.05)


@pytest.mark.parametrize("nproc,parallel", [(1, "none"), (2, "ddp"), (2, "fsdp")], ids=["single", "ddp2", "fsdp2"])
def test_resume_after_sigkill_is_bit_exact(data, tmp_path, nproc, parallel):
    """For FSDP2 the checkpoint is sharded (each rank writes its shards through torch.distributed.checkpoint)."""
    straight = run(nproc, data, tmp_path / "straight", parallel=parallel)
    assert straight.returncode == 0, straight.stderr
    expected = losses(tmp_path / "straight")
    assert sorted(expected) == list(range(1, 2 * N + 1))

    out = tmp_path / "killed"
    kill_after_checkpoint(nproc, data, out, N, parallel)
    resumed = run(nproc, data, out, "--resume", parallel=parallel)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'ckpt' / f'step-{N:06d}'}" in resumed.stdout
    assert losses(out) == expected  # every step, bit-exact: loss, grad norm, held-out loss


def test_kill_during_checkpoint_write_keeps_previous(data, tmp_path):
    expected_run = run(1, data, tmp_path / "straight")
    assert expected_run.returncode == 0, expected_run.stderr
    expected = losses(tmp_path / "straight")

    out = tmp_path / "run"
    # the process SIGKILLs itself halfway through writing checkpoint 2N (model/optimizer written, meta not)
    p = run(1, data, out, LLAMALAB_TEST_KILL_IN_CHECKPOINT=str(2 * N))
    assert p.returncode == -signal.SIGKILL
    ckpts = sorted(x.name for x in (out / "ckpt").iterdir())
    assert ckpts == [f"step-{N:06d}", f"step-{2 * N:06d}.tmp"]

    from llamalab.train import checkpoint
    assert checkpoint.latest(out / "ckpt").name == f"step-{N:06d}"

    resumed = run(1, data, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(x.name for x in (out / "ckpt").iterdir()) == [f"step-{N:06d}", f"step-{2 * N:06d}"]
    assert losses(out) == expected
