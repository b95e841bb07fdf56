"""`python tests/faults.py train ARGS...`: the llamalab CLI with a fault injected from outside the package
(works under torchrun too: `torchrun ... tests/faults.py train ...`).

    FAULT_HANG_AFTER_CHECKPOINT=N  once checkpoint N is complete, wait to be killed, as a node that
                                   crashes right then would be
    FAULT_KILL_IN_CHECKPOINT=N     SIGKILL the process while checkpoint N is half-written (its tensors
                                   are on disk, its metadata is not)
    FAULT_SAMPLER_SEED=N           sampling raises for a sequence seeded with N (at its third token, mid-stream)
                                   or with N + 1 (at its first, while it is prefilled): one sequence failing
                                   inside a server's shared decode batch
"""

import os
import signal
import sys
from pathlib import Path

import torch.distributed.checkpoint as dcp

from llamalab.cli import main
from llamalab.sampling import Sampler
from llamalab.train import checkpoint


def hang_after_checkpoint(n: int):
    save = checkpoint.save

    def save_then_hang(ckpt_dir, step, **kwargs):
        path = save(ckpt_dir, step, **kwargs)
        if step == n:
            signal.pause()
        return path
    checkpoint.save = save_then_hang


def kill_in_checkpoint(n: int):
    save = dcp.save

    def save_then_die(state_dict, *, checkpoint_id, **kwargs):
        save(state_dict, checkpoint_id=checkpoint_id, **kwargs)
        if Path(checkpoint_id).name == f"step-{n:06d}.tmp":
            os.kill(os.getpid(), signal.SIGKILL)
    dcp.save = save_then_die


def fail_sampling(seed: int):
    sample, calls = Sampler.__call__, {}

    def failing(self, logits, seen=None, generator=None):
        if generator is not None and generator.initial_seed() in (seed, seed + 1):
            calls[id(generator)] = calls.get(id(generator), 0) + 1
            if calls[id(generator)] == (3 if generator.initial_seed() == seed else 1):
                raise RuntimeError(f"injected sampling fault (seed {generator.initial_seed()})")
        return sample(self, logits, seen, generator)
    Sampler.__call__ = failing


if __name__ == "__main__":
    if "FAULT_SAMPLER_SEED" in os.environ:
        fail_sampling(int(os.environ["FAULT_SAMPLER_SEED"]))
    if "FAULT_HANG_AFTER_CHECKPOINT" in os.environ:
        hang_after_checkpoint(int(os.environ["FAULT_HANG_AFTER_CHECKPOINT"]))
    if "FAULT_KILL_IN_CHECKPOINT" in os.environ:
        kill_in_checkpoint(int(os.environ["FAULT_KILL_IN_CHECKPOINT"]))
    sys.exit(main(sys.argv[1:]))

