"""`llamalab serve` against hostile clients, as a real process on SmolLM2 (float32, so batched greedy answers equal
lone ones token for token): hostile request fields, a sequence failing inside the shared decode batch, slowloris
connections, trickled bodies, a foreign Host (DNS rebinding) and a chat template that loops or grows.

Each hostile request gets its 4xx while other clients' greedy streams run, and those streams come out exactly
as the same requests alone; afterwards nothing is left running or waiting and the server's RSS is within 10%.
The sequence failure is injected from outside the package (tests/faults.py: sampling raises for one seed).
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from llamalab.serve.process import ServerProcess

KEY = "hostile-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HEADER_TIMEOUT, BODY_TIMEOUT = 2, 2
FAULT_SEED = 7770  # tests/faults.py: seed 7770 fails at its third token, 7771 while it is prefilled
PROMPTS = ["The capital of France is", "One, two, three, four,", "The largest planet in the solar system is"]
N = 24

# A checkpoint's own template, hostile on cue: nested loops that write nothing (the time bound) or ever more
# (the size bound); ChatML otherwise.
TEMPLATE = """{% if messages[0].content == 'spin' %}{% for i in range(100000) %}{% for j in range(100000) %}\
{% endfor %}{% endfor %}{% elif messages[0].content == 'grow' %}{% for i in range(100000) %}\
{% for j in range(100000) %}{{ messages[0].content }}{% endfor %}{% endfor %}{% else %}{% for m in messages %}\
<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}{% endif %}"""


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve-hostile")
    (tmp / "template.jinja").write_text(TEMPLATE)
    (tmp / "key").write_text(KEY + "\n")
    s = ServerProcess(smollm2_gguf, "--max-batch", "4", "--max-queue", "16", "--context", "256", "--dtype", "float32",
                      "--served-model-name", "smol", "--template", str(tmp / "template.jinja"), "--no-ui",
                      "--api-key-file", str(tmp / "key"), "--header-timeout", str(HEADER_TIMEOUT),
                      "--body-timeout", str(BODY_TIMEOUT), log=tmp / "server.log",
                      entry=(str(Path(__file__).parent.parent / "faults.py"),), env={"FAULT_SAMPLER_SEED": str(FAULT_SEED)})
    yield s
    assert s.stop() == 0, s.log()


def _post(server, path, body, headers=None):
    content = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, timeout=120,
                      headers={**AUTH, "content-type": "application/json", **(headers or {})})


def _wait_idle(server, timeout=120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        m = server.metrics()
        if m["llamalab_running_sequences"] == m["llamalab_queue_depth"] == m["llamalab_requests_in_progress"] == 0:
            health = httpx.get(f"{server.url}/health").json()
            assert (health["running"], health["waiting"]) == (0, 0), health
            return m
        assert time.monotonic() < deadline, m
        time.sleep(0.3)


async def _stream(client: httpx.AsyncClient, prompt: str, **extra) -> tuple[str, list[str], int]:
    """A streaming greedy completion: (its text, its error messages, its token chunks)."""
    body = {"prompt": prompt, "max_tokens": N, "temperature": 0, "stream": True, **extra}
    text, errors = [], []
    async with client.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    errors.append(chunk["error"]["message"])
                else:
                    text.append(chunk["choices"][0]["text"])
    return "".join(text), errors, len(text)


def _client(server) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers=AUTH, timeout=300, limits=httpx.Limits(max_connections=64))


@pytest.fixture(scope="module")
def alone(server):
    """Each prompt's greedy stream with nothing else on the server."""
    async def main():
        async with _client(server) as c:
            return [(await _stream(c, p))[0] for p in PROMPTS]
    return asyncio.run(main())


CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
HOSTILE = [  # (endpoint, body, status, what the message names)
    ("chat", {**CHAT, "seed": 2**64}, 400, "seed"),
    ("chat", {**CHAT, "seed": -2**63 - 1}, 400, "seed"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "seed": 1.18e21}', 400, "seed"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', 400, "temperature"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}', 400, "top_p"),
    ("chat", '{"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": -Infinity}}', 400, "logit_bias"),
    ("chat", '{"messages": [{"role": "user", "content": "\\ud800"}]}', 400, "JSON"),
    ("chat", b'{"messages": [{"role": "user", "content": "\xed\xa0\x80"}]}', 400, "JSON"),
    ("completions", '{"prompt": "\\udfff hi"}', 400, "JSON"),
    ("completions", {"prompt": "hi", "top_k": 10**30}, 400, "top_k"),
    ("completions", {"prompt": "hi", "max_tokens": 10**30}, 400, "max_tokens"),
    ("completions", {"prompt": "hi", "n": 10**20}, 400, "n"),
    ("completions", {"prompt": [[1, 2], [10**40]]}, 400, "token ids"),
    ("completions", {"prompt": "hi", "logprobs": 10**19}, 400, "logprobs"),
    ("completions", {"prompt": "hi", "repetition_penalty": 1e308}, 400, "repetition_penalty"),
    ("chat", {**CHAT, "top_logprobs": -1, "logprobs": True}, 400, "top_logprobs"),
    ("chat", "[" * 100_000 + "]" * 100_000, 400, "JSON"),
    ("chat", {"messages": [{"role": "user", "content": "spin"}]}, 400, "longer than"),
    ("chat", {"messages": [{"role": "user", "content": "grow"}]}, 400, "longer than"),
]


def test_hostile_requests_get_4xx_and_other_streams_go_on_unchanged(server, alone):
    """While three greedy streams decode, every hostile request gets its 4xx, and two requests whose sequence fails
    inside the shared batch (mid-stream, and while prefilled) fail alone; the three streams equal their lone runs."""
    before = _wait_idle(server)

    async def main():
        async with _client(server) as c:
            streams = [asyncio.create_task(_stream(c, p)) for p in PROMPTS]
            mid = asyncio.create_task(_stream(c, PROMPTS[0], temperature=1.0, seed=FAULT_SEED))
            await asyncio.sleep(0.5)  # the streams are decoding
            prefill = await c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 4, "temperature": 1.0,
                                                            "seed": FAULT_SEED + 1})
            answers = await asyncio.gather(*(asyncio.to_thread(
                _post, server, "/v1/" + ("chat/completions" if e == "chat" else e), b) for e, b, _, _ in HOSTILE))
            return await asyncio.gather(*streams), await mid, prefill, answers

    streams, mid, prefill, answers = asyncio.run(main())
    for (endpoint, body, status, names), r in zip(HOSTILE, answers):
        assert r.status_code == status, (str(body)[:80], r.text[:300])
        assert names in r.json()["error"]["message"], (str(body)[:80], r.text[:300])
    assert [text for text, _, _ in streams] == alone and not any(errors for _, errors, _ in streams)
    assert mid[2] == 2 and len(mid[1]) == 1 and "injected sampling fault" in mid[1][0]  # two tokens, then the error
    assert prefill.status_code == 500 and "injected sampling fault" in prefill.json()["error"]["message"]

    after = _wait_idle(server)
    rss = after["process_resident_memory_bytes"] / before["process_resident_memory_bytes"]
    assert rss < 1.10, f"RSS grew {rss:.2f}x"
    # the slots came back: a lone request afterwards answers as before, decoded alone
    assert asyncio.run(_one(server, PROMPTS[1])) == alone[1]
    assert "Traceback" not in server.log()


async def _one(server, prompt):
    async with _client(server) as c:
        return (await _stream(c, prompt))[0]


def test_the_template_bounds_hold_in_time_and_memory(server):
    before = _wait_idle(server)
    started = time.monotonic()
    r = _post(server, "/v1/chat/completions", {"messages": [{"role": "user", "content": "spin"}]})
    took = time.monotonic() - started
    assert r.status_code == 400 and "3 s" in r.json()["error"]["message"] and took < 20
    after = server.metrics()
    assert after["process_resident_memory_bytes"] < 1.10 * before["process_resident_memory_bytes"]


def test_slowloris_connections_are_closed_while_a_client_is_served(server, alone):
    """300 connections each send half a request head and stall: all are closed within the head deadline (plus the
    time to notice), and a normal client is answered meanwhile; the log says so in a few lines, not 300."""
    lines_before = server.log().count("closed a connection")
    port = int(server.url.rsplit(":", 1)[1])
    stalled = []
    try:
        for _ in range(300):  # bounded, loopback only
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            stalled.append(s)
        opened = time.monotonic()
        assert asyncio.run(_one(server, PROMPTS[2])) == alone[2]
        for s in stalled:
            s.settimeout(max(HEADER_TIMEOUT + 5 - (time.monotonic() - opened), 0.1))
            assert s.recv(1) == b""  # closed by the server (a timeout here raises instead)
        assert time.monotonic() - opened < HEADER_TIMEOUT + 5
    finally:
        for s in stalled:
            s.close()
    assert server.log().count("closed a connection") - lines_before <= 25


def test_a_trickled_body_gets_408(server):
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + 10) as s:
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro".encode())
        answer = b""
        while chunk := s.recv(4096):  # the answer, then the server closes the connection
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive within" in answer


def test_a_foreign_host_is_refused(server):
    """DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1 reaches nothing."""
    port = server.url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        r = httpx.get(f"{server.url}/health", headers={"Host": host})
        assert r.status_code == 421 and "--allowed-host" in r.json()["error"]["message"], (host, r.text)
        assert _post(server, "/v1/completions", {"prompt": "hi"}, headers={"Host": host}).status_code == 421
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", "LOCALHOST"):
        assert httpx.get(f"{server.url}/health", headers={"Host": host}).status_code == 200, host
