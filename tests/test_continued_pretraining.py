"""Continued pretraining from a released checkpoint (`init_from`) and context extension.

- From the real SmolLM2 GGUF, the run's held-out loss before any update and its first training loss equal
  transformers' loss on the same batches (its own loading of the same file: the independent reference).
- Linear position interpolation ×2 on a small model trained here: held-out loss at 2× the context before
  and after a short extension run, and the exported HF directory runs in transformers with our logits at
  positions beyond the original context.
- Bad input (data from another tokenizer, a shape-changing override, an unreadable checkpoint): one error
  line, exit 2, nothing written.
"""

from __future__ import annotations

import json
import lzma

import pytest
import torch

import llamalab
from llamalab.cli import main
from llamalab.data.corpus import CORPUS_DIR
from llamalab.train.loop import next_token_loss


@pytest.fixture(scope="module")
def code_text(tmp_path_factory):
    """A dozen Python standard-library modules from the demo corpus, one document per line."""
    out = tmp_path_factory.mktemp("text") / "code.jsonl"
    with lzma.open(CORPUS_DIR / "code.jsonl.xz", "rt") as f:
        out.write_text("".join(line for _, line in zip(range(12), f)))
    return out


@pytest.fixture(scope="module")
def smol_data(code_text, smollm2_gguf, tmp_path_factory):
    """The text tokenized with the checkpoint itself as the tokenizer (`data prepare --tokenizer CHECKPOINT`)."""
    out = tmp_path_factory.mktemp("smol-data")
    assert main(["data", "prepare", "--source", f"code={code_text}", "--tokenizer", str(smollm2_gguf), "--out",
                 str(out), "--val-fraction", "0.3", "--workers", "1", "--no-progress"]) == 0
    return out


def test_first_losses_are_the_checkpoints_own(smol_data, smollm2_gguf, hf_smollm2, tmp_path):
    from llamalab.data.loader import TokenLoader
    from llamalab.train import load_config, train

    cfg = load_config(None, [("init_from", str(smollm2_gguf)), ("data", str(smol_data)), ("seq_len", "64"),
                             ("micro_batch_size", "2"), ("eval_batches", "1"), ("max_steps", "1"),
                             ("warmup_steps", "0"), ("lr", "1e-5"), ("export", "false"), ("progress", "false"),
                             ("dtype", "fp32"), ("out_dir", str(tmp_path / "run"))])
    summary = train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    hf, _ = hf_smollm2
    with torch.no_grad():
        x, y = next(TokenLoader(smol_data, seq_len=64, batch_size=2, split="val"))
        held_out = next_token_loss(hf(input_ids=x).logits, y).item()
        x, y = next(TokenLoader(smol_data, seq_len=64, batch_size=2))
        first = next_token_loss(hf(input_ids=x).logits, y).item()
    assert records[0]["step"] == 0 and abs(records[0]["val_loss"] - held_out) <= 1e-4, (records[0], held_out)
    assert abs(records[1]["loss"] - first) <= 1e-4, (records[1], first)
    assert summary["val_loss_before"] == records[0]["val_loss"] and held_out < 4  # a real model on real code (unigram: ~7)


def test_bad_input_is_one_clear_error(code_text, smol_data, smollm2_gguf, llama_spm_gguf, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["train", "--init_from", str(smollm2_gguf), "--seq_len", "32", "--max_steps", "2", "--warmup_steps", "1",
            "--out_dir", str(out), "--progress", "false"]

    def fails(argv, match):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("llamalab train: error: ") and match in err, err
        assert not out.exists()

    other = tmp_path / "spm-data"  # the same text in LLaMA's 32K SentencePiece vocabulary
    assert main(["data", "prepare", "--source", f"code={code_text}", "--tokenizer", str(llama_spm_gguf), "--out",
                 str(other), "--workers", "1", "--no-progress"]) == 0
    capsys.readouterr()  # data prepare's own notice (the thread policy) is not train's
    fails(base + ["--data", str(other)], "was tokenized with a 32000-token vocabulary")
    fails(base + ["--data", str(smol_data), "model.n_layers=12"], "model.n_layers cannot change when starting from a checkpoint")
    fails(base + ["--data", str(smol_data), "--model", "llama-7b"], "with init_from the model is the checkpoint's")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\x00" * 64)
    fails(["train", "--init_from", str(junk), "--data", str(smol_data), "--out_dir", str(out), "--max_steps", "2",
           "--warmup_steps", "1"], str(junk))
    fails(base + ["--data", str(smol_data), "--seq_len", "9000"], "is longer than")


def test_linear_position_interpolation_extends_the_context(tmp_path, capsys):
    """Train a small model at 32 tokens, stretch it to 64 with linear interpolation ×2, fine-tune briefly:
    the held-out loss at 64 tokens is reported before and after, and transformers runs the export alike."""
    import numpy as np
    from transformers import LlamaForCausalLM

    from token_data import write_token_dataset

    rng = np.random.default_rng(0)
    pattern = rng.integers(0, 512, 97)  # a learnable stream
    stream = np.concatenate([np.roll(pattern, k) for k in range(200)])
    write_token_dataset(tmp_path / "data", {"text": stream}, vocab_size=512, val={"text": stream[:3000]})
    common = ["--data", str(tmp_path / "data"), "--micro_batch_size", "4", "--progress", "false", "--eval_batches", "2"]
    assert main(["train", "--model", "tiny", "model.max_seq_len=32", "--seq_len", "32", "--max_steps", "30",
                 "--warmup_fraction", "0.1", "--lr", "3e-3", "--out_dir", str(tmp_path / "short"), *common]) == 0
    capsys.readouterr()
    assert main(["train", "--init_from", str(tmp_path / "short" / "model"), "model.max_seq_len=64",
                 "model.rope_scaling={rope_type: linear, factor: 2.0}", "--seq_len", "64", "--eval_seq_lens", "[32, 64]", "--eval_per_source", "true",
                 "--max_steps", "8", "--warmup_fraction", "0.25", "--lr", "1e-3", "--out_dir", str(tmp_path / "long"),
                 *common]) == 0
    printed = capsys.readouterr().out
    assert "held-out loss at 64 tokens:" in printed and "before →" in printed
    records = [json.loads(line) for line in (tmp_path / "long" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_loss@64"] < records[0]["val_loss@64"]
    assert records[-1]["val_loss/text"] == records[-1]["val_loss"]  # one source: its own loss is the mixture's

    export = tmp_path / "long" / "model"
    config = json.loads((export / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0} and config["max_position_embeddings"] == 64
    ours = llamalab.load(export)
    theirs = LlamaForCausalLM.from_pretrained(export, torch_dtype=torch.float32).eval()
    tokens = torch.tensor(stream[None, :64].astype(np.int64))
    with torch.no_grad():
        diff = (ours.model(tokens)[:, 32:] - theirs(input_ids=tokens).logits[:, 32:]).abs().max()
    assert diff <= 1e-4
    # the GGUF export carries the scaling too (llama.cpp's rope.scaling.type / factor)
    assert main(["convert", str(export), "--to", "gguf", "--out", str(tmp_path / "long.gguf")]) == 0
    assert llamalab.load(tmp_path / "long.gguf").args.rope_scaling == {"rope_type": "linear", "factor": 2.0}
