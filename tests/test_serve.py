"""`llamalab serve` as a real process on SmolLM2, driven by OpenAI's own Python client and raw HTTP.

Expected answers come from `llamalab generate` (the CLI, in this process) on the same checkpoint, whose
greedy tokens are checked against transformers in test_generate_smollm2.py.

The main server runs the weights dequantized to float32, as does its reference: float32 matmuls give a sequence
the same logits to ~1e-6 whatever the batch and whichever kernel, so concurrent answers can be compared with lone
ones token for token. It decodes eagerly: `--compile` (minutes of inductor for SmolLM2's 30 layers on 2 cores) is
test_serve_compile.py's, on a 2-layer checkpoint, and SmolLM2's compiled decode step test_generate_smollm2.py's.
The quantized default (activations rounded for the int4 and int8 kernels) is checked against `llamalab generate`
on a lone request, where the batch is the same on both sides.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from llamalab.cli import main as cli_main
from llamalab.serve.process import ServerProcess

N = 16  # new tokens per answer: small, this runs on 2 CPU cores
QUESTION = "What is the capital of France?"
RAW = "The capital of France is"
SLOTS, QUEUE = 8, 64


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    s = ServerProcess(smollm2_gguf, "--max-batch", str(SLOTS), "--max-queue", str(QUEUE), "--context", "512",
                      "--served-model-name", "smol", "--dtype", "float32",
                      log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def expected(smollm2_gguf):
    """`llamalab generate` for the chat question and the raw prompt (greedy, N tokens, float32), and for
    the chat question with the quantized weights as stored (the default)."""
    import contextlib
    import io

    def generate(*args):
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert cli_main(["generate", "--model", str(smollm2_gguf), "--max-new-tokens", str(N), "--no-stream",
                             *args]) == 0
        return out.getvalue()

    return {"chat": generate("--chat", "--prompt", QUESTION, "--dtype", "float32"),
            "raw": generate("--prompt", RAW, "--dtype", "float32"),
            "quantized": generate("--chat", "--prompt", QUESTION)}


def chat(client, **kw):
    kw = {"model": "smol", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": N,
          "temperature": 0, **kw}
    return client.chat.completions.create(**kw)


def test_models_and_health(server, client):
    assert [m.id for m in client.models.list().data] == ["smol"]
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"


def test_chat_greedy_equals_generate(client, expected):
    answer = chat(client)
    assert answer.choices[0].message.content == expected["chat"]
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.completion_tokens <= N and answer.usage.prompt_tokens > 10
    streamed = list(chat(client, stream=True, stream_options={"include_usage": True}))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected["chat"]
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == answer.choices[0].finish_reason
    assert streamed[-1].usage.total_tokens == answer.usage.total_tokens


def test_completion_greedy_equals_generate_and_stops(client, expected):
    answer = client.completions.create(model="smol", prompt=RAW, max_tokens=N, temperature=0)
    assert answer.choices[0].text == expected["raw"]
    pieces = client.completions.create(model="smol", prompt=RAW, max_tokens=N, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in pieces) == expected["raw"]
    assert "." in expected["raw"]  # so the stop string below cuts the answer
    cut = client.completions.create(model="smol", prompt=RAW, max_tokens=N, temperature=0, stop=["."])
    assert (cut.choices[0].text, cut.choices[0].finish_reason) == (expected["raw"].split(".")[0], "stop")


def test_n2_with_a_seed_is_reproducible(client):
    kw = dict(n=2, temperature=1.0, seed=1234, max_tokens=12)
    first = [c.message.content for c in chat(client, **kw).choices]
    assert [c.message.content for c in chat(client, **kw).choices] == first
    assert first[0] != first[1]  # two samples, not one answer twice
    assert [c.message.content for c in chat(client, **{**kw, "seed": 99}).choices] != first


def test_logprobs(client):
    answer = chat(client, max_tokens=4, logprobs=True, top_logprobs=3)
    entries = answer.choices[0].logprobs.content
    assert "".join(e.token for e in entries) == answer.choices[0].message.content
    for e in entries:  # greedy: the chosen token is the most probable one
        assert len(e.top_logprobs) == 3 and e.top_logprobs[0].token == e.token
        assert e.top_logprobs[0].logprob == pytest.approx(e.logprob) and e.logprob <= 0
    completion = client.completions.create(model="smol", prompt=RAW, max_tokens=3, temperature=0, logprobs=2)
    lp = completion.choices[0].logprobs
    assert "".join(lp.tokens) == completion.choices[0].text and len(lp.token_logprobs) == 3
    assert all(len(top) == 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0


def test_concurrent_requests_decode_together(server, client, expected):
    """Requests arriving together share decode steps (batch size > 1) and still get their own answers."""
    before = server.metrics()

    async def ask(c, i):
        if i % 2:
            return (await c.completions.create(model="smol", prompt=RAW, max_tokens=N, temperature=0)).choices[0].text
        r = await c.chat.completions.create(model="smol", messages=[{"role": "user", "content": QUESTION}],
                                            max_tokens=N, temperature=0)
        return r.choices[0].message.content

    async def main():
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=300) as c:
            return await asyncio.gather(*(ask(c, i) for i in range(4)))

    assert asyncio.run(main()) == [expected["chat"], expected["raw"]] * 2
    after = server.metrics()
    steps = after["llamalab_decode_batch_size_count"] - before["llamalab_decode_batch_size_count"]
    single = after['llamalab_decode_batch_size_bucket{le="1.0"}'] - before['llamalab_decode_batch_size_bucket{le="1.0"}']
    assert steps - single > 0  # some steps advanced several sequences at once
    assert steps < 4 * N  # ... so fewer steps than one request after another


BAD_BODIES = [
    ("chat", '{"messages": [{"role": "user", "content": "hi"}', "not valid JSON"),
    ("chat", '[1, 2]', "JSON object"),
    ("chat", '{"messages": []}', "messages"),
    ("chat", '{"messages": [{"role": "wizard", "content": "hi"}]}', "messages.0.role"),
    ("chat", '{"messages": [{"role": "user", "content": 5}]}', "messages.0.content"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}', "max_tokens"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "max_tokens": "7"}', "max_tokens"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}', "temperature"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "n": 0}', "n"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]}', "stop"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "frequency_penalty": 1}', "frequency_penalty"),
    ("chat", '{"messages": "hi"}', "messages"),
    ("chat", '{}', "messages"),
    ("completions", '{"prompt": [[1, 2], [99999999]]}', "token ids"),
    ("completions", '{"prompt": []}', "prompt"),
    ("completions", '{"prompt": "hi", "max_tokens": 100000}', "context"),
    ("completions", json.dumps({"prompt": "word " * 600}), "context"),
    ("completions", '{"prompt": "hi", "echo": true}', "echo"),
]


@pytest.mark.parametrize("endpoint,body,says", BAD_BODIES)
def test_malformed_bodies_get_4xx_with_a_message(server, endpoint, body, says):
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    r = httpx.post(server.url + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert r.status_code == 400, r.text
    assert says in r.json()["error"]["message"] and r.json()["error"]["type"] == "invalid_request_error"


def test_other_bad_requests(server):
    url = server.url
    r = httpx.post(f"{url}/v1/chat/completions", json={"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    big = httpx.post(f"{url}/v1/completions", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 413 and "larger than" in big.json()["error"]["message"]

    def chunked():  # no Content-Length: the bound applies as the body arrives
        for _ in range(64):
            yield b"y" * 65536

    assert httpx.post(f"{url}/v1/completions", content=chunked()).status_code == 413
    assert httpx.get(f"{url}/v1/nowhere").status_code == 404 and "error" in httpx.get(f"{url}/v1/nowhere").json()
    assert httpx.get(f"{url}/v1/chat/completions").status_code == 405
    assert "Traceback" not in server.log()


async def _open_streams(url: str, count: int, max_tokens: int, hold: bool = False) -> list:
    """Start `count` streaming completions at once: [(status, first chunk or error body)].

    Each accepted stream is closed after its first token (a client going away mid-answer) or, with
    `hold`, once every request has its status (so accepted ones keep their place until then)."""
    limits = httpx.Limits(max_connections=count + 8)
    answered = asyncio.Event()
    statuses = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as c:
        async def one(i):
            body = {"prompt": f"{i} {RAW}", "max_tokens": max_tokens, "temperature": 0, "stream": True}
            async with c.stream("POST", "/v1/completions", json=body) as r:
                statuses.append(r.status_code)
                if len(statuses) == count:
                    answered.set()
                if r.status_code != 200:
                    return r.status_code, json.loads(await r.aread())
                if hold:
                    await answered.wait()
                    return 200, None
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        return 200, json.loads(line[6:])  # leaving the block closes the connection
                return 200, None
        return await asyncio.gather(*(one(i) for i in range(count)))


def _wait_idle(server, timeout=120.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        if m["llamalab_running_sequences"] == m["llamalab_queue_depth"] == m["llamalab_requests_in_progress"] == 0:
            return m
        assert time.monotonic() < deadline, m
        time.sleep(0.5)


def test_64_clients_disconnecting_mid_stream_leave_nothing_behind(server, client, expected):
    chat(client, max_tokens=2)  # warm
    before = _wait_idle(server)
    results = asyncio.run(_open_streams(server.url, 64, max_tokens=200))
    assert all(status == 200 and chunk["choices"][0]["text"] is not None for status, chunk in results)
    after = _wait_idle(server)
    assert after["llamalab_cancelled_sequences_total"] - before["llamalab_cancelled_sequences_total"] == 64
    assert after["llamalab_event_loop_tasks"] <= before["llamalab_event_loop_tasks"]
    grown = after["process_resident_memory_bytes"] - before["process_resident_memory_bytes"]
    assert grown < 100e6, f"RSS grew by {grown / 1e6:.0f} MB"
    # a normal request afterwards is decoded alone (no leaked slot in its steps) and answers right
    assert chat(client).choices[0].message.content == expected["chat"]
    end = server.metrics()
    steps = end["llamalab_decode_batch_size_count"] - after["llamalab_decode_batch_size_count"]
    assert steps > 0
    assert end['llamalab_decode_batch_size_bucket{le="1.0"}'] - after['llamalab_decode_batch_size_bucket{le="1.0"}'] == steps


def test_a_queue_flood_gets_429_and_the_server_stays_up(server, client, expected):
    flood = SLOTS + QUEUE + 40
    results = asyncio.run(_open_streams(server.url, flood, max_tokens=200, hold=True))
    rejected = [body for status, body in results if status == 429]
    assert len(rejected) == flood - SLOTS - QUEUE and all(status in (200, 429) for status, _ in results)
    assert rejected[0]["error"]["type"] == "rate_limit_error" and "busy" in rejected[0]["error"]["message"]
    _wait_idle(server)
    assert chat(client).choices[0].message.content == expected["chat"]
    assert "Traceback" not in server.log()


@pytest.fixture(scope="module")
def keyed(smollm2_gguf, tmp_path_factory):
    s = ServerProcess(smollm2_gguf, "--api-key", "s3cret", "--max-batch", "2", "--context", "256", "--no-ui",
                      log=tmp_path_factory.mktemp("serve-key") / "server.log")
    yield s
    s.stop()


def test_api_key_and_the_quantized_default(keyed, expected):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
        r = httpx.post(f"{keyed.url}/v1/chat/completions", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="wrong", max_retries=0).models.list()
    good = openai.OpenAI(base_url=f"{keyed.url}/v1", api_key="s3cret", max_retries=0, timeout=300)
    answer = chat(good, model="SmolLM2-135M-Instruct.Q4_1")  # the default name: the file's
    assert answer.choices[0].message.content == expected["quantized"]
    assert httpx.get(f"{keyed.url}/health").status_code == 200  # probes need no key
    assert httpx.get(f"{keyed.url}/").status_code == 404  # --no-ui
    assert "--api-key is readable by every user" in keyed.log()  # a key on the command line is in /proc/PID/cmdline


def test_sigterm_drains_the_streams_in_flight(keyed):
    """SIGTERM while a stream is in flight: the stream still ends normally, then the process exits 0."""
    import threading

    got, first = [], threading.Event()

    def read():
        body = {"prompt": RAW, "max_tokens": 24, "temperature": 0, "stream": True, "ignore": "extra fields"}
        headers = {"Authorization": "Bearer s3cret"}
        with httpx.stream("POST", f"{keyed.url}/v1/completions", json=body, headers=headers, timeout=300) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    got.append(line[6:])
                    first.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first.wait(300)
    code = keyed.stop(timeout=300)
    reader.join()
    assert code == 0, keyed.log()
    assert got[-1] == "[DONE]"
    chunks = [json.loads(g) for g in got[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length" and len(chunks) == 24
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{keyed.url}/health")
