"""Structured outputs and tool calls against a real `llamalab serve` of SmolLM2, through OpenAI's and ollama's
official clients; every JSON answer is checked with `jsonschema` (an independent validator), never with the
grammar that produced it."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import ollama
import openai
import pytest

from llamalab.serve.process import ServerProcess

SCHEMAS = [
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                      "population": {"type": "integer", "minimum": 0, "maximum": 10 ** 8}},
     "required": ["city", "population"], "additionalProperties": False},
    {"type": "object", "properties": {"title": {"type": "string", "maxLength": 40},
                                      "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
                                      "genres": {"type": "array", "maxItems": 3,
                                                 "items": {"enum": ["drama", "comedy", "action", "horror"]}}},
     "required": ["title", "year", "genres"], "additionalProperties": False},
    {"type": "object", "properties": {"answer": {"type": "boolean"}, "confidence": {"enum": ["low", "high"]},
                                      "reason": {"type": ["string", "null"], "maxLength": 40}},
     "required": ["answer", "confidence"], "additionalProperties": False},
    {"type": "array", "minItems": 1, "maxItems": 4,
     "items": {"type": "object", "properties": {"step": {"type": "integer", "minimum": 1, "maximum": 9},
                                                "text": {"type": "string", "maxLength": 24}},
               "required": ["step", "text"], "additionalProperties": False}},
]
PROMPTS = ["Tell me about Paris.", "Name a film you like.", "Is the sky blue?", "How do I boil an egg?",
           "Describe Tokyo.", "Recommend a movie from the nineties.", "Do fish sleep?", "How to plant a tree?",
           "What is Lagos like?", "A comedy for tonight?", "Is water wet?", "Steps to make tea.",
           "Facts about Lima.", "Your favourite horror film?", "Can birds see colours?", "How to tie a shoe?",
           "Give me a city in Canada.", "A film about space.", "Is coffee healthy?", "How to wash a car?",
           "Tell me about Nairobi.", "A cartoon for children?", "Is the moon made of rock?", "How to bake bread?",
           "Describe Reykjavik.", "Which war film is best?", "Do cats dream?", "Steps to change a tyre.",
           "Where is Montevideo?", "A scary film for Halloween?"]
ANSWERS = 50  # (prompt, schema, seed) triples, all different: 30 prompts against 4 schemas
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                    "unit": {"enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server(smollm2_gguf, tmp_path_factory):
    s = ServerProcess(smollm2_gguf, "--max-batch", "4", "--context", "1024", "--served-model-name", "smol",
                      log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    assert s.stop() == 0, s.log()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=300)


def _schema_answer(client, i: int):
    schema = SCHEMAS[i % len(SCHEMAS)]
    r = client.chat.completions.create(
        model="smol", messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], temperature=1, seed=i, max_tokens=300,
        response_format={"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}})
    return schema, r.choices[0]


def test_json_schema_answers_always_validate(client):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda i: _schema_answer(client, i), range(ANSWERS)))
    for schema, choice in answers:
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema)


def test_concurrent_requests_with_different_schemas_and_none(client):
    def ask(fmt):
        extra = {"response_format": fmt} if fmt else {}
        return client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say something."}],
                                              temperature=0, max_tokens=120, **extra).choices[0].message.content
    formats = [{"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMAS[0]}},
               {"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMAS[2]}}, None,
               {"type": "json_object"}]
    with ThreadPoolExecutor(4) as pool:
        a, c, free, obj = pool.map(ask, formats)
    jsonschema.validate(json.loads(a), SCHEMAS[0])
    jsonschema.validate(json.loads(c), SCHEMAS[2])
    assert isinstance(json.loads(obj), dict)
    alone = client.chat.completions.create(model="smol", messages=[{"role": "user", "content": "Say something."}],
                                           temperature=0, max_tokens=120).choices[0].message.content
    assert free == alone and not free.startswith("{")


def test_completions_take_response_format(client):
    r = client.completions.create(model="smol", prompt="A cat, as JSON:", max_tokens=200, temperature=1, seed=3,
                                  extra_body={"response_format": {"type": "json_schema", "json_schema": {
                                      "name": "a", "schema": SCHEMAS[2]}}})
    jsonschema.validate(json.loads(r.choices[0].text), SCHEMAS[2])


def test_ollama_format_schema_and_json(server):
    c = ollama.Client(host=server.url, timeout=300)
    r = c.chat(model="smol", messages=[{"role": "user", "content": "Name a film."}], format=SCHEMAS[1],
               options={"temperature": 1, "seed": 5, "num_predict": 300})
    jsonschema.validate(json.loads(r.message.content), SCHEMAS[1])
    streamed = "".join(part.message.content for part in c.chat(
        model="smol", messages=[{"role": "user", "content": "Name a film."}], format=SCHEMAS[1], stream=True,
        options={"temperature": 0, "num_predict": 300}))
    jsonschema.validate(json.loads(streamed), SCHEMAS[1])
    g = c.generate(model="smol", prompt="Describe a dog.", format="json", options={"temperature": 0, "num_predict": 200})
    assert isinstance(json.loads(g.response), dict) and g.done_reason == "stop"


def test_tool_call_round_trip(client):
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    r = client.chat.completions.create(model="smol", messages=messages, tools=[WEATHER], tool_choice="required",
                                       temperature=0, max_tokens=120)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 18, "sky": "cloudy"})}]
    final = client.chat.completions.create(model="smol", messages=messages, tools=[WEATHER], temperature=0,
                                           max_tokens=60).choices[0]
    assert final.message.content and not final.message.tool_calls and final.finish_reason in ("stop", "length")

    stream = client.chat.completions.create(model="smol", messages=messages[:1], tools=[WEATHER], stream=True,
                                            tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                            temperature=0, max_tokens=120)
    deltas = [c.choices[0] for c in stream if c.choices]
    calls = [t for d in deltas for t in (d.delta.tool_calls or [])]
    assert deltas[-1].finish_reason == "tool_calls" and [t.index for t in calls] == [0]
    assert calls[0].function.name == "get_weather" and calls[0].function.arguments == call.function.arguments


def test_ollama_tools(server):
    c = ollama.Client(host=server.url, timeout=300)
    tool = {**WEATHER, "function": {**WEATHER["function"]}}
    r = c.chat(model="smol", messages=[{"role": "user", "content": "Weather in Oslo?"},
                                       {"role": "assistant", "content": "", "tool_calls": [
                                           {"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]},
                                       {"role": "tool", "content": "12 degrees, rain", "tool_name": "get_weather"}],
               tools=[tool], options={"temperature": 0, "num_predict": 40})
    assert r.message.content and r.done


BAD = [
    ({"response_format": {"type": "xml"}}, "response_format.type: 'xml' is not supported"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
     "not a valid JSON schema"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "string", "pattern": "(?<=a)b"}}}}, "cannot be compiled into a grammar"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "a JSON schema is required"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "not among the tools"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
     "tools[0].function.parameters is not a valid JSON schema"),
    ({"tool_choice": "required"}, "no tools are given"),
    ({"tools": [WEATHER], "tool_choice": "required", "response_format": {"type": "json_object"}}, "drop one"),
]


@pytest.mark.parametrize("extra, says", BAD)
def test_bad_input_is_one_400(server, extra, says):
    r = httpx.post(f"{server.url}/v1/chat/completions", timeout=60,
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra})
    assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    assert "\n" not in r.json()["error"]["message"]
