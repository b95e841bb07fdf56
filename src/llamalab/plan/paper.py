"""The paper's own economics, recomputed: Table 15 (carbon footprint) and the 65B run of §2.4.

Table 15 (Touvron et al. 2023), every row on A100-80GB at 400 W, PUE 1.1, 0.385 kg CO2eq/kWh:

    model        GPU-hours   MWh   tCO2eq
    OPT-175B       809,472   356      137     (34 days on 992 GPUs, from OPT's logbook)
    BLOOM-175B   1,082,880   475      183
    LLaMA-7B        82,432    36       14
    LLaMA-13B      135,168    59       23
    LLaMA-33B      530,432   233       90
    LLaMA-65B    1,022,362   449      173

§2.4: "When training a 65B-parameter model, our code processes around 380 tokens/sec/GPU on 2048 GPU with
80GB of RAM. This means that training over our dataset containing 1.4T tokens takes approximately 21 days."
§6: 2048 A100-80GB for about 5 months to develop all the models: ~2,638 MWh and 1,015 tCO2eq.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import get_preset
from .budget import carbon_t, energy_mwh
from .flops import training_flops_per_token
from .gpus import get_gpu


@dataclass(frozen=True)
class Table15Row:
    model: str
    gpu_hours: int
    mwh: int
    tco2eq: int
    preset: str | None = None  # our preset, for the FLOP count
    tokens: float | None = None  # Table 2 (LLaMA only)


TABLE_15 = [
    Table15Row("OPT-175B", 809_472, 356, 137),
    Table15Row("BLOOM-175B", 1_082_880, 475, 183),
    Table15Row("LLaMA-7B", 82_432, 36, 14, "llama-7b", 1.0e12),
    Table15Row("LLaMA-13B", 135_168, 59, 23, "llama-13b", 1.0e12),
    Table15Row("LLaMA-33B", 530_432, 233, 90, "llama-33b", 1.4e12),
    Table15Row("LLaMA-65B", 1_022_362, 449, 173, "llama-65b", 1.4e12),
]
PAPER_GPU = "a100-80gb"  # 400 W, as Table 15 takes it
OPT_DAYS, OPT_GPUS = 34, 992
RUN_65B = {"tokens_per_gpu_s": 380, "tokens": 1.4e12, "gpus": 2048, "days": 21}
DEVELOPMENT = {"gpus": 2048, "months": 5, "mwh": 2638, "tco2eq": 1015}
PAPER_SEQ_LEN = 2048


def table_15() -> list[dict]:
    """Each row's energy and carbon recomputed from its GPU-hours, beside the paper's figures; for LLaMA, the
    tokens/s per GPU and MFU those GPU-hours imply under our FLOP count."""
    gpu = get_gpu(PAPER_GPU)
    rows = []
    for r in TABLE_15:
        mwh = energy_mwh(r.gpu_hours, gpu.power_w)
        row = {"model": r.model, "gpu_hours": r.gpu_hours, "mwh": mwh, "paper_mwh": r.mwh,
               "tco2eq": carbon_t(mwh), "paper_tco2eq": r.tco2eq}
        if r.preset:
            per_gpu = r.tokens / (r.gpu_hours * 3600)
            per_token = training_flops_per_token(get_preset(r.preset), PAPER_SEQ_LEN)
            row.update(tokens=r.tokens, tokens_per_gpu_s=per_gpu, mfu=per_gpu * per_token / gpu.bf16_flops)
        rows.append(row)
    return rows


def run_65b() -> dict:
    """GPU-hours and days of the 65B run from its throughput, beside Table 15 and §2.4."""
    r = RUN_65B
    gpu_hours = r["tokens"] / r["tokens_per_gpu_s"] / 3600
    paper = next(t for t in TABLE_15 if t.model == "LLaMA-65B").gpu_hours
    return {**r, "gpu_hours": gpu_hours, "paper_gpu_hours": paper, "relative_error": gpu_hours / paper - 1,
            "computed_days": gpu_hours / r["gpus"] / 24,
            "opt_gpu_hours": OPT_DAYS * 24 * OPT_GPUS}


def format_paper() -> str:
    rows = table_15()
    lines = ["Table 15 (Touvron et al. 2023) recomputed: MWh = GPU-hours × 400 W × PUE 1.1; tCO2eq = MWh × 0.385",
             f"  {'model':11s} {'GPU-hours':>10s} {'MWh':>7s} {'paper':>5s} {'tCO2eq':>7s} {'paper':>5s}"
             f" {'tokens':>6s} {'tok/s/GPU':>9s} {'MFU':>5s}"]
    for r in rows:
        extra = (f" {r['tokens'] / 1e12:5.1f}T {r['tokens_per_gpu_s']:9,.0f} {r['mfu']:5.1%}" if "mfu" in r else "")
        lines.append(f"  {r['model']:11s} {r['gpu_hours']:>10,d} {r['mwh']:7.1f} {r['paper_mwh']:5d}"
                     f" {r['tco2eq']:7.1f} {r['paper_tco2eq']:5d}{extra}")
    run = run_65b()
    dev_mwh = DEVELOPMENT["mwh"]
    lines += [
        "  (tok/s/GPU: what the GPU-hours imply for the Table 2 token counts; MFU: that throughput under our FLOP",
        f"  count, 6·N + 12·L·H·Q·T at T = {PAPER_SEQ_LEN}, over the A100's 312 TFLOP/s bf16 peak)",
        f"  OPT-175B: {OPT_DAYS} days × {OPT_GPUS} GPUs × 24 h = {run['opt_gpu_hours']:,d} GPU-hours",
        "",
        f"LLaMA-65B (§2.4): {run['tokens_per_gpu_s']} tokens/s/GPU × {run['tokens'] / 1e12:g}T tokens = "
        f"{run['gpu_hours']:,.0f} GPU-hours (Table 15: {run['paper_gpu_hours']:,d}, {run['relative_error']:+.2%});",
        f"  on {run['gpus']} A100-80GB: {run['computed_days']:.1f} days (paper: approximately {run['days']})",
        f"Development (§6): {DEVELOPMENT['gpus']} GPUs for ~{DEVELOPMENT['months']} months, {dev_mwh:,d} MWh → "
        f"{carbon_t(dev_mwh):,.0f} tCO2eq (paper: {DEVELOPMENT['tco2eq']:,d})",
    ]
    return "\n".join(lines)
