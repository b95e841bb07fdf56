"""Fine-tuning the real SmolLM2-135M: QLoRA (an NF4 base, as torchao stores it, within NF4's error) lowers the
held-out loss in a short CPU run, and adapters move both ways between llamalab and peft + transformers on
our HF export of the same checkpoint with equal logits (≤ 1e-4, fp32).

The references are independent: peft's own LoraModel on transformers' LlamaForCausalLM, and the NF4 code
book of the QLoRA paper (Dettmers et al. 2023, Appendix E) written out below.
"""

from __future__ import annotations

import json

import pytest
import torch

import llamalab
from llamalab.data.instructions import PAIRS
from llamalab.finetune import FinetuneConfig, finetune
from llamalab.formats.lora import attach
from llamalab.formats.peft import load_adapter
from llamalab.finetune.qlora import nf4_scaler_block, tensor_bytes

# QLoRA paper, Appendix E: the 16 NF4 values
NF4 = torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                    0.7229568362236023, 1.0])
PROMPT = "What does `json.dumps` do?"


@pytest.fixture(scope="module")
def smol(smollm2_gguf):
    return llamalab.load(smollm2_gguf)


@pytest.fixture(scope="module")
def hf_export(smol, tmp_path_factory):
    """Our HF export of the checkpoint (fp32), loaded by transformers."""
    from transformers import LlamaForCausalLM

    from llamalab.formats import save

    out = tmp_path_factory.mktemp("smol-hf")
    state = {k: v for k, v in smol.model.state_dict().items() if k != "output.weight"}
    save(state, smol.args, out, "hf", tokenizer_src=smol.tokenizer)
    return out, LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()


def test_nf4_base_is_within_nf4_error(smol):
    """Every dequantized weight is within half the widest gap of the code book × its block's absmax, plus the
    error of the int8-quantized block scale (double quantization: its absmax / 256)."""
    from torchao.quantization import to_nf4

    half_gap = (NF4[1:] - NF4[:-1]).max() / 2
    for name in ("layers.0.attention.wq.weight", "layers.0.attention.wk.weight", "layers.29.feed_forward.w2.weight"):
        w = smol.model.state_dict()[name]
        scaler_block = nf4_scaler_block(w.numel())
        q = to_nf4(w.contiguous(), 64, scaler_block)
        err = (q.get_original_weight() - w).abs().flatten().view(-1, 64).amax(1)
        absmax = w.abs().flatten().view(-1, 64).amax(1)
        centered = absmax - absmax.mean()
        scale_err = centered.view(-1, scaler_block).abs().amax(1).repeat_interleave(scaler_block) / 256
        assert (err <= absmax * half_gap + scale_err + 1e-6).all(), name
        assert 0.5 * absmax.mean() * half_gap < err.mean()  # and NF4 is in fact lossy: this is a 4-bit model
        assert tensor_bytes(q) < 0.14 * tensor_bytes(w)  # ~4.1 bits per weight instead of 32


@pytest.fixture(scope="module")
def qlora_run(smollm2_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("qlora")
    (root / "pairs.jsonl").write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:24]))
    cfg = FinetuneConfig(init_from=str(smollm2_gguf), data=str(root / "pairs.jsonl"), out_dir=str(root / "run"),
                         lora_rank=8, quantize_base="nf4", seq_len=48, micro_batch_size=2, max_steps=2, lr=5e-3,
                         val_split=0.17, samples=0, progress=False)
    return finetune(cfg), root / "run"


def test_qlora_short_run_lowers_validation_loss(qlora_run):
    report, out = qlora_run
    assert report["method"] == "qlora-nf4"
    assert report["val_loss_after"] < report["val_loss_before"] - 0.05, report
    assert report["base_bytes_quantized"] < 0.35 * report["base_bytes"]  # linear layers at ~4 bits, embeddings fp32
    assert (out / "adapter" / "adapter_model.safetensors").is_file()


def test_our_adapter_in_peft_gives_our_logits(qlora_run, smol, hf_export):
    from peft import PeftModel

    _, out = qlora_run
    path, hf = hf_export
    ours = llamalab.load(path)
    tokens = torch.tensor([ours.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        base = hf(input_ids=tokens).logits
        theirs = PeftModel.from_pretrained(hf, out / "adapter").eval()  # adds its LoRA layers to `hf`
        attach(ours.model, load_adapter(out / "adapter", ours.args), merge=False)
        want = theirs(input_ids=tokens).logits
        diff, moved = (want - ours.model(tokens)).abs().max(), (want - base).abs().max()
    theirs.unload()  # give transformers' model back without the adapter layers
    assert diff <= 1e-4 and moved > 1e-2, (diff, moved)


def test_peft_adapter_in_llamalab_gives_peft_logits(smol, hf_export, smollm2_gguf, tmp_path):
    from peft import LoraConfig, get_peft_model

    path, hf = hf_export
    config = LoraConfig(r=8, lora_alpha=16, use_rslora=True, rank_pattern={"v_proj": 4}, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    torch.manual_seed(0)
    peft_model = get_peft_model(hf, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(0.05)  # a trained adapter's size, not a random one's
    peft_model.save_pretrained(tmp_path)
    tokens = torch.tensor([smol.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        want = peft_model(input_ids=tokens).logits
    peft_model.unload()
    assert json.loads((tmp_path / "adapter_config.json").read_text())["use_rslora"] is True
    for merge in (True, False):
        ours = llamalab.load(path)
        attach(ours.model, load_adapter(tmp_path, ours.args), merge=merge)
        with torch.no_grad():
            assert (ours.model(tokens) - want).abs().max() <= 1e-4
    # the GGUF kept quantized (what generate/chat/serve run by default): LoRA layers around the int4 kernel's
    # layers, in its bfloat16 activations; the adapter moves the logits towards peft's as far as bfloat16 allows
    quant = llamalab.load(smollm2_gguf, dtype=None)
    with torch.no_grad():
        before = (quant.model(tokens).float() - want).abs().max()
        attach(quant.model, load_adapter(tmp_path, quant.args))
        after = (quant.model(tokens).float() - want).abs().max()
    print(f"quantized base vs peft: {before:.3f} without the adapter, {after:.3f} with it")
    assert after < before / 2, (before, after)


def test_llama_adapter_short_run_lowers_loss_and_peft_gives_our_logits(smollm2_gguf, hf_export, tmp_path):
    """LLaMA-Adapter with the paper's settings (10 prompt vectors in the top 30/32 of the layers, lr 9e-3): two
    steps lower the held-out loss; peft's AdaptionPromptModel on transformers' LlamaForCausalLM loads the
    adapter and gives our logits."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    (tmp_path / "pairs.jsonl").write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:24]))
    cfg = FinetuneConfig(init_from=str(smollm2_gguf), data=str(tmp_path / "pairs.jsonl"), out_dir=str(tmp_path / "run"),
                         method="llama-adapter", seq_len=48, micro_batch_size=2, max_steps=2, val_split=0.17,
                         samples=0, progress=False)
    report = finetune(cfg)
    assert report["method"] == "llama-adapter" and report["trainable_params"] == 28 * (10 * 576 + 1)  # 28 of 30
    assert report["val_loss_after"] < report["val_loss_before"] - 0.05, report
    path, _ = hf_export
    ours = llamalab.load(path, adapter=tmp_path / "run" / "adapter")
    tokens = torch.tensor([ours.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(LlamaForCausalLM.from_pretrained(path, torch_dtype=torch.float32),
                                           tmp_path / "run" / "adapter").eval()
        assert (theirs(input_ids=tokens).logits - ours.model(tokens)).abs().max() <= 1e-4
