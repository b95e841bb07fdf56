"""Resume equivalence (issue 6 acceptance): train 2N steps straight == train N, SIGKILL, resume, train N
more — identical losses at every step (bit-exact on CPU), for one process and 2-process gloo DDP; a kill
during a checkpoint write leaves the previous complete checkpoint as `latest`, and resuming from it
still reproduces the straight run. A corrupt latest checkpoint (truncated, missing or bit-flipped files)
is skipped with a warning naming it, and resuming from the previous one reproduces the straight run too;
pickled payloads planted in a checkpoint never run. Faults are injected by tests/faults.py.

The reference is the uninterrupted run of the same command; the comparison is exact float equality.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


FAULTS = str(Path(__file__).with_name("faults.py"))  # the CLI with faults injected from outside the package


def command(nproc: int, parallel: str = "ddp") -> list[str]:
    """`parallel`: ddp, fsdp, or any settings (`tensor_parallel=2 parallel=fsdp`)."""
    if nproc == 1:
        return [sys.executable, FAULTS, "train"]
    settings = parallel.split() if "=" in parallel else [f"parallel={parallel}"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            FAULTS, "train", *settings]


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
                         env=env(FAULT_HANG_AFTER_CHECKPOINT=str(step)), start_new_session=True,
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


@pytest.fixture(scope="module")
def straight_run(data, tmp_path_factory):
    """straight_run(nproc, parallel) → the out_dir of the uninterrupted 2N-step run (each layout run once)."""
    done = {}

    def get(nproc: int, parallel: str) -> Path:
        if (nproc, parallel) not in done:
            out = tmp_path_factory.mktemp("straight")
            p = run(nproc, data, out, parallel=parallel)
            assert p.returncode == 0, p.stderr
            assert sorted(losses(out)) == list(range(1, 2 * N + 1))
            done[nproc, parallel] = out
        return done[nproc, parallel]
    return get


@pytest.fixture(scope="module")
def straight(straight_run) -> Path:
    """The uninterrupted single-process run: the reference losses, and checkpoints N and 2N."""
    return straight_run(1, "none")


TP2 = "tensor_parallel=2"


@pytest.mark.parametrize("nproc,parallel", [(1, "none"), (2, "ddp"), (2, "fsdp"), (2, TP2)],
                         ids=["single", "ddp2", "fsdp2", "tp2"])
def test_resume_after_sigkill_is_bit_exact(data, tmp_path, straight_run, nproc, parallel):
    """For FSDP2 and tensor parallelism the checkpoint is sharded (each rank writes its shards through
    torch.distributed.checkpoint)."""
    expected = losses(straight_run(nproc, parallel))

    out = tmp_path / "killed"
    kill_after_checkpoint(nproc, data, out, N, parallel)
    resumed = run(nproc, data, out, "--resume", parallel=parallel)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'ckpt' / f'step-{N:06d}'}" in resumed.stdout
    assert losses(out) == expected  # every step, bit-exact: loss, grad norm, held-out loss


@pytest.mark.parametrize("nproc,parallel,batch", [(1, "none", 4), (2, "fsdp", 2)], ids=["tp1", "fsdp2"])
def test_tp2_checkpoint_resumes_under_another_layout(data, tmp_path, straight_run, nproc, parallel, batch):
    """A tensor-parallel checkpoint (each rank holds half of every sharded matrix and its AdamW moments) is
    resharded on load: one process, or FSDP2 over 2 ranks (each half the same global batch), continues the
    tp 2 loss curve within float reassociation (issue 21 acceptance: 1e-5 relative)."""
    source = straight_run(2, TP2)
    out = tmp_path / "run"
    shutil.copytree(source, out)
    shutil.rmtree(out / "ckpt" / f"step-{2 * N:06d}")  # resume from step N, as if the tp 2 run had stopped there
    resumed = run(nproc, data, out, f"micro_batch_size={batch}", "--resume", parallel=parallel)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'ckpt' / f'step-{N:06d}'}" in resumed.stdout
    expected, got = losses(source), losses(out)
    assert sorted(got) == sorted(expected)
    for step in range(N + 1, 2 * N + 1):
        np.testing.assert_allclose([v for v in got[step] if v is not None],
                                   [v for v in expected[step] if v is not None], rtol=1e-5, atol=0)


def test_kill_during_checkpoint_write_keeps_previous(data, straight, tmp_path):
    expected = losses(straight)

    out = tmp_path / "run"
    # the process SIGKILLs itself halfway through writing checkpoint 2N (model/optimizer written, meta not)
    p = run(1, data, out, FAULT_KILL_IN_CHECKPOINT=str(2 * N))
    assert p.returncode == -signal.SIGKILL
    ckpts = sorted(x.name for x in (out / "ckpt").iterdir())
    assert ckpts == [f"step-{N:06d}", f"step-{2 * N:06d}.tmp"]

    from llamalab.train import checkpoint
    assert checkpoint.latest(out / "ckpt").name == f"step-{N:06d}"

    resumed = run(1, data, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(x.name for x in (out / "ckpt").iterdir()) == [f"step-{N:06d}", f"step-{2 * N:06d}"]
    assert losses(out) == expected


def corrupt_copy(straight: Path, tmp_path: Path, damage) -> Path:
    """A copy of the straight run with `damage(checkpoint 2N)` applied."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    damage(out / "ckpt" / f"step-{2 * N:06d}")
    return out


def truncate(name):
    def damage(ckpt):
        f = ckpt / name
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return damage


def flip_bit(ckpt):
    f = next(ckpt.glob("*.distcp"))
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x10
    f.write_bytes(bytes(data))


DAMAGE = {"truncated .distcp": (lambda c: truncate(next(c.glob("*.distcp")).name)(c), "bytes"),
          "missing .metadata": (lambda c: (c / ".metadata").unlink(), ".metadata is missing"),
          "truncated meta.json": (truncate("meta.json"), "meta.json is unreadable"),
          "truncated trainer state": (truncate("trainer.json"), "trainer.json has"),
          "truncated rng state": (truncate("rank-00000.json"), "rank-00000.json has"),
          "bit-flipped .distcp": (flip_bit, "does not match its checksum"),
          # JSON nested deeper than any parser should follow: refused by the bounded loader, not a RecursionError
          "deeply nested meta.json": (lambda c: (c / "meta.json").write_text("[" * 200_000 + "]" * 200_000),
                                      "meta.json is unreadable (nested deeper than")}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_corrupt_latest_checkpoint_is_skipped_with_a_warning(straight, tmp_path, kind):
    from llamalab.train import checkpoint

    damage, reason = DAMAGE[kind]
    out = corrupt_copy(straight, tmp_path, damage)
    warnings = []
    path, meta = checkpoint.newest_intact(out / "ckpt", warn=warnings.append)
    assert path.name == f"step-{N:06d}" and meta["step"] == N
    assert len(warnings) == 1 and f"step-{2 * N:06d}" in warnings[0] and reason in warnings[0], warnings


def test_resume_from_the_previous_checkpoint_reproduces_the_straight_run(data, straight, tmp_path):
    # the silent case: a bit flip inside the tensors, which resumed without a word before checksums
    out = corrupt_copy(straight, tmp_path, flip_bit)
    resumed = run(1, data, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"step-{2 * N:06d}" in resumed.stdout and "does not match its checksum" in resumed.stdout
    assert f"resumed from {out / 'ckpt' / f'step-{N:06d}'}" in resumed.stdout
    assert losses(out) == losses(straight)  # steps N+1..2N recomputed, bit-exact
    names = sorted(p.name for p in (out / "ckpt").iterdir())
    assert names == [f"step-{N:06d}", f"step-{2 * N:06d}", f"step-{2 * N:06d}.corrupt"]
    # and resuming the finished run is a clear no-op, not a traceback
    again = run(1, data, out, "--resume")
    assert again.returncode == 0 and "nothing to train" in again.stdout and not again.stderr.strip(), again.stderr


def test_no_intact_checkpoint_is_one_clear_error(straight, tmp_path):
    from llamalab.errors import LlamalabError
    from llamalab.train import checkpoint

    out = corrupt_copy(straight, tmp_path, flip_bit)
    flip_bit(out / "ckpt" / f"step-{N:06d}")
    with pytest.raises(LlamalabError, match="no intact checkpoint"):
        checkpoint.newest_intact(out / "ckpt")


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def reseal(ckpt: Path):
    """Recompute meta.json's checksums, as an attacker who can write the directory would."""
    from llamalab.atomic import sha256_file
    from llamalab.train import checkpoint

    meta = json.loads((ckpt / "meta.json").read_text())
    meta["files"] = {f.name: [f.stat().st_size, sha256_file(f)] for f in ckpt.iterdir() if f.name != "meta.json"}
    meta["checksum"] = checkpoint._self_checksum(meta)
    (ckpt / "meta.json").write_text(json.dumps(meta))


def test_pickled_payloads_never_run(straight, tmp_path):
    import pickle

    from llamalab.train import checkpoint

    marker = tmp_path / "pwned"
    for plant in (".metadata", "trainer.pt", "rank-00000.pt"):  # DCP's pickle, and the old format's files
        out = corrupt_copy(straight, tmp_path / plant, lambda c: (c / plant).write_bytes(pickle.dumps(Payload(marker))))
        reseal(out / "ckpt" / f"step-{2 * N:06d}")
        warnings = []
        path, _ = checkpoint.newest_intact(out / "ckpt", warn=warnings.append)
        if plant == ".metadata":
            assert path.name == f"step-{N:06d}" and "system" in warnings[0], warnings
        else:  # never opened: nothing reads those names any more
            assert path.name == f"step-{2 * N:06d}"
    # a tensor replaced by a pickled object inside the .distcp (DCP would torch.load it, weights_only=False)
    import torch
    import torch.distributed.checkpoint as dcp

    from llamalab.train.parallel import World

    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model_sd, optim_sd = get_state_dict(model, optimizer)
    ckpt = tmp_path / "planted"
    dcp.save({"model": {**model_sd, "weight": Payload(marker)}, "optim": {"state": optim_sd["state"]}},
             checkpoint_id=ckpt)
    (ckpt / "trainer.json").write_text(json.dumps({"step": 1, "loader": {}, "param_groups": optim_sd["param_groups"]}))
    with pytest.raises(checkpoint.CorruptCheckpoint, match="pickled object"):
        checkpoint.load(ckpt, model=model, optimizer=optimizer, world=World())
    assert not marker.exists()
