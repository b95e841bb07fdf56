"""`llamalab serve` on a LLaVA checkpoint (the tiny random one transformers writes for the vision tests), driven
by the official openai and ollama clients: an image sent as an OpenAI `image_url` data: URL, or in ollama's
`images`, gets the answer `llamalab generate --image --chat` gives for the same picture and question, which
here is checked against transformers' `LlavaForConditionalGeneration.generate`; image and text requests
decode together; bad images, remote URLs and too many images are one 400 each; the chat page's Image button
(headless Chromium, as test_serve_page drives the text flow) sends one."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import ollama
import openai
import pytest
import torch
from PIL import Image

from llamalab.cli import main as cli_main
from llamalab.images import preprocess
from llamalab.runtime import load_runnable
from llamalab.runtime.vision import image_prompt
from llamalab.serve.process import ServerProcess
from test_serve_page import browser, by_id, messages, stored, wait  # noqa: F401 (browser: the page's fixture)
from tiny_llava import write_picture, write_tiny_llava

N = 8
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def material(tmp_path_factory, smollm2_gguf):
    out = tmp_path_factory.mktemp("llava")
    ref = write_tiny_llava(out, smollm2_gguf)
    pictures = [write_picture(out.parent / f"picture{i}.png", seed=i) for i in range(2)]
    return ref, out, pictures


@pytest.fixture(scope="module")
def server(material, tmp_path_factory):
    s = ServerProcess(material[1], "--max-batch", "4", "--context", "256", "--served-model-name", "llava",
                      log=tmp_path_factory.mktemp("serve") / "server.log")
    yield s
    assert s.stop() == 0, s.log()


def cli_answer(model, *args) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["generate", "--model", str(model), "--chat", "--max-new-tokens", str(N), "--no-stream",
                         *args]) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def expected(material):
    """`generate --image --chat`'s greedy answer for each picture (the first checked against transformers on
    the token ids and pixels we build), and for the question alone."""
    ref, out, pictures = material
    rt = load_runnable(out, device="cpu")
    ids, _ = image_prompt(rt, QUESTION, [pictures[0]], chat=True)
    pixels = torch.from_numpy(preprocess(Image.open(pictures[0]), rt.preprocess))[None]
    with torch.no_grad():
        tokens = ref.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=N, do_sample=False,
                              pad_token_id=0)[0, len(ids):].tolist()
    answers = [cli_answer(out, "--prompt", QUESTION, "--image", str(p)) for p in pictures]
    assert answers[0] == rt.tokenizer.decode([t for t in tokens if t not in rt.tokenizer.stop_ids])
    assert answers[0] and answers[0] != answers[1]
    return {"pictures": answers, "text": cli_answer(out, "--prompt", QUESTION)}


def data_url(path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def image_message(url: str, text: str = QUESTION) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": text},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def ask(client, messages, **kw):
    return client.chat.completions.create(model="llava", messages=messages, temperature=0, max_tokens=N, **kw)


def test_openai_image_url_answers_as_generate_image(client, material, expected):
    picture = material[2][0]
    answer = ask(client, image_message(data_url(picture)))
    assert answer.choices[0].message.content == expected["pictures"][0]
    assert answer.usage.prompt_tokens > 4  # the image's 4 tokens and the question's
    chunks = ask(client, image_message(data_url(picture)), stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected["pictures"][0]


def test_ollama_images_answer_as_generate_image(server, material, expected):
    picture = material[2][0]
    o = ollama.Client(host=server.url, timeout=120)
    greedy = {"temperature": 0, "num_predict": N}
    chat = o.chat(model="llava", messages=[{"role": "user", "content": QUESTION, "images": [picture]}],
                  options=greedy, stream=False)
    assert chat.message.content == expected["pictures"][0]
    assert o.generate(model="llava", prompt=QUESTION, images=[picture], options=greedy).response == \
        expected["pictures"][0]
    assert "vision" in o.show("llava").capabilities


def test_image_and_text_requests_decode_together(client, material, expected):
    pictures = material[2]
    requests = [image_message(data_url(pictures[0])), [{"role": "user", "content": QUESTION}],
                image_message(data_url(pictures[1]))]
    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda m: ask(client, m).choices[0].message.content, requests))
    assert answers == [expected["pictures"][0], expected["text"], expected["pictures"][1]]


COLOR = {"type": "object", "properties": {"color": {"enum": ["red", "green", "blue"]},
                                          "count": {"type": "integer", "minimum": 0, "maximum": 9}},
         "required": ["color", "count"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "describe", "description": "Describe the picture",
                                         "parameters": COLOR}}


def test_structured_outputs_and_tools_constrain_image_answers(client, server, material):
    """response_format, ollama's format and a required tool call constrain an answer about an image as they do a
    text answer (the same prompt tokens as the image alone: the image is in it)."""
    picture = material[2][0]
    plain = ask(client, image_message(data_url(picture)))
    fmt = {"type": "json_schema", "json_schema": {"name": "color", "schema": COLOR, "strict": True}}
    r = client.chat.completions.create(model="llava", messages=image_message(data_url(picture)), temperature=0,
                                       max_tokens=60, response_format=fmt)
    jsonschema.validate(json.loads(r.choices[0].message.content), COLOR)
    assert r.choices[0].finish_reason == "stop" and r.usage.prompt_tokens == plain.usage.prompt_tokens
    called = client.chat.completions.create(model="llava", messages=image_message(data_url(picture)), tools=[TOOL],
                                            tool_choice="required", temperature=0, max_tokens=50)
    (call,) = called.choices[0].message.tool_calls
    assert call.function.name == "describe" and called.choices[0].finish_reason == "tool_calls"
    jsonschema.validate(json.loads(call.function.arguments), COLOR)
    o = ollama.Client(host=server.url, timeout=120)
    chat = o.chat(model="llava", messages=[{"role": "user", "content": QUESTION, "images": [picture]}], format=COLOR,
                  options={"temperature": 0, "num_predict": 60}, stream=False)
    jsonschema.validate(json.loads(chat.message.content), COLOR)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height pixels, with almost no data: a decompression bomb's header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def refused(server, path, body, *expect):
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == 400, r.text
    message = r.json()["error"] if path.startswith("/api/") else r.json()["error"]["message"]
    assert "\n" not in message and all(e in message for e in expect), message


def test_bad_images_are_one_400_each(server, material):
    picture = material[2][0].read_bytes()
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    chat = lambda url: {"model": "llava", "messages": image_message(url), "max_tokens": 2}  # noqa: E731
    refused(server, "/v1/chat/completions", chat("data:image/png;base64,@@not base64@@"), "not valid base64")
    refused(server, "/v1/chat/completions", chat("data:image/png;base64," + b64(png_claiming(100_000, 100_000))),
            "more pixels than the limit")
    refused(server, "/v1/chat/completions", chat("data:image/png;base64," + b64(png_claiming(9_000, 9_000))),
            "over the limit")
    refused(server, "/v1/chat/completions", chat("https://example.com/cat.png"), "only data: URLs",
            "fetches nothing")
    refused(server, "/v1/chat/completions", chat("data:image/png;base64," + b64(picture[:len(picture) // 2])),
            "truncated")
    refused(server, "/v1/chat/completions", chat("data:text/plain;base64," + b64(b"hello")), "not an image")
    many = [{"type": "image_url", "image_url": {"url": data_url(material[2][0])}}] * 64  # 64 × 4 tokens ≥ 256
    refused(server, "/v1/chat/completions", {"model": "llava", "messages": [{"role": "user", "content": many}]},
            "64 image(s) take 256 tokens", "context is 256")
    refused(server, "/api/chat", {"model": "llava", "messages": [{"role": "user", "content": "Hi",
                                                                  "images": ["@@"]}]}, "not valid base64")
    refused(server, "/api/generate", {"model": "llava", "prompt": "Hi", "raw": True, "images": [b64(picture)]},
            "raw is not supported with images")


def test_the_chat_page_sends_an_attached_image(browser, server, material, expected):
    """The page's Image button reads the file into a data: URL, shows it in the message and sends it as an
    `image_url` part: the answer is `generate --image --chat`'s."""
    browser.get(server.url + "/")
    wait(browser, lambda: by_id(browser, "model-name").text == "llava")
    for field, value in (("temperature", 0), ("max-tokens", N)):
        by_id(browser, field).clear()
        by_id(browser, field).send_keys(str(value))
    by_id(browser, "image-file").send_keys(str(material[2][0]))
    wait(browser, lambda: by_id(browser, "attached").text.startswith("1 image"))
    by_id(browser, "input").send_keys(QUESTION + "\n")
    wait(browser, lambda: len(messages(browser, streaming=True)) == 2 and not messages(browser, streaming=True)[1][2])
    conversation = stored(browser)["messages"]
    assert conversation[0]["images"] == [data_url(material[2][0])]
    assert conversation[1]["content"] == expected["pictures"][0]
    assert browser.execute_script("return document.querySelectorAll('#messages .msg.user img.thumb').length") == 1
    assert not by_id(browser, "attached").is_displayed()
