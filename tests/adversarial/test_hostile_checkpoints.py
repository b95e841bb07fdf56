"""Checkpoints with hostile headers (issue 12, "loaders trust header values"): each is refused with one
LlamalabError naming the file, before anything the header claims is built or allocated. The files are a
small llama written by our own writers, then patched where a hostile header would lie."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys

import pytest

from llamalab.config import PRESETS
from llamalab.errors import LlamalabError
from llamalab.formats import load_state, save
from tiny import random_state

ARGS = PRESETS["tiny"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    state = random_state(ARGS)
    save(state, ARGS, root / "m.gguf", "gguf")
    save(state, ARGS, root / "hf", "hf")
    return root


def patched_gguf(files, tmp_path, key: bytes, value: int, fmt: str = "<I") -> str:
    """The GGUF with the scalar value right after `key` (and its 4-byte type) replaced."""
    data = bytearray((files / "m.gguf").read_bytes())
    at = data.index(key) + len(key) + 4
    data[at:at + struct.calcsize(fmt)] = struct.pack(fmt, value)
    (tmp_path / "bad.gguf").write_bytes(bytes(data))
    return str(tmp_path / "bad.gguf")


def refused(path, *needles):
    with pytest.raises(LlamalabError) as e:
        load_state(path)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_gguf_header_values(files, tmp_path):
    refused(patched_gguf(files, tmp_path, b"llama.block_count", 1_000_000), "1000000 layers", "holds tensors for 2")
    refused(patched_gguf(files, tmp_path, b"llama.attention.head_count", 0), "n_heads must be a positive")
    refused(patched_gguf(files, tmp_path, b"llama.embedding_length", 10**9), "head_dim 250000000")
    # the tensor count, a tensor's dimension and a tensor's offset, past what the file holds
    data = bytearray((files / "m.gguf").read_bytes())
    for at, value, needle in ((8, 2**40, "tensors claimed"), (None, 2**40, "ends past the end of the file")):
        bad = bytearray(data)
        if at is None:  # the first dimension of token_embd.weight
            at = bad.index(b"token_embd.weight") + len(b"token_embd.weight") + 4
        bad[at:at + 8] = struct.pack("<Q", value)
        (tmp_path / "bad.gguf").write_bytes(bytes(bad))
        refused(tmp_path / "bad.gguf", needle)
    (tmp_path / "cut.gguf").write_bytes(bytes(data[:len(data) // 2]))
    refused(tmp_path / "cut.gguf", "ends past the end of the file")


def test_gguf_array_longer_than_the_file(smollm2_gguf, tmp_path):
    """The real SmolLM2 header with its token-type array claiming 2^40 items: the gguf package would loop
    over a trillion items; the header check refuses it in a fraction of a second."""
    from llamalab.headers import check_gguf

    with open(smollm2_gguf, "rb") as f:
        head = bytearray(f.read(4 << 20))  # the header (vocabulary included) is the first ~1.8 MB
    at = head.index(b"tokenizer.ggml.token_type") + len(b"tokenizer.ggml.token_type") + 8
    head[at:at + 8] = struct.pack("<Q", 2**40)
    (tmp_path / "bad.gguf").write_bytes(bytes(head))
    with pytest.raises(LlamalabError, match="more than any checkpoint holds"):
        check_gguf(tmp_path / "bad.gguf")


def hf_copy(files, tmp_path, **config):
    import shutil

    shutil.copytree(files / "hf", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**cfg, **config} if config else cfg))
    return tmp_path / "hf"


@pytest.mark.parametrize("config, needle", [
    ({"num_hidden_layers": 10**9}, "1000000000 layers"),
    ({"num_attention_heads": 0}, "n_heads must be a positive"),
    ({"vocab_size": -5}, "vocab_size must be a positive"),
    ({"intermediate_size": -1}, "ffn_dim must be a positive"),
    ({"max_position_embeddings": -2}, "max_seq_len must be a positive"),
    ({"hidden_size": 64.7}, "dim must be a positive whole number, got 64.7"),
    ({"rope_scaling": {"rope_type": "llama3"}}, "needs a positive factor"),
])
def test_hf_config_values(files, tmp_path, config, needle):
    refused(hf_copy(files, tmp_path, **config), needle)


def test_hf_config_and_index_shapes(files, tmp_path):
    hf = hf_copy(files, tmp_path)
    (hf / "config.json").write_text("[1, 2]")
    refused(hf, "holds a list")
    hf = hf_copy(files, tmp_path / "b")
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    refused(hf, "no weight_map")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((hf / "model.safetensors").read_bytes())
    for target in ("../../outside.safetensors", str(outside), "link.safetensors"):
        (hf / "link.safetensors").unlink(missing_ok=True)
        os.symlink(outside, hf / "link.safetensors")
        (hf / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"model.embed_tokens.weight": target}}))
        refused(hf, "lies outside the checkpoint")


def test_tokenizer_files(files, tmp_path):
    from llamalab.tokenizer import load_tokenizer

    hf = hf_copy(files, tmp_path)
    (hf / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}')
    with pytest.raises(LlamalabError, match="not a valid tokenizer.json"):
        load_tokenizer(hf)
    from tokenizers import Tokenizer, models
    Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>")).save(str(hf / "tokenizer.json"))
    (hf / "tokenizer_config.json").write_text(json.dumps({"chat_template": [{"name": "default"}]}))
    with pytest.raises(LlamalabError, match="chat_template is a list without"):
        load_tokenizer(hf)


def test_hub_fallback_says_what_it_tried(tmp_path, monkeypatch):
    """A name that is no local path: a bare org/name is tried on the hub (offline here), anything that
    looks like a file is only ever a path; either way one line saying what to do."""
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name, needles in (("no-such-org/no-such-model", ("fetching it as a hub repository failed", "check the path")),
                          ("models/smol.gguf", ("no such file or directory", "check the path"))):
        p = subprocess.run([sys.executable, "-m", "llamalab", "info", name], capture_output=True, text=True,
                           env=env, timeout=120)
        lines = p.stderr.strip().splitlines()
        assert p.returncode == 2 and lines[-1].startswith("llamalab info: error: "), p.stderr
        assert "Traceback" not in p.stderr and all(n in lines[-1] for n in needles), p.stderr
