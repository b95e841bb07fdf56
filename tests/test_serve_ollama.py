"""ollama's native API (/api) against a real `llamalab serve` of a library model, through the official
`ollama` Python client: list, show, chat (streaming and not), generate, ps, copy, delete; the greedy answer
equals /v1's for the same conversation; bad input is a 4xx with ollama's error body."""

from __future__ import annotations

import base64
import json

import httpx
import ollama
import openai
import pytest
from PIL import Image

from llamalab import models
from llamalab.serve.process import ServerProcess

N = 12
QUESTION = "What is the capital of France?"
GREEDY = {"temperature": 0, "num_predict": N}


@pytest.fixture(scope="module")
def home(smollm2_gguf, tmp_path_factory):
    root = tmp_path_factory.mktemp("llamalab-home")
    models.import_model(smollm2_gguf, "smol", root / "models")
    return root


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    s = ServerProcess("smol", "--max-batch", "4", "--context", "512", env={"LLAMALAB_HOME": str(home)},
                      log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=300)


def test_list_show_ps_version(client, server):
    listed = client.list().models
    assert [m.model for m in listed] == ["smol:latest"]
    assert listed[0].details.quantization_level == "Q4_1" and listed[0].details.format == "gguf"
    assert listed[0].size > 90_000_000 and listed[0].digest
    shown = client.show("smol")
    assert "<|im_start|>" in shown.template and shown.license == "apache-2.0"
    assert shown.modelinfo["llama.n_layers"] == 30
    running = client.ps().models
    assert [m.model for m in running] == ["smol:latest"] and running[0].expires_at is not None
    assert httpx.get(f"{server.url}/api/version").json()["version"]


def test_chat_greedy_equals_v1_and_streams_the_same(client, server):
    messages = [{"role": "user", "content": QUESTION}]
    whole = client.chat(model="smol", messages=messages, stream=False, options=GREEDY)
    v1 = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0).chat.completions.create(
        model="smol", messages=messages, temperature=0, max_tokens=N)
    assert whole.message.content == v1.choices[0].message.content and whole.message.content
    assert whole.done and whole.done_reason == v1.choices[0].finish_reason
    assert whole.eval_count == v1.usage.completion_tokens
    assert whole.prompt_eval_count == v1.usage.prompt_tokens
    assert whole.total_duration >= whole.eval_duration > 0
    parts = list(client.chat(model="smol:latest", messages=messages, options=GREEDY, stream=True))
    assert len(parts) > 2 and parts[-1].done and not any(p.done for p in parts[:-1])
    assert "".join(p.message.content for p in parts) == whole.message.content
    assert parts[-1].eval_count == whole.eval_count
    r = httpx.post(f"{server.url}/api/chat", json={"model": "smol", "messages": messages, "options": GREEDY})
    lines = [json.loads(line) for line in r.text.splitlines()]  # the API streams NDJSON unless told not to
    assert r.headers["content-type"] == "application/x-ndjson" and len(lines) == len(parts)
    assert "".join(x["message"]["content"] for x in lines) == whole.message.content


def test_generate_uses_the_chat_template_unless_raw(client):
    chat = client.chat(model="smol", messages=[{"role": "user", "content": QUESTION}], options=GREEDY, stream=False)
    gen = client.generate(model="smol", prompt=QUESTION, options=GREEDY)
    assert gen.response == chat.message.content and gen.done
    raw = client.generate(model="smol", prompt="The capital of France is", raw=True,
                          options={**GREEDY, "stop": ["."]})
    assert "Paris" in raw.response and "." not in raw.response and raw.done_reason == "stop"
    parts = list(client.generate(model="smol", prompt=QUESTION, options=GREEDY, stream=True))
    assert "".join(p.response for p in parts) == gen.response
    loaded = client.generate(model="smol")  # no prompt: ollama's "load the model"
    assert loaded.done and loaded.done_reason == "load"


def test_copy_and_delete_act_on_the_library(client, home):
    client.copy("smol", "smol-copy:v2")
    assert [e["name"] for e in models.listing(home / "models")] == ["smol-copy:v2", "smol:latest"]
    client.delete("smol-copy:v2")
    assert [e["name"] for e in models.listing(home / "models")] == ["smol:latest"]
    with pytest.raises(ollama.ResponseError) as e:
        client.delete("smol-copy:v2")
    assert e.value.status_code == 404 and "it has: smol:latest" in e.value.error


@pytest.mark.parametrize("body, status, says", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "serves 'smol:latest'"),
    ({"model": "smol", "messages": [], "keep_alive": "soon"}, 400, "keep_alive"),
    ({"model": "smol", "messages": [], "options": {"temperature": "hot"}}, 400, "options.temperature"),
    ({"model": "smol", "messages": [], "options": {"top_p": 3}}, 400, "options.top_p"),
    ({"model": "smol", "messages": [{"role": "user", "content": "x"}], "options": {"num_ctx": 10 ** 6}}, 400,
     "num_ctx"),
    ({"model": "smol", "messages": [{"role": "user", "content": "x"}], "format": "xml"}, 400, "format"),
    ({"model": "smol", "messages": [{"role": "user", "content": "x"}], "format": {"type": 3}}, 400, "not a valid JSON schema"),
])
def test_bad_input_is_a_400_or_404_with_one_message(server, body, status, says):
    r = httpx.post(f"{server.url}/api/chat", json=body, timeout=60)
    assert r.status_code == status and says in r.json()["error"], r.text


def test_pull_says_to_import(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama2")
    assert e.value.status_code == 400 and "llamalab models import" in e.value.error


def test_an_image_for_a_text_model_is_a_400(client, server, tmp_path):
    png = tmp_path / "dot.png"
    Image.new("RGB", (4, 4), "red").save(png)
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="smol", messages=[{"role": "user", "content": "What is it?", "images": [png]}])
    assert e.value.status_code == 400 and "has no vision tower" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="smol", prompt="What is it?", images=[png])
    assert e.value.status_code == 400 and "has no vision tower" in e.value.error
    v1 = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    url = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()
    with pytest.raises(openai.BadRequestError, match="has no vision tower"):
        v1.chat.completions.create(model="smol", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What is it?"}, {"type": "image_url", "image_url": {"url": url}}]}])
