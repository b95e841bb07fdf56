"""A valid header claiming a huge context (GGUF `context_length` 2e8, HF `max_position_embeddings` 2^33) loads,
generates and evaluates in bounded memory: the rotary table covers the positions used, not the header's claim
(2e8 positions of SmolLM2's table are 51 GB; 2^33 of the tiny model's, 550 GB). The runs are children under
RLIMIT_AS (`test_cli_input.cli`). And `--context` / `--max-new-tokens` beyond what the model holds are one line."""

from __future__ import annotations

import json
import resource
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_cli_input import MEMORY, cli

from cli_output import without_notices
from llamalab.cli import main
from llamalab.config import PRESETS
from llamalab.formats import save
from tiny import random_state

ARGS = PRESETS["tiny"].replace(vocab_size=32000)  # the real LLaMA vocabulary, so the CLI has a tokenizer


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, llama_spm_gguf) -> Path:
    out = tmp_path_factory.mktemp("context") / "tiny"
    save(random_state(ARGS), ARGS, out, "hf", tokenizer_src=llama_spm_gguf)
    return out


@pytest.fixture(scope="module")
def huge_hf(tiny_hf) -> Path:
    out = tiny_hf.with_name("huge")
    shutil.copytree(tiny_hf, out)
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2**33}))
    return out


def test_gguf_claiming_2e8_positions_generates(smollm2_gguf, tmp_path):
    data = bytearray(smollm2_gguf.read_bytes())
    at = data.index(b"llama.context_length") + len(b"llama.context_length")
    assert struct.unpack_from("<II", data, at) == (4, 8192)  # a uint32 value: the real context
    struct.pack_into("<I", data, at + 4, 200_000_000)
    huge = tmp_path / "huge.gguf"
    huge.write_bytes(data)
    p = cli("generate", "--model", str(huge), "--prompt", "The capital of France is", "--max-new-tokens", "4")
    assert p.returncode == 0 and b"Paris" in p.stdout, (p.stdout, p.stderr.decode())


CHILD = textwrap.dedent("""
    import json, sys
    from llamalab.eval.llm import LLM
    from llamalab.formats import load
    from llamalab.generate import generate
    out = []
    for path in sys.argv[1:]:
        ckpt = load(path)
        llm = LLM(ckpt.model, ckpt.tokenizer, progress=False)
        scores = llm.loglikelihood([("The capital of France is", " Paris"), ("The capital of France is", " Rome"),
                                    ("", "Once upon a time")])
        texts = llm.generate(["Once upon a time", "Hi"], until=["\\n"], max_new_tokens=8)
        ids = generate(ckpt.model, [[1, 15043, 3186], [1, 450]], max_new_tokens=8)
        out.append([ckpt.args.max_seq_len, len(ckpt.model.freqs_cis), scores, texts, ids])
    print(json.dumps(out))
""")


def test_hf_claiming_2_to_the_33_positions_evaluates_and_generates_as_the_real_one(tiny_hf, huge_hf):
    """Scores (packed rows with their own positions) and batched generation, in a child under RLIMIT_AS, equal
    to those of the same weights with the real context of 128; and a chat session."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY, MEMORY))

    p = subprocess.run([sys.executable, "-c", CHILD, str(tiny_hf), str(huge_hf)], capture_output=True, text=True,
                       timeout=300, preexec_fn=limit)
    assert p.returncode == 0, p.stderr
    real, huge = json.loads(p.stdout)
    assert real[0] == 128 and huge[0] == 2**33 and huge[1] <= 64, huge[:2]  # the table: the positions used
    assert huge[2:] == real[2:]
    p = cli("chat", "--model", str(huge_hf), "--template", "llama-2", "--max-new-tokens", "8",
            stdin=b"Hello\nAnd again\n")  # the default context: min(model's, 4096)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr.decode()


def one_line(capsys, argv, *needles):
    code = main(argv)
    err = without_notices(capsys.readouterr().err)
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"llamalab {argv[0]}: error: ") and all(n in err for n in needles), err


def test_context_flags_are_bounded_by_the_model(capsys, tiny_hf):
    """The KV cache is allocated up front for --context tokens: more than the model's context (128 here), 0, or
    an answer length that leaves no room for a message is refused, not clamped or tried."""
    model = ["--model", str(tiny_hf), "--template", "llama-2"]
    one_line(capsys, ["chat", *model, "--context", "0"], "argument --context: must be an integer >= 1, got 0")
    one_line(capsys, ["chat", *model, "--context", "-5"], "argument --context: must be an integer >= 1, got -5")
    one_line(capsys, ["chat", *model, "--max-new-tokens", "0"], "argument --max-new-tokens: must be an integer >= 1, got 0")
    one_line(capsys, ["chat", *model, "--context", "100000000"],
             "--context 100000000 is larger than the model's context of 128 tokens")
    one_line(capsys, ["chat", *model], "--max-new-tokens 512 leaves no room for a message in the context of 128")
    one_line(capsys, ["chat", *model, "--context", "64", "--max-new-tokens", "64"], "lower it below 64")
    one_line(capsys, ["serve", *model[:2], "--port", "0", "--context", "129"],
             "--context 129 is larger than the model's context of 128 tokens")
    one_line(capsys, ["generate", *model[:2], "--prompt", "hi", "--max-new-tokens", "-3"],
             "argument --max-new-tokens: must be an integer >= 1, got -3")
    one_line(capsys, ["generate", *model[:2], "--prompt", "hi", "--max-new-tokens", "200"],
             "exceeds the model's context of 128 tokens")


def test_a_context_the_model_allows_but_memory_cannot_hold_is_one_line(huge_hf):
    """--context within the header's claim (2^33) but far beyond memory: the up-front KV cache allocation fails
    with one line naming its size, under RLIMIT_AS, not with torch's allocator traceback."""
    p = cli("chat", "--model", str(huge_hf), "--template", "llama-2", "--context", str(2**32), stdin=b"Hello\n")
    err = p.stderr.decode().strip()
    assert p.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "not enough memory" in err and "lower --context" in err, err
