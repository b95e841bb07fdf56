"""`llamalab generate --image` on a LLaVA checkpoint: through `load_runnable` and the one decoding engine (the
prompt prefilled from its input rows), the same greedy tokens as transformers' `LlavaForConditionalGeneration`
on the same pixels; bad images and an image for a text-only model: one line."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from PIL import Image

from llamalab.cli import main
from llamalab.generate import Engine, decode_text, stream
from llamalab.images import preprocess
from llamalab.runtime import load_runnable
from llamalab.runtime.vision import image_prompt
from cli_output import without_notices
from tiny_llava import IMAGE_TOKEN, write_picture, write_tiny_llava


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smollm2_gguf):
    """A tiny random LLaVA (CLIP tower) written by transformers, with SmolLM2's tokenizer."""
    out = tmp_path_factory.mktemp("llava")
    ref = write_tiny_llava(out, smollm2_gguf)
    return ref, out, write_picture(tmp_path_factory.mktemp("img") / "cat.png")


def reference_tokens(checkpoint):
    """Our runnable, and transformers' greedy tokens for the prompt and image as we build them."""
    ref, out, image = checkpoint
    rt = load_runnable(out, device="cpu")
    ids, rows = image_prompt(rt, "What is in the picture?", [image])
    assert ids.count(IMAGE_TOKEN) == rt.vision.args.image_tokens == 4
    pixels = torch.from_numpy(preprocess(Image.open(image), rt.preprocess))[None]
    with torch.no_grad():
        expected = ref.generate(input_ids=torch.tensor([ids]), pixel_values=pixels, max_new_tokens=8,
                                do_sample=False, pad_token_id=0)[0, len(ids):].tolist()
    return rt, ids, rows, expected


def test_engine_greedy_equals_transformers(checkpoint):
    rt, ids, rows, expected = reference_tokens(checkpoint)
    assert list(stream(rt.model, ids, max_new_tokens=8, embeddings=rows)) == expected


def test_cli_generate_with_image(checkpoint, capsys):
    ref, out, image = checkpoint
    rt, _, _, expected = reference_tokens(checkpoint)
    assert main(["generate", "--model", str(out), "--image", str(image), "--prompt", "What is in the picture?",
                 "--max-new-tokens", "8", "--ignore-eos"]) == 0
    assert capsys.readouterr().out == decode_text(expected, rt.tokenizer)


def fails(capsys, argv, *expect):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and all(e in err for e in expect), err


def test_bad_image_input_is_one_line(checkpoint, tmp_path, capsys, smollm2_gguf):
    _, out, image = checkpoint
    (tmp_path / "notes.png").write_text("not an image")
    base = ["generate", "--model", str(out), "--prompt", "Hi", "--max-new-tokens", "2"]
    fails(capsys, base + ["--image", str(tmp_path / "notes.png")], "notes.png", "not an image")
    fails(capsys, ["generate", "--model", str(tmp_path / "no-such-model"), "--prompt", "Hi",
                   "--image", str(tmp_path / "notes.png")], "notes.png", "not an image")  # before the load
    fails(capsys, base[:4] + ["<image> and <image>", "--image", str(image)], "2 <image> marks but 1 images")
    fails(capsys, ["generate", "--model", str(smollm2_gguf), "--prompt", "Hi", "--image", str(image)], "text-only")
    fails(capsys, base + ["--max-new-tokens", "300", "--image", str(image)], "exceeds the model's context")


def test_engine_batches_image_and_text_prompts_together(checkpoint):
    rt, ids, rows, expected = reference_tokens(checkpoint)
    text = rt.encode("A plain question")
    alone = list(stream(rt.model, text, max_new_tokens=8))
    engine = Engine(rt.model, max_batch=3, max_len=64)
    first = engine.add(text, max_new_tokens=8)
    engine.step()  # the image prompt joins a batch already decoding
    second = engine.add(ids, max_new_tokens=8, embeddings=rows)
    while engine.step():
        pass
    assert first.tokens == alone and second.tokens == expected


def chat(monkeypatch, capsys, model, lines: str, *args) -> tuple[str, list[str]]:
    """`llamalab chat` with `lines` on its standard input (a pipe, not a terminal): its stdout and error lines."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", "--model", str(model), *args]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.out, without_notices(captured.err).splitlines()


def test_chat_image_command_through_a_pipe(checkpoint, tmp_path, capsys, monkeypatch):
    """`/image PATH` attaches the picture to the next message: the answer is `generate --image --chat`'s; a
    missing file and a non-image are one error line each and the chat goes on (the next turn still sees the
    first picture, whose features stay spliced into the cached conversation)."""
    _, out, image = checkpoint
    (tmp_path / "notes.png").write_text("not an image")
    assert main(["generate", "--model", str(out), "--chat", "--image", str(image), "--prompt", "What is in the "
                 "picture?", "--max-new-tokens", "8", "--no-stream"]) == 0
    expected = capsys.readouterr().out
    stdout, errors = chat(monkeypatch, capsys, out, f"/image {image}\nWhat is in the picture?\n"
                          f"/image {tmp_path / 'gone.png'}\n/image {tmp_path / 'notes.png'}\n/image\nAnd now?\n",
                          "--max-new-tokens", "8")
    first, second, end = stdout.split("\n")
    assert first == expected and second and not end
    assert len(errors) == 3, errors
    assert "gone.png: no such file" in errors[0] and "notes.png: not an image" in errors[1]
    assert "/image needs a path" in errors[2]


def test_chat_image_on_a_text_model_is_one_line(smollm2_gguf, checkpoint, capsys, monkeypatch):
    stdout, errors = chat(monkeypatch, capsys, smollm2_gguf, f"/image {checkpoint[2]}\n", "--max-new-tokens", "2")
    assert stdout == "" and len(errors) == 1, errors
    assert errors[0].startswith("llamalab chat: error: ") and "has no vision tower" in errors[0]
