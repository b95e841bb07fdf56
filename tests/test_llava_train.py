"""LLaVA's two training stages (`llamalab finetune --stage 1|2`) on a tiny random llava-hf checkpoint written by
transformers: stage 1 changes the projector alone; the loss is the answers' alone (against a hand-built batch
through transformers' `LlavaForConditionalGeneration`); the export loads in transformers with our logits;
resume from a mid-run checkpoint ends bit-equal to the straight run; bad input is one line, nothing written."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, LlavaForConditionalGeneration

from llamalab.cli import main
from llamalab.finetune.llava_data import collate_images, encode, load_records
from llamalab.formats import llava
from llamalab.runtime import load_runnable
from llamalab.train.loop import next_token_loss
from tiny_llava import IMAGE_TOKEN, write_picture, write_tiny_llava

ANSWERS = ["a fractal", "the set", "blue sky", "red"]
RUN = ["--template", "chatml", "--micro-batch-size", "2", "--progress", "false", "--val-split", "0.25",
       "--samples", "0", "--seq-len", "64"]


@pytest.fixture(scope="module")
def material(tmp_path_factory, smollm2_gguf):
    root = tmp_path_factory.mktemp("llava-train")
    write_tiny_llava(root / "base", smollm2_gguf)
    (root / "img").mkdir()
    records = []
    for i in range(8):
        write_picture(root / "img" / f"{i}.png", seed=i % 4)
        records.append({"id": i, "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": ANSWERS[i % 4]}]})
    (root / "data.json").write_text(json.dumps(records))
    return root


def stage(material, out, *extra) -> list[str]:
    return ["finetune", "--model", str(material / "base"), "--data", str(material / "data.json"), "--image-dir",
            str(material / "img"), "--out", str(out), *RUN, *extra]


def parts(state):
    return {p: {k: v for k, v in state.items() if k.startswith(p)}
            for p in ("vision_tower", "multi_modal_projector", "language_model")}


@torch.no_grad()
def same_logits_as_transformers(model_dir, material):
    ref = LlavaForConditionalGeneration.from_pretrained(model_dir).eval()
    ours = llava.load_model(model_dir)
    ids = torch.tensor([[1, 5] + [IMAGE_TOKEN] * ours.args.image_tokens + [7, 9, 11]])
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    want = ref(input_ids=ids, pixel_values=pixels).logits
    assert (ours(ids, pixels) - want).abs().max() < 1e-4


def test_stage1_trains_the_projector_alone_and_transformers_loads_it(material, tmp_path, capsys):
    out = tmp_path / "s1"
    assert main(stage(material, out, "--stage", "1", "--max-steps", "3", "--lr", "1e-2")) == 0
    assert "(llava-stage1)" in capsys.readouterr().out
    before, _, _ = llava.load_state(material / "base")
    after, _, _ = llava.load_state(out / "model")
    b, a = parts(before), parts(after)
    for p in ("vision_tower", "language_model"):
        assert a[p].keys() == b[p].keys() and all(torch.equal(a[p][k], b[p][k]) for k in b[p]), p
    assert all(not torch.equal(a["multi_modal_projector"][k], w) for k, w in b["multi_modal_projector"].items())
    same_logits_as_transformers(out / "model", material)
    report = json.loads((out / "report.json").read_text())
    assert report["trainable_params"] == sum(w.numel() for w in b["multi_modal_projector"].values())


def test_stage2_lora_folds_into_a_checkpoint_transformers_loads(material, tmp_path):
    out = tmp_path / "s2"
    assert main(stage(material, out, "--stage", "2", "--lora-rank", "4", "--max-steps", "3", "--lr", "1e-2")) == 0
    b, a = parts(llava.load_state(material / "base")[0]), parts(llava.load_state(out / "model")[0])
    assert all(torch.equal(a["vision_tower"][k], w) for k, w in b["vision_tower"].items())
    assert not torch.equal(a["language_model"]["language_model.layers.0.attention.wq.weight"],
                           b["language_model"]["language_model.layers.0.attention.wq.weight"])
    assert torch.equal(a["language_model"]["language_model.layers.0.feed_forward.w1.weight"],
                       b["language_model"]["language_model.layers.0.feed_forward.w1.weight"])  # not a LoRA target
    same_logits_as_transformers(out / "model", material)
    assert json.loads((out / "report.json").read_text())["method"] == "llava-stage2-lora"


@torch.no_grad()
def test_loss_is_on_the_answers_only_as_transformers_computes_it(material):
    ckpt = load_runnable(material / "base", device="cpu", dtype="float32")
    model = ckpt.vision
    records = load_records(material / "data.json", material / "img")[:2]
    examples, _ = encode(records, ckpt.tokenizer, "chatml", 65, image_token=IMAGE_TOKEN,
                         n_tokens=model.args.image_tokens)
    x, y, more = collate_images(examples, 2, 64, ckpt.preprocess)
    ours = next_token_loss(model(x, pixels=more["pixels"]), y)

    # by hand: the ChatML text, the image tokens in place of <image>, labels on the answer and what closes it
    hf_tok = AutoTokenizer.from_pretrained(material / "base")
    ref = LlavaForConditionalGeneration.from_pretrained(material / "base").eval()
    ids, labels = [], []
    for i in range(2):
        head = hf_tok("<|im_start|>user\n", add_special_tokens=False).input_ids
        tail = hf_tok("\nWhat is this?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False).input_ids
        answer = hf_tok(f"{ANSWERS[i]}<|im_end|>\n", add_special_tokens=False).input_ids
        row = head + [IMAGE_TOKEN] * model.args.image_tokens + tail + answer
        ids.append(row)
        labels.append([-100] * (len(row) - len(answer)) + answer)
    n = max(map(len, ids))
    input_ids = torch.tensor([r + [2] * (n - len(r)) for r in ids])
    label_t = torch.tensor([r + [-100] * (n - len(r)) for r in labels])
    assert all(x[i, :len(r) - 1].tolist() == r[:-1] for i, r in enumerate(ids))  # the same tokens as ours
    want = ref(input_ids=input_ids, pixel_values=more["pixels"], labels=label_t).loss
    assert abs(ours.item() - want.item()) < 1e-5


def test_resume_from_a_mid_run_checkpoint_ends_where_the_straight_run_did(material, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        cmd = lambda out: stage(material, out, "--stage", "2", "--lora-rank", "4", "--max-steps", "4",  # noqa: E731
                                "--ckpt-every", "2", "--eval-every", "2", "--lr", "1e-2", "--keep-last", "5")
        assert main(cmd(tmp_path / "straight")) == 0
        shutil.copytree(tmp_path / "straight", tmp_path / "cut")
        for name in ("step-000004",):
            shutil.rmtree(tmp_path / "cut" / "ckpt" / name)
        shutil.rmtree(tmp_path / "cut" / "model")
        assert main(cmd(tmp_path / "cut") + ["--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    strip = lambda p: [{k: v for k, v in json.loads(line).items() if k not in ("tokens_per_s", "mfu", "elapsed_s")}  # noqa: E731
                       for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert strip(tmp_path / "cut") == strip(tmp_path / "straight")
    a, b = llava.load_state(tmp_path / "cut" / "model")[0], llava.load_state(tmp_path / "straight" / "model")[0]
    assert all(torch.equal(a[k], b[k]) for k in b)


def one_error(capsys, argv, match, out):
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("llamalab: ")]
    assert len(err) == 1 and match in err[0], err
    assert not out.exists()


def test_bad_input_is_one_clear_line_and_nothing_written(material, tmp_path, capsys):
    out, img = tmp_path / "out", tmp_path / "img"
    img.mkdir()
    (img / "text.png").write_text("not an image")
    good = (material / "img" / "0.png").read_bytes()
    (img / "cut.png").write_bytes(good[:len(good) // 2])
    Image.new("1", (20000, 20000)).save(img / "bomb.png")  # 400 Mpx in a small file
    for name in ("0.png",):
        shutil.copy(material / "img" / name, img / name)

    def data(image, text="<image>\nWhat is this?", n=4):
        rec = {"image": image, "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "red"}]}
        (tmp_path / "d.json").write_text(json.dumps([rec] * n))
        return ["finetune", "--model", str(material / "base"), "--data", str(tmp_path / "d.json"), "--image-dir",
                str(img), "--out", str(out), "--stage", "1", *RUN[:-2]]

    one_error(capsys, data("text.png"), "text.png: not an image Pillow can read", out)
    one_error(capsys, data("cut.png"), "cut.png: the image data is damaged or truncated", out)
    one_error(capsys, data("bomb.png"), "bomb.png: the image claims more pixels than the limit", out)
    one_error(capsys, data("missing.png"), "missing.png: no such file", out)
    one_error(capsys, data(["0.png", "0.png"], "<image><image>" * 2), "4 <image> mark(s) but 2 image(s)", out)
    one_error(capsys, data(["0.png"] * 3, "<image>" * 3) + ["--seq-len", "8"], "do not fit in seq_len 8", out)
    argv = data("0.png")
    (tmp_path / "d.json").write_text('[{"image": "0.png", "messages": []}]')
    one_error(capsys, argv, 'a LLaVA record needs "conversations"', out)
    one_error(capsys, data("0.png") + ["--lora-rank", "4"], "stage 1 trains the projector alone", out)
