"""The runtime: what every workflow that runs a model stands on (docs/ARCHITECTURE.md, floor 3).

    load.py          load_runnable: device, checkpoint, adapter, tokenizer, chat template, tensor parallelism
    batch.py         run_batch: the one synchronous batch driver over the engine (continuous batching)
    chat.py          converse: a conversation on one growing KV cache (`llamalab chat`)
    complete.py      complete: a prompt's continuation as text (`generate --prompt`)
    distributed.py   start-up under torchrun (or one process): rank, device, (dp × tp) mesh
"""

from .batch import Job, admit, run_batch
from .complete import complete
from .load import Runnable, load_runnable

__all__ = ["Job", "Runnable", "admit", "complete", "load_runnable", "run_batch"]
