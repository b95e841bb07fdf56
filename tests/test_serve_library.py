"""`llamalab serve` without --model: every library model by name, loaded on demand, through the official `ollama`
client (create, chat, generate, ps, embed) and OpenAI's (embeddings); keep_alive and --max-loaded; a created
model's SYSTEM and PARAMETER as defaults; embeddings against transformers' LlamaModel."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import httpx
import ollama
import openai
import pytest
import torch

from cli_output import without_notices
from llamalab import models
from llamalab.cli import main
from llamalab.serve.pool import Budget
from llamalab.serve.process import ServerProcess

QUESTION = "What is the capital of France?"
GREEDY = {"temperature": 0, "num_predict": 6}
SYSTEM = "You are a pirate. Answer like a pirate."
MODELFILE = f'''# a model made of another
FROM smol
PARAMETER temperature 0
PARAMETER num_predict 6
SYSTEM """{SYSTEM}"""
'''


@pytest.fixture(scope="module")
def home(smollm2_gguf, tmp_path_factory):
    """The same checkpoint under two names (one blob), and a model made of it with a Modelfile."""
    root = tmp_path_factory.mktemp("llamalab-home")
    models.import_model(smollm2_gguf, "smol", root / "models")
    models.copy("smol", "smol2", root / "models")  # a second name: the server loads it as a model of its own
    models.create("pirate", MODELFILE, root=root / "models")
    return root


@pytest.fixture(scope="module")
def server(home, tmp_path_factory):
    s = ServerProcess(None, "--max-batch", "2", "--context", "256", "--max-loaded", "1", "--dtype", "float32",
                      env={"LLAMALAB_HOME": str(home)}, log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.url, timeout=300)


def loaded(client) -> list[str]:
    return [m.model for m in client.ps().models]


def test_create_from_a_modelfile_body_and_from_fields(client, server, home):
    body = {"model": "terse", "modelfile": "FROM smol\nPARAMETER num_predict 3\nPARAMETER stop \"Paris\"\nSYSTEM Be terse."}
    r = httpx.post(f"{server.url}/api/create", json=body, timeout=60)
    statuses = [json.loads(line)["status"] for line in r.text.splitlines()]
    assert r.status_code == 200 and statuses[0] == "reading model metadata" and statuses[-1] == "success"
    made = client.create(model="brief", from_="smol", system="Be brief.", parameters={"num_predict": 4, "stop": ["."]})
    assert made.status == "success"
    shown = client.show("terse")
    assert "num_predict 3" in shown.parameters and 'stop "Paris"' in shown.parameters
    assert shown.modelfile.startswith("FROM smol:latest\n") and "Be terse." in shown.modelfile
    names = [e["name"] for e in models.listing(home / "models")]
    assert {"terse:latest", "brief:latest", "pirate:latest"} <= set(names)
    assert len(list((home / "models" / "blobs").iterdir())) == 1  # every name holds the same bytes, stored once
    for modelfile, says in [("FROM smol\nFORM smol", "Modelfile line 2: unknown instruction FORM; expected FROM"),
                            ("# nothing\nFROM ./nowhere.gguf", "Modelfile line 2: FROM ./nowhere.gguf: no such file"),
                            ("FROM smol\nTEMPLATE {{ .Prompt }}", "Modelfile line 2: TEMPLATE is a Go template")]:
        r = httpx.post(f"{server.url}/api/create", json={"model": "bad", "modelfile": modelfile}, timeout=60)
        assert r.status_code == 400 and r.json()["error"].startswith(says), r.text
    with pytest.raises(ollama.ResponseError) as e:
        client.create(model="bad", from_="smol", parameters={"top_k": "many"})
    assert e.value.status_code == 400 and "parameters.top_k: must be an integer" in e.value.error
    assert "bad:latest" not in [m.model for m in client.list().models]


def test_a_created_model_answers_with_its_system_prompt_and_parameters(client):
    q = [{"role": "user", "content": QUESTION}]
    french = [{"role": "system", "content": "Answer in French."}]
    mine = client.chat(model="pirate", messages=q, stream=False)  # SYSTEM, temperature 0, num_predict 6
    shorter = client.chat(model="pirate", messages=q, options={"num_predict": 2}, stream=False)  # the request wins
    own_system = client.chat(model="pirate", messages=french + q, stream=False)
    generated = client.generate(model="pirate", prompt=QUESTION)
    same = client.chat(model="smol", messages=[{"role": "system", "content": SYSTEM}] + q, options=GREEDY, stream=False)
    same_french = client.chat(model="smol", messages=french + q, options=GREEDY, stream=False)
    assert mine.message.content == same.message.content and mine.eval_count == same.eval_count == 6
    assert shorter.eval_count == 2 and same.message.content.startswith(shorter.message.content)
    assert own_system.message.content == same_french.message.content != mine.message.content
    assert generated.response == mine.message.content


def test_two_names_alternate_and_max_loaded_one_evicts(client, server):
    answers = {}
    for name in ["smol", "smol2", "smol"]:
        with ThreadPoolExecutor(2) as pool:  # two requests at once for a model not loaded: one load, both answered
            both = list(pool.map(lambda _: client.generate(model=name, prompt=QUESTION, options=GREEDY), range(2)))
        assert both[0].response and both[0].response == both[1].response == answers.setdefault(name, both[0].response)
        assert loaded(client) == [f"{name}:latest"]  # --max-loaded 1: the other one made room
    assert answers["smol"] == answers["smol2"]  # the same bytes under two names
    assert len(re.findall(r"\bloaded smol2:latest \(", server.log())) == 1  # "unloaded ..." has no word boundary
    assert server.log().count("unloaded smol2:latest (to make room for smol:latest)") == 1


def test_embeddings_are_transformers_mean_pooled_last_hidden_state(client, server, hf_smollm2):
    texts = ["The capital of France is Paris.", "Llamas live in the Andes."]
    ours = client.embed(model="smol", input=texts)
    hf, tok = hf_smollm2
    for text, vector in zip(texts, ours.embeddings):
        with torch.no_grad():
            h = hf.model(torch.tensor([tok(text)["input_ids"]])).last_hidden_state[0].mean(dim=0)
        reference = torch.nn.functional.normalize(h, dim=0)
        assert torch.allclose(torch.tensor(vector), reference, atol=1e-4, rtol=0)
    oa = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
    answer = oa.embeddings.create(model="smol", input=texts)  # the client asks for base64 by default
    assert [d.index for d in answer.data] == [0, 1] and answer.usage.prompt_tokens == ours.prompt_eval_count
    for d, vector in zip(answer.data, ours.embeddings):
        assert torch.allclose(torch.tensor(d.embedding), torch.tensor(vector), atol=1e-6)
    ids = tok(texts[0])["input_ids"]
    by_ids = oa.embeddings.create(model="smol:latest", input=ids, encoding_format="float")
    assert torch.allclose(torch.tensor(by_ids.data[0].embedding), torch.tensor(ours.embeddings[0]), atol=1e-6)
    assert "smol2:latest" in [m.id for m in oa.models.list().data] and loaded(client) == ["smol:latest"]


@pytest.mark.parametrize("path, body, status, says", [
    ("/api/chat", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "model 'nope' not found; the library has: "),
    ("/api/generate", {"model": "smol", "prompt": "hi", "keep_alive": "soon"}, 400, "keep_alive"),
    ("/api/embed", {"model": "smol", "input": "x", "keep_alive": "5 minutes"}, 400, "keep_alive"),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "the library has: "),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}, 400, "model: a model name is required"),
    ("/v1/embeddings", {"model": "smol", "input": "x", "dimensions": 3}, 400, "576 dimensions"),
])
def test_bad_input(server, path, body, status, says):
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    error = r.json()["error"]
    message = error if path.startswith("/api/") else error["message"]
    assert r.status_code == status and says in message, r.text
    if status == 404:
        assert "pirate:latest, smol2:latest, smol:latest" in message


def test_ps_and_keep_alive(client):
    client.generate(model="smol", prompt="Hi", options={"num_predict": 1}, keep_alive="2s")
    (m,) = client.ps().models
    assert m.model == "smol:latest" and m.size > 100_000_000 and m.context_length == 256
    left = (m.expires_at - datetime.now(timezone.utc)).total_seconds()
    assert 0 < left <= 2.5
    deadline = time.monotonic() + 30
    while loaded(client) and time.monotonic() < deadline:  # idle past its keep_alive: unloaded
        time.sleep(0.2)
    assert loaded(client) == []
    client.generate(model="smol", keep_alive=-1)  # no prompt: load it, for good
    (m,) = client.ps().models
    assert (m.expires_at - datetime.now(timezone.utc)).days > 365
    gone = client.generate(model="smol", keep_alive=0)  # ollama's "unload now"
    assert gone.done_reason == "unload" and loaded(client) == []


def test_max_loaded_is_a_count_or_a_size(capsys):
    assert Budget.parse("2") == Budget(count=2) and Budget.parse("1.5GB") == Budget(bytes=1_500_000_000)
    assert Budget.parse("800MiB") == Budget(bytes=800 << 20)
    for bad in ("lots", "0", "1.5", "2 parsecs", "-1"):
        assert main(["serve", "--max-loaded", bad, "--port", "0"]) == 2
        err = without_notices(capsys.readouterr().err)
        assert err == f"llamalab serve: error: --max-loaded {bad!r}: give a count of models (e.g. 2) or a size " \
                      "(e.g. 1.5GB, 800MiB), more than 0"
    assert main(["serve", "--adapter", "x", "--port", "0"]) == 2
    assert "--adapter needs --model" in capsys.readouterr().err
