"""Hostile or unlucky input to the real CLI: one line `llamalab CMD: error: ...`, exit code 2, in bounded
memory and time, never a traceback. Each runs `python -m llamalab` in a child process under RLIMIT_AS."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys

import numpy as np
import pytest
from token_data import write_token_dataset
from cli_output import without_notices

MEMORY = 3 << 30  # address space for the child: loading SmolLM2 fits in 2 GB
NO_SPACE = ("full=$1; mount -t tmpfs -o size=64k tmpfs \"$1\" && mount -t tmpfs -o ro tmpfs \"$2\" && shift 2 || exit 1; "
            "\"$@\"; code=$?; ls -A \"$full\"; exit $code")


def cli(*args, stdin: bytes = b"", wrap=(), timeout=120) -> subprocess.CompletedProcess:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))
    return subprocess.run([*wrap, sys.executable, "-m", "llamalab", *args], input=stdin, capture_output=True,
                          timeout=timeout, preexec_fn=limit)


def one_line_error(p: subprocess.CompletedProcess, command: str, *needles: str) -> str:
    err = without_notices(p.stderr.decode(errors="replace"))
    assert p.returncode == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"llamalab {command}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def test_text_that_is_not_utf8(smollm2_gguf, llama_spm_gguf, tmp_path):
    # (chat reads its messages through the same check as these)
    one_line_error(cli("generate", "--model", str(smollm2_gguf), "--prompt", b"caf\xe9 \xff"), "generate",
                   "prompt is not valid UTF-8 text: byte 0xe9 at position 3")
    one_line_error(cli("tokenize", "-t", str(llama_spm_gguf), b"a\xffb"), "tokenize", "text is not valid UTF-8")
    one_line_error(cli("tokenize", "-t", str(llama_spm_gguf), "-", stdin=b"ok \xc3\x28"), "tokenize",
                   "standard input is not valid UTF-8 text: byte 0xc3 at offset 3")
    jsonl = tmp_path / "texts.jsonl"
    jsonl.write_bytes(b'"fine"\n{"text": "latin-1 caf\xe9"}\n')
    one_line_error(cli("tokenize", "-t", str(llama_spm_gguf), "--jsonl", str(jsonl)), "tokenize",
                   f"{jsonl}:2: not UTF-8 text")


def test_devices_that_do_not_exist(smollm2_gguf):
    import torch

    one_line_error(cli("generate", "--model", str(smollm2_gguf), "--prompt", "hi", "--device", "bogus"),
                   "generate", "unknown device 'bogus'")
    missing = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    one_line_error(cli("generate", "--model", str(smollm2_gguf), "--prompt", "hi", "--device", missing),
                   "generate", f"device '{missing}'")


@pytest.mark.parametrize("temperature", [1e-300, 1e-45, 1e-30, 1e-4])
def test_tiny_temperature_is_greedy(temperature):
    # `--temperature 1e-300` gave NaN probabilities (1e-300 is 0 in float32, and l / 1e-30 overflows it);
    # the limit T -> 0 is greedy decoding
    import torch

    from llamalab.sampling import Sampler

    logits = torch.randn(64, 1000, generator=torch.Generator().manual_seed(0)) * 30
    sampler = Sampler(temperature=temperature)
    assert torch.isfinite(sampler.process(logits).softmax(-1)).all()
    assert torch.equal(sampler(logits, None, torch.Generator().manual_seed(1)), logits.argmax(-1))


@pytest.fixture
def no_space(tmp_path):
    """(wrapper, full dir, read-only dir): run a command in a mount namespace of our own where `full` is a
    64 KiB tmpfs and `readonly` a read-only one (an unprivileged user namespace: no root needed); what the
    command leaves on `full` is listed on its standard output."""
    unshare = shutil.which("unshare")
    assert unshare, "util-linux's unshare is needed to make a full and a read-only filesystem for this test"
    full, readonly = tmp_path / "full", tmp_path / "readonly"
    full.mkdir(), readonly.mkdir()
    return [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", NO_SPACE, "sh", str(full), str(readonly)], \
        full, readonly


def test_writes_to_a_full_disk_or_a_read_only_directory(smollm2_gguf, llama_spm_gguf, no_space, tmp_path):
    wrap, full, readonly = no_space
    for to in ("hf", "meta", "gguf"):  # torch.save (meta) reports a full disk as "unexpected pos"
        p = cli("convert", str(smollm2_gguf), "--to", to, "--out", str(full / to), wrap=wrap)
        one_line_error(p, "convert", "No space left on device", str(full / to))
        assert p.stdout == b"", p.stdout  # nothing half-written is left on the full filesystem
    write_token_dataset(tmp_path / "data", {"a": np.random.default_rng(0).integers(0, 512, 5_000)}, vocab_size=512)
    train = ("train", "model=tiny", "seq_len=32", "micro_batch_size=2", "max_steps=2", "warmup_steps=1",
             "progress=false", f"data={tmp_path / 'data'}")
    one_line_error(cli(*train, f"out_dir={full / 'run'}", wrap=wrap), "train", "No space left on device",
                   str(full / "run" / "ckpt" / "step-000002.tmp"))
    one_line_error(cli(*train, f"out_dir={readonly / 'run'}", wrap=wrap), "train", "Read-only file system",
                   str(readonly / "run"))
    # standard output on a full disk
    with open("/dev/full", "wb") as devfull:
        p = subprocess.run([sys.executable, "-m", "llamalab", "tokenize", "-t", str(llama_spm_gguf), "hello"],
                           stdout=devfull, stderr=subprocess.PIPE, timeout=120)
    one_line_error(p, "tokenize", "No space left on device")
