"""Hostile input, round two, against the real CLI: a command never writes over what it reads, every number
is range-checked, untrusted metadata and compressed input cost bounded memory, and a failed write leaves
nothing behind. Each case: one line `llamalab CMD: error: ...`, exit code 2, the inputs byte-for-byte as
they were (hashed). The bomb and sparse-file cases run `python -m llamalab` in a child under RLIMIT_AS with
the byte caps lowered (LLAMALAB_MAX_RECORD_BYTES / LLAMALAB_MAX_FILE_BYTES), so a bomb only a little over
the cap proves the cap; one sparse file meets the default caps."""

from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import os
import re
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_output import without_notices
from token_data import write_token_dataset

from llamalab.cli import main
from llamalab.config import get_preset
from llamalab.formats.peft import save_adapter
from llamalab.formats.lora import LoraSpec
from llamalab.formats import save
from llamalab.tokenizer import load_tokenizer
from tiny import random_state

MEMORY = 3 << 30  # the child's address space: far below what an unbounded read of the bombs would take
CAPS = {"LLAMALAB_MAX_RECORD_BYTES": str(1 << 20), "LLAMALAB_MAX_FILE_BYTES": str(4 << 20)}
ARGS = get_preset("tiny").replace(vocab_size=49152, tie_embeddings=True, max_seq_len=256)


def cli(*args, env=None, timeout=180) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    return subprocess.run([sys.executable, "-m", "llamalab", *map(str, args)], capture_output=True, timeout=timeout,
                          preexec_fn=limit, env={**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", **(env or {})})


def one_line(code: int, err: str, command: str, *needles: str) -> str:
    err = without_notices(err)
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"llamalab {command}"), err
    assert ": error: " in err and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err
    return err


def run_main(capsys, argv) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:  # argparse
        code = e.code
    return code, capsys.readouterr().err


def hashes(*paths) -> dict[str, str]:
    """sha256 of every file at or below `paths` (and the listing itself)."""
    out = {}
    for p in map(Path, paths):
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file():
                out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
            else:
                out[str(f)] = "dir"
    return out


# ------------------------------------------------------------------------------------------ the material
@pytest.fixture(scope="module")
def base(tmp_path_factory, smollm2_gguf):
    """A small random HF checkpoint with SmolLM2's tokenizer, its float GGUF twin, and a LoRA adapter."""
    root = tmp_path_factory.mktemp("hostile")
    tok = load_tokenizer(smollm2_gguf)
    state = random_state(ARGS)
    save(state, ARGS, root / "hf", "hf", tokenizer_src=tok)
    save(state, ARGS, root / "model.gguf", "gguf", tokenizer_src=tok)
    out_features = {"wq": ARGS.dim, "wv": ARGS.kv_heads * ARGS.head_dim}
    lora = {f"layers.{i}.attention.{m}.lora_{x}.weight": 0.01 * torch.randn((2, ARGS.dim) if x == "a" else (n, 2))
            for i in range(ARGS.n_layers) for m, n in out_features.items() for x in "ab"}
    save_adapter(root / "adapter", lora, LoraSpec(rank=2, alpha=4, targets=("wq", "wv")), ARGS)
    (root / "pairs.jsonl").write_text('{"instruction": "Say hi.", "output": "Hi."}\n' * 8)
    (root / "questions.jsonl").write_text('{"id": "1", "question": "Say hi."}\n')
    (root / "answers.jsonl").write_text('{"id": "1", "model": "m", "answer": "Hi."}\n')
    return root


def test_material_is_what_the_cases_assume(base):
    from llamalab.formats.peft import load_adapter

    assert ARGS.dim == 64 and ARGS.kv_heads * ARGS.head_dim == 32
    assert len(load_adapter(base / "adapter", ARGS).layers) == 2 * ARGS.n_layers


# ------------------------------------------------------------------------------ output = input, refused
def _text_source(root: Path) -> Path:
    (root / "s").mkdir(parents=True, exist_ok=True)
    (root / "s" / "a.txt").write_text("The quick brown fox jumps over the lazy dog.\n" * 50)
    return root / "s"


SAME = {  # name: (command, build(tmp, base) -> (argv, inputs to hash))
    "data prepare --out holds the source": ("data", lambda t, b, spm: (
        ["data", "prepare", "--source", f"s={_text_source(t)}", "--tokenizer", spm, "--out", t, "--no-progress"],
        [t / "s"])),
    "finetune --out is the base": ("finetune", lambda t, b, spm: (
        ["finetune", "--model", b / "hf", "--data", b / "pairs.jsonl", "--out", b / "hf", "--progress", "false"],
        [b / "hf"])),
    "quantize --out is the model (--force)": ("quantize", lambda t, b, spm: (
        ["quantize", "--model", b / "model.gguf", "--bits", "8", "--out", b / "model.gguf", "--force"],
        [b / "model.gguf"])),
    "train out_dir holds the data": ("train", lambda t, b, spm: (
        ["train", "model=tiny", "seq_len=32", "micro_batch_size=2", "max_steps=2", "warmup_steps=1",
         "progress=false", f"data={_dataset(t / 'run' / 'data')}", f"out_dir={t / 'run'}"], [t / "run" / "data"])),
    "data clean --output holds the input": ("data", lambda t, b, spm: (
        ["data", "clean", "--input", _text_source(t), "--output", t], [t / "s"])),
    "tokenizer train --out holds the input": ("tokenizer", lambda t, b, spm: (
        ["tokenizer", "train", "--input", _text_source(t) / "a.txt", "--vocab-size", "300", "--out", t], [t / "s"])),
    "tokenizer export --out is the input": ("tokenizer", lambda t, b, spm: (
        ["tokenizer", "export", b / "hf", "--out", b / "hf"], [b / "hf"])),
    "lora merge --out is the adapter": ("lora", lambda t, b, spm: (
        ["lora", "merge", "--model", b / "hf", "--adapter", b / "adapter", "--out", b / "adapter", "--force"],
        [b / "adapter"])),
    "eval --output is the model": ("eval", lambda t, b, spm: (
        ["eval", "--model", b / "model.gguf", "--tasks", "hellaswag", "--output", b / "model.gguf"],
        [b / "model.gguf"])),
    "generate --out is the question file": ("generate", lambda t, b, spm: (
        ["generate", "--model", b / "model.gguf", "--input", b / "questions.jsonl", "--out", b / "questions.jsonl"],
        [b / "questions.jsonl"])),
    "judge --out is an answer file": ("judge", lambda t, b, spm: (
        ["judge", "--answers", b / "answers.jsonl", "--judge", "http://127.0.0.1:9/v1", "--out", b / "answers.jsonl"],
        [b / "answers.jsonl"])),
    "self-instruct --out is the seed tasks": ("self-instruct", lambda t, b, spm: (
        ["self-instruct", "--teacher", "http://127.0.0.1:9/v1", "--seed-tasks", b / "pairs.jsonl", "--out",
         b / "pairs.jsonl"], [b / "pairs.jsonl"])),
    "data train-quality --out is a positive file": ("data", lambda t, b, spm: (
        ["data", "train-quality", "--positive", b / "pairs.jsonl", "--negative", b / "answers.jsonl", "--out",
         b / "pairs.jsonl"], [b / "pairs.jsonl"])),
}


def _dataset(root: Path) -> Path:
    write_token_dataset(root, {"a": np.random.default_rng(0).integers(0, 512, 5_000)}, vocab_size=512)
    return root


@pytest.mark.parametrize("case", list(SAME))
def test_an_output_that_is_holds_or_lies_inside_an_input_is_refused(case, base, llama_spm_gguf, tmp_path, capsys):
    command, build = SAME[case]
    argv, inputs = build(tmp_path / "work", base, llama_spm_gguf)
    before = hashes(*inputs)
    code, err = run_main(capsys, argv)
    one_line(code, err, command, "refusing to write", "the input")
    assert hashes(*inputs) == before  # byte for byte, and nothing added beside them


# ------------------------------------------------------------------------------------- argument ranges
RANGES = {  # name: (command, argv(base, tmp), needle)
    "generate --seed 2**70": ("generate", lambda b, t: ["generate", "--model", b / "model.gguf", "--prompt", "hi",
                                                        "--seed", 2**70], "argument --seed"),
    "generate --top-p nan": ("generate", lambda b, t: ["generate", "--model", b / "model.gguf", "--prompt", "hi",
                                                       "--top-p", "nan"], "finite"),
    "finetune --lora-rank 1e9": ("finetune", lambda b, t: ["finetune", "--model", b / "hf", "--data", b / "pairs.jsonl",
                                                           "--out", t / "o", "--lora-rank", 10**9], "LoRA rank 1000000000"),
    "finetune --lr nan": ("finetune", lambda b, t: ["finetune", "--model", b / "hf", "--data", b / "pairs.jsonl",
                                                    "--out", t / "o", "--lr", "nan"], "lr must be a finite number"),
    "finetune --epochs -1": ("finetune", lambda b, t: ["finetune", "--model", b / "hf", "--data", b / "pairs.jsonl",
                                                       "--out", t / "o", "--epochs", -1, "--max-steps", 2], "epochs must be > 0"),
    "finetune --lora-alpha inf": ("finetune", lambda b, t: ["finetune", "--model", b / "hf", "--data", b / "pairs.jsonl",
                                                            "--out", t / "o", "--lora-rank", 2, "--lora-alpha", "inf"],
                                  "lora_alpha must be a finite number"),
    "train seed=2**70": ("train", lambda b, t: ["train", "model=tiny", f"data={t}", f"seed={2**70}"], "seed must be"),
    "train grad_clip=-1": ("train", lambda b, t: ["train", "model=tiny", f"data={t}", "grad_clip=-1"], "grad_clip must be > 0"),
    "judge --bootstrap -1": ("judge", lambda b, t: ["judge", "--answers", b / "answers.jsonl", "--judge", "x", "--out",
                                                    t / "o", "--bootstrap", -1], "argument --bootstrap"),
    "judge --max-tokens 0": ("judge", lambda b, t: ["judge", "--answers", b / "answers.jsonl", "--judge", "x", "--out",
                                                    t / "o", "--max-tokens", 0], "argument --max-tokens"),
    "perplexity --stride 0": ("perplexity", lambda b, t: ["perplexity", "--model", b / "model.gguf", "--input", "-",
                                                          "--stride", 0],
                              "argument --stride"),
    "self-instruct --answer-max-tokens 0": ("self-instruct", lambda b, t: ["self-instruct", "--teacher", "x", "--out",
                                            t / "o.jsonl", "--answer-max-tokens", 0], "argument --answer-max-tokens"),
    "eval --temperature -1": ("eval", lambda b, t: ["eval", "--model", b / "model.gguf", "--tasks", "hellaswag",
                                                    "--temperature", -1], "argument --temperature"),
    "data prepare --workers 0": ("data", lambda b, t: ["data", "prepare", "--tokenizer", "x", "--out", t / "o",
                                                       "--workers", 0], "argument --workers"),
}


@pytest.mark.parametrize("case", list(RANGES))
def test_every_number_is_range_checked(case, base, tmp_path, capsys):
    command, argv, needle = RANGES[case]
    code, err = run_main(capsys, argv(base, tmp_path))
    one_line(code, err, command, needle)
    assert not (tmp_path / "o").exists()


def test_a_manifest_claiming_1e30_tokens(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["sources"]["a"]["tokens"] = 10**30
    (data / "manifest.json").write_text(json.dumps(manifest))
    one_line(*run_main(capsys, ["data", "mixture", "--data", data, "--tokens", "1e6"]), "data",
             "is not the sum of its shards' token counts")
    manifest["sources"]["a"]["tokens"] = 5_000
    manifest["sources"]["a"]["shards"][0]["tokens"] = 10**30
    (data / "manifest.json").write_text(json.dumps(manifest))
    one_line(*run_main(capsys, ["data", "mixture", "--data", data, "--tokens", "1e6"]), "data",
             "claims 1,000,000,000,000,000,000,000,000,000,000 tokens but its file holds 5,000")


def test_an_hf_config_with_a_context_gguf_cannot_hold(base, tmp_path, capsys):
    import shutil

    shutil.copytree(base / "hf", tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2**33}))
    one_line(*run_main(capsys, ["convert", tmp_path / "hf", "--to", "gguf", "--out", tmp_path / "m.gguf"]), "convert",
             "max_seq_len 8,589,934,592 does not fit GGUF's 32-bit header field")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]


def test_lone_surrogates_in_json_text(llama_spm_gguf, tmp_path, capsys):
    texts = tmp_path / "texts.jsonl"
    texts.write_text('"fine"\n{"text": "half a pair: \\ud800"}\n')
    one_line(*run_main(capsys, ["tokenize", "-t", llama_spm_gguf, "--jsonl", texts]), "tokenize",
             f"{texts}:2: not a JSON line (a string holds a lone surrogate (\\ud800)")


def test_lone_surrogates_in_instruction_and_answer_files(base, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "Say hi.", "output": "Hi."}\n{"instruction": "\\udc80", "output": "x"}\n')
    one_line(*run_main(capsys, ["finetune", "--model", base / "hf", "--data", bad, "--out", tmp_path / "o"]),
             "finetune", f"{bad}:2: not valid JSON (a string holds a lone surrogate (\\udc80)")
    one_line(*run_main(capsys, ["judge", "--answers", bad, "--judge", "x", "--out", tmp_path / "o"]), "judge",
             "lone surrogate (\\udc80)")
    assert not (tmp_path / "o").exists()


def test_a_nested_endpoint_reply_in_self_instruct(tmp_path, capsys):
    from scripted_endpoint import ScriptedEndpoint

    deep = b'{"id": "x", "object": "chat.completion", "choices": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with ScriptedEndpoint(body=deep) as endpoint:
        code, err = run_main(capsys, ["self-instruct", "--teacher", endpoint.url, "--out", tmp_path / "o.jsonl", "--n", 1,
                                      "--retries", 0, "--no-progress"])
    one_line(code, err, "self-instruct", "chat/completions answered")


# ----------------------------------------------------------------------- JSON nested 200k deep, refused
DEEP = "[" * 200_000 + "]" * 200_000


def _deepen(path: Path, key: str | None = None):
    if key is None:
        path.write_text(DEEP)
    else:
        path.write_text(json.dumps({**json.loads(path.read_text()), key: "@"}).replace('"@"', DEEP))


DEEP_CASES = {  # name: (file to damage in a copy of base, key or None, command, argv(copy))
    "HF config.json": ("hf/config.json", "rope_scaling", "generate",
                       lambda c: ["generate", "--model", c / "hf", "--prompt", "hi"]),
    "tokenizer_config.json": ("hf/tokenizer_config.json", "added_tokens_decoder", "generate",
                              lambda c: ["generate", "--model", c / "hf", "--prompt", "hi"]),
    "adapter_config.json": ("adapter/adapter_config.json", "rank_pattern", "generate",
                            lambda c: ["generate", "--model", c / "hf", "--adapter", c / "adapter", "--prompt", "hi"]),
    "finetune data": ("pairs.jsonl", None, "finetune",
                      lambda c: ["finetune", "--model", c / "hf", "--data", c / "pairs.jsonl", "--out", c / "o"]),
    "judge answers": ("answers.jsonl", None, "judge",
                      lambda c: ["judge", "--answers", c / "answers.jsonl", "--judge", "x", "--out", c / "o"]),
}


@pytest.mark.parametrize("case", list(DEEP_CASES))
def test_json_nested_200k_deep_is_one_error(case, base, tmp_path, capsys):
    import shutil

    rel, key, command, argv = DEEP_CASES[case]
    copy = tmp_path / "copy"
    shutil.copytree(base, copy)
    _deepen(copy / rel, key)
    one_line(*run_main(capsys, argv(copy)), command, "nested deeper than 256 levels")
    assert not (copy / "o").exists()


def test_a_dataset_manifest_nested_200k_deep(tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    _deepen(data / "manifest.json")
    one_line(*run_main(capsys, ["data", "mixture", "--data", data, "--tokens", "1e6"]), "data", "nested deeper")


# ------------------------------------------------------------------------------- damaged adapter configs
ADAPTERS = {  # name: (change to adapter_config.json or the weights, error)
    "catastrophic rank_pattern regex": ({"rank_pattern": {"(a+)+$": 4}}, "is not a module name"),
    "r NaN": ({"r": float("nan")}, "r must be a positive finite number"),
    "lora_alpha Infinity": ({"lora_alpha": float("inf")}, "lora_alpha must be a positive finite number"),
    "lora_alpha 1e308": ({"lora_alpha": 1e308}, "would overflow float32"),
    "r not the tensors' rank": ({"r": 4}, "has rank 2 but the config says r=4"),
    "rank_pattern r not the tensors' rank": ({"rank_pattern": {"q_proj": 8}}, "but the config says r=8"),
    "alpha_pattern negative": ({"alpha_pattern": {"v_proj": -1}}, "alpha_pattern must map module names"),
    "NaN weights": ("nan", "holds NaN or infinite values"),
}


@pytest.mark.parametrize("case", list(ADAPTERS))
def test_lora_merge_never_writes_a_broken_model(case, base, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    change, needle = ADAPTERS[case]
    adapter = tmp_path / "adapter"
    shutil.copytree(base / "adapter", adapter)
    if change == "nan":
        tensors = load_file(adapter / "adapter_model.safetensors")
        next(iter(tensors.values()))[0, 0] = float("nan")
        save_file(tensors, adapter / "adapter_model.safetensors")
    else:
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, **change}))  # NaN/Infinity as Python writes
    code, err = run_main(capsys, ["lora", "merge", "--model", base / "hf", "--adapter", adapter, "--out", tmp_path / "m"])
    one_line(code, err, "lora", needle)
    assert not (tmp_path / "m").exists()
    code, err = run_main(capsys, ["generate", "--model", base / "hf", "--adapter", adapter, "--prompt", "hi"])
    one_line(code, err, "generate", needle)


def test_an_intact_adapter_still_merges(base, tmp_path, capsys):
    code, err = run_main(capsys, ["lora", "merge", "--model", base / "hf", "--adapter", base / "adapter", "--out",
                                  tmp_path / "m"])
    assert code == 0, err


# --------------------------------------------------------------- bombs and sparse files, in bounded memory
def _gzip_line(path: Path, n: int) -> Path:
    """One JSON line of `n` decompressed bytes (a few KB compressed)."""
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b'{"text": "')
        for _ in range(n // (1 << 20)):
            f.write(b"a" * (1 << 20))
        f.write(b'"}\n')
    return path


def _xz_lines(path: Path, n: int) -> Path:
    """Short lines, `n` bytes in all once decompressed: only the per-file cap stops it."""
    with lzma.open(path, "wb") as f:
        for _ in range(n // (1 << 20)):
            f.write(b"word " * 15 + b"\n" + b"more words here\n" * ((1 << 20) // 16 - 5))
    return path


def _sparse(path: Path, n: int = 10 << 30) -> Path:
    with open(path, "wb") as f:
        f.truncate(n)  # no disk used: a hole reads as zeros
    return path


BOMBS = {  # name: (command, argv(tmp, spm, base) with the material made in tmp, needle, caps)
    "data prepare: gzip line over the record cap": ("data", lambda t, spm, b: [
        "data", "prepare", "--source", f"s={_gzip_line(t / 'bomb.jsonl.gz', 2 << 20)}", "--tokenizer", spm,
        "--out", t / "o", "--no-progress", "--workers", 1], "a line longer than 1,048,576 bytes", CAPS),
    "data prepare: 10 GB sparse text, default caps": ("data", lambda t, spm, b: [
        "data", "prepare", "--source", f"s={_sparse(t / 'hole.txt')}", "--tokenizer", spm, "--out", t / "o",
        "--no-progress", "--workers", 1], "document larger than 268,435,456 bytes", {}),
    "tokenizer train: xz over the file cap": ("tokenizer", lambda t, spm, b: [
        "tokenizer", "train", "--input", _xz_lines(t / "lines.txt.xz", 6 << 20), "--vocab-size", 300, "--out",
        t / "o", "--no-progress"], "more than 4,194,304 bytes once decompressed", CAPS),
    "tokenize --jsonl: sparse": ("tokenize", lambda t, spm, b: [
        "tokenize", "-t", spm, "--jsonl", _sparse(t / "hole.jsonl")], "a line longer than 1,048,576 bytes", CAPS),
    "finetune data: sparse": ("finetune", lambda t, spm, b: [
        "finetune", "--model", b / "hf", "--data", _sparse(t / "hole.jsonl"), "--out", t / "o"],
        "file larger than 1,048,576 bytes", CAPS),
    "perplexity text: sparse": ("perplexity", lambda t, spm, b: [
        "perplexity", "--model", b / "model.gguf", "--input", _sparse(t / "hole.txt")], "larger than 1,048,576", CAPS),
    "judge answers: sparse": ("judge", lambda t, spm, b: [
        "judge", "--answers", _sparse(t / "hole.jsonl"), "--judge", "x", "--out", t / "o"],
        "file larger than 1,048,576 bytes", CAPS),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_bombs_and_sparse_files_stop_at_a_cap_in_bounded_memory(case, base, llama_spm_gguf, tmp_path):
    command, argv, needle, caps = BOMBS[case]
    p = cli(*argv(tmp_path, llama_spm_gguf, base), env=caps)
    one_line(p.returncode, p.stderr.decode(errors="replace"), command, needle)
    assert not (tmp_path / "o").exists()
    assert not [f for f in tmp_path.rglob("*") if f.name.startswith(".o.")]  # no staged leftovers


def test_data_clean_counts_a_zstd_bomb_as_a_bad_record(tmp_path):
    import zstandard

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "ok.jsonl").write_text('{"text": "A perfectly ordinary sentence about cats and dogs."}\n')
    with zstandard.open(raw / "bomb.jsonl.zst", "wb") as f:
        for _ in range(2):
            f.write(b"x" * (1 << 20))
    p = cli("data", "clean", "--input", raw, "--output", tmp_path / "clean", "--stages", "normalize", "--no-progress",
            env=CAPS)
    assert p.returncode == 0, p.stderr.decode()
    report = json.loads((tmp_path / "clean" / "stats.json").read_text())
    assert any("a line longer than 1,048,576 bytes" in r["error"] for r in report["bad_records"]), report["bad_records"]


def test_a_symlink_out_of_a_source_directory_is_refused(llama_spm_gguf, tmp_path, capsys):
    src = _text_source(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the source")
    (src / "link.txt").symlink_to(secret)
    one_line(*run_main(capsys, ["data", "prepare", "--source", f"s={src}", "--tokenizer", llama_spm_gguf, "--out",
                                tmp_path / "o", "--no-progress"]), "data", "outside the input directory")
    assert not (tmp_path / "o").exists()


# -------------------------------------------------------------------------- a full disk leaves nothing
FULL = "full=$1; shift; mount -t tmpfs -o size=64k tmpfs \"$full\" || exit 1; \"$@\"; code=$?; find \"$full\"; exit $code"
STAGED = re.compile(r"(\.tmp$)|(^\..+\.[a-z0-9_]{8}$)")  # step-N.tmp, atomic's .name.XXXXXXXX temporaries


def on_a_full_disk(tmp_path, *args) -> tuple[subprocess.CompletedProcess, list[str]]:
    """Run the CLI in a mount namespace of our own where `tmp_path/full` is a 64 KiB tmpfs; (the process,
    what it left there)."""
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed to make a full filesystem for this test"
    full = tmp_path / "full"
    full.mkdir()
    p = subprocess.run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", FULL, "sh", full,
                        sys.executable, "-m", "llamalab", *map(str, args)], capture_output=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return p, [line for line in p.stdout.decode().splitlines() if line.startswith(str(full))]


def _random_text(path: Path, docs: int = 3000) -> Path:
    """JSON lines of random words (gzip cannot squeeze them into 64 KiB)."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), rng.integers(2, 9))) for _ in range(3000)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": " ".join(rng.choice(words, 60)) + "."}) + "\n" for _ in range(docs)))
    return path


FULL_DISK = {  # name: (command, argv(tmp, base, full))
    "train": ("train", lambda t, b, full: [
        "train", "model=tiny", "seq_len=32", "micro_batch_size=2", "max_steps=2", "warmup_steps=1", "progress=false",
        f"data={_dataset(t / 'data')}", f"out_dir={full / 'run'}"]),
    "finetune (LoRA)": ("finetune", lambda t, b, full: [
        "finetune", "--model", b / "hf", "--data", b / "pairs.jsonl", "--out", full / "run", "--lora-rank", 2,
        "--max-steps", 2, "--seq-len", 96, "--progress", "false", "--samples", 0]),
    "data clean": ("data", lambda t, b, full: [
        "data", "clean", "--input", _random_text(t / "raw" / "a.jsonl").parent, "--output", full / "clean",
        "--stages", "normalize", "--no-progress"]),
}


@pytest.mark.parametrize("case", list(FULL_DISK))
def test_a_full_disk_is_one_line_and_leaves_no_temporaries(case, base, tmp_path):
    command, argv = FULL_DISK[case]
    p, left = on_a_full_disk(tmp_path, *argv(tmp_path, base, tmp_path / "full"))
    one_line(p.returncode, p.stderr.decode(errors="replace"), command, "No space left on device")
    assert not [f for f in left if STAGED.search(Path(f).name)], left
