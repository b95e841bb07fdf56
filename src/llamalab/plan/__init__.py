"""The paper's economics: parameters, the one FLOP count, GPU-hours, energy, carbon and memory of a run
(`llamalab plan`), and the over-training study (`llamalab experiment over-training`, in `experiment.py`).

    flops.py     parameters from the model definition; 6·N + 12·L·H·Q·T per token (also the trainer's MFU)
    gpus.py      accelerators: bf16 peak, power, memory, bandwidth (vendor datasheets)
    memory.py    bytes per GPU: weights, gradients, AdamW, activations (with/without checkpointing)
    budget.py    GPU-hours, days, MWh, tCO2eq, Chinchilla tokens, serving cost
    planner.py   from a preset / parameter count / training config to a Plan
    paper.py     Table 15 and the 65B run, recomputed
"""

from .flops import count_params, inference_flops_per_token, matmul_params, training_flops, training_flops_per_token

__all__ = ["count_params", "inference_flops_per_token", "matmul_params", "training_flops", "training_flops_per_token"]
