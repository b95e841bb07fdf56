"""The runtime: what every workflow that runs a model stands on (docs/ARCHITECTURE.md, floor 3).

    load.py          load_runnable: device, checkpoint, adapter, tokenizer, chat template, tensor parallelism
    batch.py         run_batch: the one synchronous batch driver over the engine (continuous batching)
    chat.py          converse: a conversation on one growing KV cache (`llamalab chat`)
    complete.py      complete: a prompt's continuation as text (`generate --prompt`)
    embed.py         embed: mean-pooled, L2-normalised final hidden states (the server's embeddings)
    preset.py        a library model's Modelfile values as sampling and conversation defaults
    distributed.py   start-up under torchrun (or one process): rank, device, (dp × tp) mesh
"""

from .batch import Job, admit, run_batch
from .complete import complete
from .embed import embed
from .load import Runnable, load_runnable

__all__ = ["Job", "Runnable", "admit", "complete", "embed", "load_runnable", "run_batch"]
