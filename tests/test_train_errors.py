"""Bad input → one clear error line, exit code 2, nothing written or overwritten (issue 6 acceptance):
missing/empty data, unknown config key, a tokenizer whose vocabulary does not match the model, a
checkpoint from a different model shape, an existing run without --resume, and a NaN loss."""

from __future__ import annotations

import numpy as np
import pytest

from llamalab.cli import main
from token_data import write_token_dataset

BASE = ["train", "model=tiny", "seq_len=32", "micro_batch_size=2", "max_steps=2", "warmup_steps=1",
        "progress=false", "export=false"]


def snapshot(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*"))} if root.exists() else {}


def fails(capsys, argv, match):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("llamalab train: error: ") and len(err.splitlines()) == 1, err
    assert match in err, err
    return err


@pytest.fixture
def data(tmp_path):
    write_token_dataset(tmp_path / "data", {"a": np.random.default_rng(0).integers(0, 512, 5_000)}, vocab_size=512)
    return tmp_path / "data"


def test_missing_and_empty_data(tmp_path, capsys):
    fails(capsys, BASE + [f"data={tmp_path / 'nope'}", f"out_dir={tmp_path / 'out'}"], "no prepared dataset at")
    (tmp_path / "empty").mkdir()
    fails(capsys, BASE + [f"data={tmp_path / 'empty'}", f"out_dir={tmp_path / 'out'}"], "run `llamalab data prepare")
    write_token_dataset(tmp_path / "tiny", {"a": np.arange(10)}, vocab_size=512)  # fewer tokens than one sequence
    fails(capsys, BASE + [f"data={tmp_path / 'tiny'}", f"out_dir={tmp_path / 'out'}"], "fewer than seq_len + 1")
    assert not (tmp_path / "out").exists()


def test_unknown_key(tmp_path, capsys, data):
    err = fails(capsys, BASE + [f"data={data}", f"out_dir={tmp_path / 'out'}", "learning_rate=1e-3"],
                "unknown config key 'learning_rate'")
    assert "valid keys: model, tokenizer, data" in err
    (tmp_path / "c.yaml").write_text("batch_size: 4\n")
    fails(capsys, ["train", "--config", str(tmp_path / "c.yaml")], "unknown config key(s) ['batch_size']")
    assert not (tmp_path / "out").exists()


def test_tokenizer_and_data_vocab_must_match_model(tmp_path, capsys, data, llama_spm_gguf):
    # the real LLaMA vocabulary has 32000 pieces; the tiny preset's embedding has 512 rows
    fails(capsys, BASE + [f"data={data}", f"out_dir={tmp_path / 'out'}", f"tokenizer={llama_spm_gguf}"],
          "has 32000 tokens but the model has vocab_size 512; set model.vocab_size=32000")
    write_token_dataset(tmp_path / "big", {"a": np.arange(5_000)}, vocab_size=8192)
    fails(capsys, BASE + [f"data={tmp_path / 'big'}", f"out_dir={tmp_path / 'out'}"],
          "tokenized with has 8192 tokens but the model embeds only 512; set model.vocab_size=8192")
    assert not (tmp_path / "out").exists()


def test_checkpoint_from_other_shape_and_existing_run(tmp_path, capsys, data):
    out = tmp_path / "out"
    assert main(BASE + [f"data={data}", f"out_dir={out}"]) == 0
    capsys.readouterr()
    before = snapshot(out)
    fails(capsys, BASE + [f"data={data}", f"out_dir={out}", "model.n_layers=3", "--resume"],
          "n_layers: 2 in the checkpoint, 3 now")
    fails(capsys, BASE + [f"data={data}", f"out_dir={out}"], "already holds checkpoints (latest step-000002); pass --resume")
    assert snapshot(out) == before  # nothing touched


def test_nan_loss_stops_naming_the_step(tmp_path, capsys, data):
    # weights of 1e30 overflow float32 activations: the very first loss is not finite
    fails(capsys, BASE + [f"data={data}", f"out_dir={tmp_path / 'out'}", "init_std=1e30"],
          "at step 1; lower lr, raise warmup, or set nan_policy=skip")
    assert main(BASE + [f"data={data}", f"out_dir={tmp_path / 'skip'}", "init_std=1e30", "nan_policy=skip"]) == 0
    assert "update skipped (nan_policy=skip)" in capsys.readouterr().out


def test_resuming_a_finished_run_exports_again(tmp_path, data):
    """The export directory a run wrote is its own earlier output: a resumed run replaces it."""
    argv = [a for a in BASE if a != "export=false"] + [f"data={data}", f"out_dir={tmp_path / 'out'}"]
    assert main(argv) == 0
    first = (tmp_path / "out" / "model" / "model.safetensors").stat().st_ino
    assert main(argv + ["--resume"]) == 0
    assert (tmp_path / "out" / "model" / "model.safetensors").stat().st_ino != first
    assert sorted(p.name for p in (tmp_path / "out" / "model").iterdir()) == ["config.json", "model.safetensors"]
