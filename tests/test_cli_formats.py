"""`llamalab info` / `llamalab convert` through the real CLI entry point, good input and bad.

Bad input must give one clear line on stderr, a non-zero exit code, no traceback, and no output left
behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from llamalab import formats
from llamalab.cli import main
from llamalab.config import ModelArgs
from llamalab.model import Transformer

ARGS = ModelArgs(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, multiple_of=32, max_seq_len=64)


@pytest.fixture(scope="module")
def state():
    model = Transformer(ARGS)
    model.init_weights(generator=torch.Generator().manual_seed(0))
    return model.state_dict()


def fails(capsys, argv, *expect):
    """Run the CLI expecting a clean user error; return the message."""
    assert main(argv) != 0
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"llamalab {argv[0]}: error: ")
    for word in expect:
        assert word in lines[0], lines[0]
    return lines[0]


def test_info_and_convert_round_trip(state, tmp_path, capsys):
    formats.save(state, ARGS, tmp_path / "hf", "hf")
    assert main(["convert", str(tmp_path / "hf"), "--to", "meta", "--out", str(tmp_path / "meta"),
                 "--shards", "2"]) == 0
    assert main(["convert", str(tmp_path / "meta"), "--to", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    assert main(["convert", str(tmp_path / "m.gguf"), "--to", "hf", "--out", str(tmp_path / "hf2")]) == 0
    capsys.readouterr()
    back, _, _, fmt, _ = formats.load_state(tmp_path / "hf2")
    assert fmt == "hf" and all(torch.equal(state[k], back[k]) for k in state)
    assert main(["info", str(tmp_path / "meta")]) == 0
    out = capsys.readouterr().out
    assert "format      meta" in out and "shards      2" in out and f"{sum(v.numel() for v in state.values()):,}" in out
    assert main(["info", str(tmp_path / "m.gguf"), "--tensors"]) == 0
    out = capsys.readouterr().out
    assert "layers.1.feed_forward.w2.weight" in out and "F32" in out
    # no temp directories left next to the outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "hf2", "m.gguf", "meta"]


def test_convert_shards_hf_output(state, tmp_path, capsys):
    formats.save(state, ARGS, tmp_path / "meta", "meta")
    assert main(["convert", str(tmp_path / "meta"), "--to", "hf", "--out", str(tmp_path / "hf"),
                 "--max-shard-size", "100KB"]) == 0
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    back, _, _, _, _ = formats.load_state(tmp_path / "hf")
    assert all(torch.equal(state[k], back[k]) for k in state)
    fails(capsys, ["convert", str(tmp_path / "meta"), "--to", "hf", "--out", str(tmp_path / "x"),
                   "--max-shard-size", "lots"], "--max-shard-size")


def test_convert_refuses_to_overwrite(state, tmp_path, capsys):
    formats.save(state, ARGS, tmp_path / "hf", "hf")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    fails(capsys, ["convert", str(tmp_path / "hf"), "--to", "meta", "--out", str(tmp_path / "out")], "--force")
    # --force replaces an earlier output, never a directory holding anything else
    fails(capsys, ["convert", str(tmp_path / "hf"), "--to", "meta", "--out", str(tmp_path / "out"), "--force"],
          "keep.txt")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["keep.txt"]
    (tmp_path / "out" / "keep.txt").unlink()  # an empty directory is fine without --force
    assert main(["convert", str(tmp_path / "hf"), "--to", "meta", "--out", str(tmp_path / "out")]) == 0
    assert main(["convert", str(tmp_path / "hf"), "--to", "meta", "--out", str(tmp_path / "out"), "--shards", "2",
                 "--force"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["consolidated.00.pth", "consolidated.01.pth",
                                                                    "params.json"]
    formats.save(state, ARGS, tmp_path / "m.gguf", "gguf")
    fails(capsys, ["convert", str(tmp_path / "hf"), "--to", "gguf", "--out", str(tmp_path / "out"), "--force"],
          "not a GGUF file")


def test_force_never_deletes_the_input_or_the_current_directory(state, tmp_path, capsys, monkeypatch):
    formats.save(state, ARGS, tmp_path / "m.gguf", "gguf")
    formats.save(state, ARGS, tmp_path / "hf", "hf")
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    fails(capsys, ["convert", "m.gguf", "--to", "hf", "--out", ".", "--force"], "current directory")
    fails(capsys, ["convert", "hf", "--to", "hf", "--out", "hf", "--force"], "the input")
    fails(capsys, ["convert", "hf/model.safetensors", "--to", "meta", "--out", "hf", "--force"], "the input")
    fails(capsys, ["convert", "m.gguf", "--to", "gguf", "--out", "m.gguf", "--force"], "the input")
    fails(capsys, ["convert", str(tmp_path / "hf"), "--to", "hf", "--out", str(tmp_path.parent), "--force"],
          "current directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert formats.load_state("hf")[3] == "hf" and formats.load_state("m.gguf")[3] == "gguf"


def test_failed_write_keeps_the_old_output(state, tmp_path, monkeypatch):
    formats.save(state, ARGS, tmp_path / "hf", "hf")
    formats.save(state, ARGS, tmp_path / "out", "meta")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}

    def disk_full(tensors, directory, **_):  # fault injection: the writer dies halfway through
        (directory / "model-00001-of-00002.safetensors").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(formats.hf, "save_torch_state_dict", disk_full)
    with pytest.raises(OSError, match="No space"):
        formats.convert(tmp_path / "hf", tmp_path / "out", "hf", force=True, log=None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out"]  # no temporaries left


def test_outputs_get_the_users_umask(state, tmp_path):
    old = os.umask(0o027)
    try:
        formats.save(state, ARGS, tmp_path / "hf", "hf")
        formats.convert(tmp_path / "hf", tmp_path / "m.gguf", "gguf", log=None)
        formats.convert(tmp_path / "hf", tmp_path / "meta", "meta", log=None)
    finally:
        os.umask(old)
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*")}
    assert modes.pop("hf") == modes.pop("meta") == 0o750
    assert set(modes.values()) == {0o640}, modes  # model.safetensors too (safetensors itself writes 0600)


def test_truncated_safetensors(state, tmp_path, capsys):
    formats.save(state, ARGS, tmp_path, "hf")
    f = tmp_path / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    fails(capsys, ["info", str(tmp_path)], "model.safetensors", "truncated")
    fails(capsys, ["convert", str(tmp_path), "--to", "gguf", "--out", str(tmp_path / "x.gguf")], "truncated")
    assert not (tmp_path / "x.gguf").exists() and not list(tmp_path.glob(".x.gguf*"))


def test_truncated_gguf(state, tmp_path, capsys):
    f = formats.save(state, ARGS, tmp_path / "m.gguf", "gguf")
    for size in (f.stat().st_size - 1000, 100, 3):  # in the tensors, in the metadata, in the magic
        (tmp_path / "t.gguf").write_bytes(f.read_bytes()[:size])
        fails(capsys, ["info", str(tmp_path / "t.gguf")], "t.gguf")


def test_pth_with_pickled_code_is_refused(state, tmp_path, capsys):
    witness = tmp_path / "pwned"

    class Exploit:  # unpickling this would run a shell command
        def __reduce__(self):
            return os.system, (f"touch {witness}",)

    torch.save({**state, "evil": Exploit()}, tmp_path / "consolidated.00.pth")
    (tmp_path / "params.json").write_text(json.dumps(formats.meta.params_from_args(ARGS)))
    fails(capsys, ["info", str(tmp_path)], "consolidated.00.pth", "refused")
    assert not witness.exists()


def test_truncated_and_garbage_pth(state, tmp_path, capsys):
    formats.save(state, ARGS, tmp_path, "meta")
    f = tmp_path / "consolidated.00.pth"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    fails(capsys, ["info", str(tmp_path)], "consolidated.00.pth", "truncated")
    f.write_bytes(b"not a pickle at all")
    fails(capsys, ["info", str(tmp_path)], "consolidated.00.pth")


def test_config_that_does_not_match_the_tensors(state, tmp_path, capsys):
    formats.save(state, ARGS, tmp_path, "hf")
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    fails(capsys, ["info", str(tmp_path)], "feed_forward.w1.weight", "(192, 64)", "(100, 64)")
    cfg["intermediate_size"], cfg["num_key_value_heads"] = 192, 4
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    fails(capsys, ["info", str(tmp_path)], "wk.weight", "disagree")


def test_directory_without_checkpoint(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    fails(capsys, ["info", str(tmp_path)], "no checkpoint found", "notes.txt")
    fails(capsys, ["convert", str(tmp_path / "missing"), "--to", "hf", "--out", str(tmp_path / "o")],
          "no such file")


def test_console_script_exit_code(tmp_path):
    """The installed entry point, as a user runs it."""
    r = subprocess.run([sys.executable, "-m", "llamalab", "info", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
