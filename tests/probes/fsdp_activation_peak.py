"""Peak CPU bytes allocated during one forward + backward of a FSDP2 bf16 (MixedPrecisionPolicy) model in a
one-rank gloo process group, as the trainer builds it. Run as a script (it owns its process group); prints
the peak in bytes. Usage: python fsdp_activation_peak.py BATCH SEQ_LEN [ac]"""

import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from test_plan import SMALL, allocations  # noqa: E402

from llamalab.train.loop import next_token_loss  # noqa: E402
from llamalab.train.parallel import World, build_parallel_model, random_init  # noqa: E402


def main():
    batch, seq_len, checkpointing = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:] == ["ac"]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ.get("PROBE_PORT", "29561"), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo")
    _, train_model = build_parallel_model(SMALL, world=World(), parallel="fsdp",
                                          activation_checkpointing=checkpointing, compile=False, bf16=True,
                                          full_tensor=random_init(SMALL, 0.02, torch.Generator().manual_seed(0)))
    x = torch.randint(0, SMALL.vocab_size, (batch, seq_len + 1), generator=torch.Generator().manual_seed(0))

    def step():
        logits = train_model(x[:, :-1])
        next_token_loss(logits, x[:, 1:]).backward()

    step()
    with allocations() as measured:
        step()
    dist.destroy_process_group()
    print(measured["peak"])


if __name__ == "__main__":
    main()
