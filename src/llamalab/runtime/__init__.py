"""The runtime: what every workflow that runs a model stands on (docs/ARCHITECTURE.md, floor 3).

    distributed.py   start-up under torchrun (or one process): rank, device, (dp × tp) mesh
"""
