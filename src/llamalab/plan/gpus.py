"""Accelerators the planner knows: peak dense bf16 FLOP/s, board power, memory and its bandwidth.

Every figure is the vendor's datasheet value for the named board (sparsity figures halved where the
sheet quotes only those, as NVIDIA's "with sparsity" columns are exactly 2× the dense rate):

- A100 (SXM4 40/80GB, PCIe 80GB): NVIDIA A100 Tensor Core GPU datasheet (2021) — BF16 Tensor Core
  312 TFLOPS (624 with sparsity); 400 W max TDP (SXM), 300 W (PCIe); 1,555 / 2,039 / 1,935 GB/s.
  The paper's Table 15 uses the same 400 W ("thermal design power for NVLink systems").
- H100 SXM5 / PCIe: NVIDIA H100 Tensor Core GPU datasheet — BF16 1,979 / 1,513 TFLOPS with sparsity;
  up to 700 W / 350 W; 80 GB at 3.35 / 2.0 TB/s.
- H200 SXM: NVIDIA H200 Tensor Core GPU datasheet — BF16 1,979 TFLOPS with sparsity; up to 700 W;
  141 GB at 4.8 TB/s.
- L40S: NVIDIA L40S datasheet — BF16 733 TFLOPS with sparsity (362.05 dense); 350 W; 48 GB at 864 GB/s.
- L4: NVIDIA L4 datasheet — BF16 242 TFLOPS with sparsity; 72 W; 24 GB at 300 GB/s.
- A10: NVIDIA A10 datasheet — BF16 250 TFLOPS with sparsity; 150 W; 24 GB at 600 GB/s.
- RTX 4090: NVIDIA Ada Lovelace architecture whitepaper, appendix table — peak BF16 Tensor TFLOPS with
  FP32 accumulate 165.2 (330.4 with sparsity); 450 W total graphics power; 24 GB at 1,008 GB/s.
- RTX 3090: NVIDIA Ampere GA102 whitepaper — peak BF16 Tensor TFLOPS with FP32 accumulate 71 (142);
  350 W; 24 GB at 936 GB/s.
- MI300X: AMD Instinct MI300X data sheet — BF16 1,307.4 TFLOPS dense; 750 W; 192 GB at 5.3 TB/s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import LlamalabError


@dataclass(frozen=True)
class GPU:
    name: str
    bf16_flops: float  # dense peak, FLOP/s
    power_w: float  # board power (TDP / TGP), what Table 15 multiplies GPU-hours by
    memory_gb: float
    bandwidth_gbs: float  # memory bandwidth, GB/s
    device_names: str  # regex matched against torch.cuda.get_device_name()

    @property
    def memory_bytes(self) -> int:
        return int(self.memory_gb * 2**30)


GPUS: dict[str, GPU] = {g.name: g for g in [
    GPU("a100-80gb", 312e12, 400, 80, 2039, r"A100.*SXM.*80"),
    GPU("a100-40gb", 312e12, 400, 40, 1555, r"A100.*40"),
    GPU("a100-80gb-pcie", 312e12, 300, 80, 1935, r"A100.*80.*PCI"),
    GPU("h100-80gb", 989e12, 700, 80, 3350, r"H100(?!.*(PCI|NVL))"),
    GPU("h100-pcie", 756e12, 350, 80, 2000, r"H100.*PCI"),
    GPU("h200", 989e12, 700, 141, 4800, r"H200"),
    GPU("l40s", 362e12, 350, 48, 864, r"L40S"),
    GPU("l4", 121e12, 72, 24, 300, r"\bL4\b"),
    GPU("a10", 125e12, 150, 24, 600, r"\bA10\b"),
    GPU("rtx-4090", 165.2e12, 450, 24, 1008, r"RTX 4090"),
    GPU("rtx-3090", 71e12, 350, 24, 936, r"RTX 3090"),
    GPU("mi300x", 1307.4e12, 750, 192, 5300, r"MI300X"),
]}


def get_gpu(name: str) -> GPU:
    """Exact-name lookup (case-insensitive); an unknown name is an error listing the known ones."""
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise LlamalabError(f"unknown GPU {name!r}; choose one of: {', '.join(GPUS)}") from None


def gpu_for_device(device_name: str) -> GPU | None:
    """The table's entry for a CUDA/ROCm device name (e.g. 'NVIDIA A100-SXM4-80GB'), or None."""
    for gpu in GPUS.values():
        if re.search(gpu.device_names, device_name):
            return gpu
    return None
