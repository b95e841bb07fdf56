"""`eval`, `serve` and `chat` with --tensor-parallel 3 on SmolLM2-135M (9 query heads, 3 key/value heads: each of
3 gloo ranks holds 3 query heads, 1 key/value head, a third of the MLP and of the vocabulary, and a third of the
KV cache) give what one process gives on the same checkpoint in float32.

The checkpoint is SmolLM2's GGUF dequantized to float32 once and written as an HF directory (every process then
loads it in a second instead of dequantizing). The references are the same commands run by one process (whole weights, whose greedy tokens
test_generate_smollm2.py checks against transformers). The sharded model sums its partial products in another
order, so log-likelihoods agree to float32 rounding (1e-5 relative), and the tokens, choices and accuracies
exactly. 3 processes on 2 cores are slow: few items, few tokens.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal

import httpx
import pytest

from llamalab import formats
from llamalab.cli import main
from llamalab.serve.process import ServerProcess
from test_tensor_parallel import cli

QUESTION = "What is the capital of France?"
N = 8  # new tokens
CITY = {"type": "object", "properties": {"capital": {"type": "string", "maxLength": 20}}, "required": ["capital"],
        "additionalProperties": False}


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory, smollm2_gguf, smollm2_fp32):
    """SmolLM2-135M-Instruct's real weights (tied embeddings), float32, as an HF directory with its tokenizer."""
    ckpt = smollm2_fp32
    state = {k: v for k, v in ckpt.model.state_dict().items() if k != "output.weight"}
    return formats.save(state, ckpt.args, tmp_path_factory.mktemp("smollm2") / "hf", "hf", smollm2_gguf)


def in_process(*argv, stdin: str | None = None) -> str:
    """stdout of `llamalab ARGV` run by this process (one process: the reference)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.ExitStack() as stack:
        if stdin is not None:
            stack.enter_context(pytest.MonkeyPatch.context()).setattr("sys.stdin", io.StringIO(stdin))
        assert main(list(argv)) == 0
    return out.getvalue()


def test_eval_tp3_gives_the_one_process_choices_and_generations(smollm2, tmp_path):
    """arc_easy (log-likelihoods of 4 choices) and gsm8k (greedy generation), 2 items each."""
    flags = ["--model", str(smollm2), "--tasks", "arc_easy,gsm8k", "--limit", "2", "--shots", "0",
             "--max-new-tokens", str(N)]
    in_process("eval", *flags, "--log-samples", str(tmp_path / "one.jsonl"), "--output", str(tmp_path / "one.json"))
    p = cli(*flags, "--tensor-parallel", "3", "--log-samples", str(tmp_path / "tp.jsonl"), command="eval", nproc=3)
    assert p.returncode == 0, p.stderr
    one, tp = ([json.loads(line) for line in (tmp_path / f"{name}.jsonl").open()] for name in ("one", "tp"))
    assert [r["task"] for r in tp] == ["arc_easy"] * 2 + ["gsm8k"] * 2
    for a, b in zip(one, tp):  # the same choices, accuracies, generations; log-likelihoods to float32 rounding
        assert b.pop("loglikelihoods", []) == pytest.approx(a.pop("loglikelihoods", []), rel=1e-5)
        assert b == a
    assert any(r["generation"].strip() for r in tp if r["task"] == "gsm8k")
    report = json.loads(p.stdout)  # printed once, by rank 0
    assert report["results"] == json.loads((tmp_path / "one.json").read_text())["results"]
    assert p.stderr.count("arc_easy: acc") == 1


def test_serve_tp3_answers_like_one_process_and_stops_cleanly(smollm2, tmp_path, monkeypatch):
    """A greedy chat request, a seeded sampled completion (rank 0 sends the seed with the operation;
    every rank samples the same token) and a chat request constrained by a JSON schema (rank 0 sends the
    schema, every rank masks alike), then SIGTERM to rank 0: it drains, tells the others, all exit 0."""
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(CITY))
    one = {"json": in_process("generate", "--model", str(smollm2), "--no-stream", "--chat", "--prompt", QUESTION,
                              "--max-new-tokens", "40", "--json-schema", str(schema)),
           "chat": in_process("generate", "--model", str(smollm2), "--no-stream",
                              "--chat", "--prompt", QUESTION, "--max-new-tokens", str(N)),
           "sampled": in_process("generate", "--model", str(smollm2), "--no-stream",
                                 "--prompt", "The capital of France is", "--max-new-tokens", str(N),
                                 "--temperature", "0.8", "--seed", "3")}
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # 3 processes on 2 cores
    server = ServerProcess(smollm2, "--max-batch", "2", "--context", "256", "--no-ui", "--served-model-name", "smol",
                           tensor_parallel=3, log=tmp_path / "server.log")
    try:
        chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
            "model": "smol", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": N, "temperature": 0})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"] == one["chat"]
        sampled = httpx.post(f"{server.url}/v1/completions", timeout=300, json={
            "model": "smol", "prompt": "The capital of France is", "max_tokens": N, "temperature": 0.8, "seed": 3})
        assert sampled.json()["choices"][0]["text"] == one["sampled"]
        constrained = httpx.post(f"{server.url}/v1/chat/completions", timeout=300, json={
            "model": "smol", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 40, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "city", "schema": CITY}}})
        assert constrained.json()["choices"][0]["message"]["content"] == one["json"] and json.loads(one["json"])
        rank0 = int(re.search(r"Started server process \[(\d+)\]", server.log()).group(1))
        os.kill(rank0, signal.SIGTERM)  # what Ctrl-C / a supervisor does to the server
        assert server.proc.wait(120) == 0, server.log()
    finally:
        server.stop()
    assert "llamalab serve: stopped" in server.log() and "Traceback" not in server.log()


def test_chat_tp3_follows_rank_0s_turns(smollm2):
    turns = f"{QUESTION}\nAnd of Italy?\n"
    flags = ["--model", str(smollm2), "--max-new-tokens", str(N)]
    expected = in_process("chat", *flags, stdin=turns)
    assert expected.count("\n") == 2 and "Paris" in expected
    p = cli(*flags, "--tensor-parallel", "3", command="chat", nproc=3, input=turns)
    assert p.returncode == 0, p.stderr
    assert p.stdout == expected  # printed once, by rank 0


@pytest.mark.parametrize("command,flags,message", [
    ("chat", ["--tensor-parallel", "2"], "tensor parallel size 2 does not divide this model's 9 query heads, "
                                         "3 key/value heads"),
    ("chat", ["--tensor-parallel", "3", "--compile"], "--compile does not combine with --tensor-parallel"),
    ("serve", ["--tensor-parallel", "3", "--port", "0", "--adapter", "x"], "--adapter does not combine"),
    ("generate", ["--tensor-parallel", "3", "--input", "q.jsonl", "--out", "a.jsonl"], "--input does not combine"),
])
def test_what_tensor_parallel_inference_does_not_do_is_one_line(smollm2, capsys, command, flags, message):
    """eval, serve, chat and generate share the loader that refuses these (sizes after the load: they need
    the model's head counts)."""
    assert main([command, "--model", str(smollm2), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
