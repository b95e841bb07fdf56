"""A training run's bill before it is run: FLOPs, GPU-hours, days, energy, carbon, serving cost.

Energy and carbon follow the paper's §6 (after Wu et al. 2022):

    MWh = GPU-hours × GPU power × PUE          (PUE 1.1)
    tCO2eq = MWh × 0.385                        (US national average, kg CO2eq per kWh)

Chinchilla's compute-optimal model sees ≈ 20 tokens per parameter (Hoffmann et al. 2022, Table 3);
LLaMA trains far past it on purpose, because inference, not training, is the cost that recurs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..config import ModelArgs
from ..errors import LlamalabError
from .flops import count_params, inference_flops_per_token, matmul_params, training_flops_per_token
from .gpus import GPU
from .memory import MemoryPlan

PUE = 1.1
CARBON_KG_PER_KWH = 0.385
CHINCHILLA_TOKENS_PER_PARAM = 20
DEFAULT_MFU = 0.4


def energy_mwh(gpu_hours: float, power_w: float, pue: float = PUE) -> float:
    return gpu_hours * power_w * pue / 1e6


def carbon_t(mwh: float, kg_per_kwh: float = CARBON_KG_PER_KWH) -> float:
    return mwh * kg_per_kwh  # MWh × kg/kWh = tonnes


@dataclass
class Inference:
    """Serving cost per 1M generated tokens at `context` tokens of context."""

    context: int
    flops_per_token: int
    gpu_hours_per_m_compute: float  # batched decoding at the plan's MFU (compute-bound)
    gpu_hours_per_m_batch1: float  # one sequence: every token reads all bf16 weights (bandwidth-bound)
    kwh_per_m_compute: float


@dataclass
class Plan:
    model: str
    params: int
    matmul_params: int
    tokens: float
    tokens_source: str
    seq_len: int
    flops_per_token: int
    flops: float
    chinchilla_tokens: float
    tokens_per_param: float
    gpu: str
    gpus: int
    mfu: float
    tokens_per_gpu_s: float
    gpu_hours: float
    days: float
    mwh: float
    tco2eq: float
    inference: Inference
    memory: MemoryPlan | None = None
    setup: dict = field(default_factory=dict)  # micro_batch, activation_checkpointing, parallel, dtype
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        if self.memory is not None:
            d["memory"] = self.memory.to_dict()
        return d


def throughput(args: ModelArgs, seq_len: int, gpu: GPU, *, mfu: float | None = None,
               tokens_per_gpu_s: float | None = None) -> tuple[float, float]:
    """(MFU, tokens/s per GPU), either given and the other derived from the FLOP count and the GPU's peak."""
    per_token = training_flops_per_token(args, seq_len)
    if tokens_per_gpu_s is not None:
        if tokens_per_gpu_s <= 0:
            raise LlamalabError(f"--tokens-per-gpu-s must be positive, got {tokens_per_gpu_s:g}")
        return tokens_per_gpu_s * per_token / gpu.bf16_flops, tokens_per_gpu_s
    mfu = DEFAULT_MFU if mfu is None else mfu
    if not 0 < mfu <= 1:
        raise LlamalabError(f"--mfu must be in (0, 1], got {mfu:g}")
    return mfu, mfu * gpu.bf16_flops / per_token


def inference_cost(args: ModelArgs, context: int, gpu: GPU, mfu: float, *, pue: float = PUE) -> Inference:
    per_token = inference_flops_per_token(args, context)
    compute_s = 1e6 * per_token / (mfu * gpu.bf16_flops)
    batch1_s = 1e6 * 2 * matmul_params(args) / (gpu.bandwidth_gbs * 1e9)
    return Inference(context, per_token, compute_s / 3600, batch1_s / 3600,
                     compute_s / 3600 * gpu.power_w * pue / 1000)


def make_plan(args: ModelArgs, *, name: str, tokens: float, tokens_source: str, seq_len: int, gpu: GPU,
              gpus: int, mfu: float | None = None, tokens_per_gpu_s: float | None = None,
              pue: float = PUE, carbon: float = CARBON_KG_PER_KWH, memory: MemoryPlan | None = None) -> Plan:
    """The compute, time, energy and carbon of training `args` on `tokens` tokens on `gpus` × `gpu`."""
    if not tokens > 0:
        raise LlamalabError(f"--tokens must be positive, got {tokens:g}")
    if gpus < 1:
        raise LlamalabError(f"--gpus must be at least 1, got {gpus}")
    mfu, per_gpu = throughput(args, seq_len, gpu, mfu=mfu, tokens_per_gpu_s=tokens_per_gpu_s)
    n = count_params(args)
    gpu_hours = tokens / per_gpu / 3600
    mwh = energy_mwh(gpu_hours, gpu.power_w, pue)
    per_token = training_flops_per_token(args, seq_len)
    return Plan(model=name, params=n, matmul_params=matmul_params(args), tokens=tokens, tokens_source=tokens_source,
                seq_len=seq_len, flops_per_token=per_token, flops=tokens * per_token,
                chinchilla_tokens=CHINCHILLA_TOKENS_PER_PARAM * n, tokens_per_param=tokens / n, gpu=gpu.name,
                gpus=gpus, mfu=mfu, tokens_per_gpu_s=per_gpu, gpu_hours=gpu_hours, days=gpu_hours / gpus / 24,
                mwh=mwh, tco2eq=carbon_t(mwh, carbon), inference=inference_cost(args, seq_len, gpu, mfu, pue=pue),
                memory=memory)
