"""`llamalab finetune --method llama-adapter` on a small random checkpoint (SmolLM2's real tokenizer and chat
template): the zero-init gates move, only prompts and gates train, peft (`PeftModel.from_pretrained` on
transformers' LlamaForCausalLM of the same weights) loads the saved adapter and gives our logits within 1e-4,
a resumed run equals the uninterrupted one bit for bit, bad flags are one error line. Then `--adapter` with a
peft-made adaption prompt on generate (peft's greedy tokens), chat, serve and eval (peft's log-likelihoods).
The real SmolLM2's loss going down is in test_finetune_smollm2.py."""

from __future__ import annotations

import io
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import llamalab
from cli_output import without_notices
from llamalab.cli import main
from llamalab.config import get_preset
from llamalab.data.instructions import PAIRS
from llamalab.formats import save
from llamalab.tokenizer import load_tokenizer
from tiny import random_state

ARGS = get_preset("tiny").replace(vocab_size=49152, tie_embeddings=True, max_seq_len=256)  # 2 layers
RUN = ["--seq-len", "96", "--micro-batch-size", "4", "--lr", "5e-2", "--progress", "false", "--val-split", "0.2",
       "--method", "llama-adapter", "--adapter-len", "6", "--adapter-layers", "1", "--samples", "0"]
PROMPT = "What is a kludge?"


@pytest.fixture(scope="module")
def base(tmp_path_factory, smollm2_gguf):
    out = tmp_path_factory.mktemp("base") / "tiny-chat"
    save(random_state(ARGS), ARGS, out, "hf", tokenizer_src=load_tokenizer(smollm2_gguf))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    out.write_text("".join(PAIRS.read_text().splitlines(keepends=True)[:40]))
    return out


def finetune_args(base, data, out):
    return ["finetune", "--model", str(base), "--data", str(data), "--out", str(out), "--max-steps", "6",
            "--ckpt-every", "3", *RUN]


@pytest.fixture(scope="module")
def trained(base, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft") / "run"
    assert main(finetune_args(base, data, out)) == 0
    return out


def hf_llama(base):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(base, torch_dtype=torch.float32).eval()


def test_run_trains_prompt_and_gate_only_and_lowers_the_loss(trained):
    report = json.loads((trained / "report.json").read_text())
    assert report["method"] == "llama-adapter"
    assert report["trainable_params"] == 6 * ARGS.dim + 1  # one layer's prompt and gate, nothing else
    # a random model's answers are near uniform: its loss moves little (the real SmolLM2's: test_finetune_smollm2)
    assert report["val_loss_after"] < report["val_loss_before"], report
    config = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["adapter_len"], config["adapter_layers"]) == ("ADAPTION_PROMPT", 6, 1)
    tensors = load_file(trained / "adapter" / "adapter_model.safetensors")
    layer = "base_model.model.model.layers.1.self_attn."  # the top layer of two
    assert set(tensors) == {layer + "adaption_prompt", layer + "adaption_gate"}
    assert tensors[layer + "adaption_prompt"].shape == (1, 6, ARGS.dim)
    assert tensors[layer + "adaption_gate"].abs().item() > 1e-2  # zero at the start, trained away from it


def test_peft_loads_our_adapter_with_our_logits(trained, base):
    from peft import PeftModel

    ours = llamalab.load(base, adapter=trained / "adapter")
    plain = llamalab.load(base)
    tokens = torch.tensor([ours.tokenizer.encode(PROMPT)])
    with torch.no_grad():
        theirs = PeftModel.from_pretrained(hf_llama(base), trained / "adapter").eval()
        want = theirs(input_ids=tokens).logits
        diff, moved = (want - ours.model(tokens)).abs().max(), (want - plain.model(tokens)).abs().max()
    assert diff <= 1e-4 and moved > 1e-3, (diff, moved)


def test_resume_equals_the_uninterrupted_run(trained, base, data, tmp_path):
    out = tmp_path / "resumed"  # the run as a crash after checkpoint 3 leaves it
    shutil.copytree(trained, out)
    for done in (out / "ckpt" / "step-000006", out / "adapter"):
        shutil.rmtree(done)
    (out / "report.json").unlink()
    assert main(finetune_args(base, data, out) + ["--resume"]) == 0
    timing = ("tokens_per_s", "mfu", "elapsed_s")
    strip = lambda d: [{k: v for k, v in json.loads(r).items() if k not in timing}  # noqa: E731
                       for r in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(out) == strip(trained) and len(strip(out)) == 7
    want, got = (load_file(d / "adapter" / "adapter_model.safetensors") for d in (trained, out))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


@pytest.mark.parametrize("extra, says", [
    (["--adapter-layers", "3"], "adapter_layers=3 but"),
    (["--adapter-len", "0"], "adapter_len must be a positive integer, got 0"),
    (["--lora-rank", "4"], "--lora-rank is a LoRA setting but method=llama-adapter"),
    (["--quantize-base", "nf4"], "LLaMA-Adapter trains on the base as it is"),
    (["--method", "adapter"], "method must be one of full, lora, llama-adapter"),
])
def test_bad_flags_are_one_line(base, data, tmp_path, capsys, extra, says):
    out = tmp_path / "out"
    assert main(finetune_args(base, data, out) + extra) == 2
    err = without_notices(capsys.readouterr().err).strip()
    assert len(err.splitlines()) == 1 and err.startswith("llamalab finetune: error: ") and says in err, err
    assert not out.exists()


def test_adapter_flags_without_the_method_are_one_line(base, data, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["finetune", "--model", str(base), "--data", str(data), "--out", str(out), "--adapter-len", "4"]) == 2
    err = without_notices(capsys.readouterr().err).strip()
    assert len(err.splitlines()) == 1 and "adapter_len is a LLaMA-Adapter setting but method=full" in err, err
    assert not out.exists()
