"""`llamalab demo --vision`: LLaVA's recipe in miniature on CPU, onto SmolLM2-135M-Instruct.

    synthetic pictures (shapes.py) → captions and questions in LLaVA's JSON
    → a llava-hf checkpoint: SmolLM2-135M-Instruct + a small CLIP-style ViT and a projector, both drawn at random
      (no pretrained CLIP weights are reachable here, so the tower is trained from scratch, with the projector)
    → stage 1 on the captions (tower + projector; the language model frozen)
    → stage 2 on the questions (tower + projector + LoRA on the language model)
    → held-out accuracy next to chance and next to the same model with a blank picture; a PNG of answers

Both stages are `llamalab finetune --stage 1|2` runs (`finetune.llava`), each in its own folder of the output.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import assets
from ..atomic import write_text
from ..finetune import FinetuneConfig, finetune
from ..formats import llava as llava_format
from ..formats import load_state
from ..runtime import load_runnable
from ..vision import LlavaArgs, Projector, VisionArgs, VisionTower
from .score import answers_png, items_of, lines, predictions, summary
from .shapes import pictures

IMAGE_TOKEN = 49151  # SmolLM2's last id (a rarely used piece): its rows are replaced by the image's features
# 30px pictures in 10px patches: one patch per cell of the pictures' 3×3 grid, 9 image tokens
TOWER = VisionArgs(kind="clip", dim=192, n_layers=4, n_heads=4, ffn_dim=384, image_size=30, patch_size=10,
                   act="gelu")


@dataclass(frozen=True)
class Plan:
    train_pictures: int
    test_pictures: int
    stage1_steps: int
    stage2_steps: int
    batch: int = 8


FULL = Plan(train_pictures=1200, test_pictures=150, stage1_steps=100, stage2_steps=120)
QUICK = Plan(train_pictures=48, test_pictures=12, stage1_steps=2, stage2_steps=2, batch=4)


def write_data(out: Path, plan: Plan, seed: int) -> list:
    """The training pictures as PNGs, stage 1's captions and stage 2's questions as LLaVA JSON; returns the
    held-out pictures (another seed: none of them is trained on)."""
    images = out / "images"
    images.mkdir(parents=True)
    captions, questions = [], []
    for i, p in enumerate(pictures(plan.train_pictures, seed)):
        name = f"{i:05d}.png"
        p.image.save(images / name)
        captions.append({"id": i, "image": name, "conversations": [
            {"from": "human", "value": "<image>\nDescribe the picture."}, {"from": "gpt", "value": p.caption()}]})
        for kind, q, a in p.questions():
            questions.append({"id": f"{i}-{kind}", "image": name, "conversations": [
                {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]})
    write_text(out / "captions.json", json.dumps(captions))
    write_text(out / "questions.json", json.dumps(questions))
    return pictures(plan.test_pictures, seed + 1)


def write_base(out: Path, seed: int) -> Path:
    """SmolLM2-135M-Instruct's weights and tokenizer with a random tower and projector, as a llava-hf folder."""
    src = load_state(assets.path("smollm2"))
    args = LlavaArgs(vision=TOWER, text=src.args, image_token_id=IMAGE_TOKEN, feature_layer=-1)
    torch.manual_seed(seed)
    tower, projector = VisionTower(TOWER), Projector(TOWER.dim, src.args.dim)
    state = {**{f"vision_tower.{k}": v for k, v in tower.state_dict().items()},
             **{f"multi_modal_projector.{k}": v for k, v in projector.state_dict().items()},
             **{f"language_model.{k}": v.float() for k, v in src.state.items()}}
    return llava_format.save(state, args, out, tokenizer_src=assets.path("smollm2"), force=True)


def stage(out: Path, model: Path, data: Path, images: Path, n: int, steps: int, plan: Plan, progress: bool,
          **extra) -> dict:
    cfg = FinetuneConfig(init_from=str(model), data=str(data), image_dir=str(images), stage=n,
                         train_vision_tower=True, template="chatml", max_steps=steps, micro_batch_size=plan.batch,
                         seq_len=64, val_split=min(0.05, 32 / plan.train_pictures), samples=0, out_dir=str(out),
                         progress=progress, warmup_fraction=0.05, **extra)
    return finetune(cfg)


def run_vision_demo(out="runs/vision-demo", *, quick: bool = False, progress: bool = True, seed: int = 0,
                    plan: Plan | None = None) -> dict:
    """The whole demo (the output folder is started afresh); returns its report (also DIR/report.json).
    `plan`: other sizes than FULL (or QUICK with `quick`)."""
    out, plan, t0 = Path(out), plan or (QUICK if quick else FULL), time.perf_counter()
    for part in ("images", "base", "stage1", "stage2", "captions.json", "questions.json", "report.json", "answers.png"):
        (shutil.rmtree if (out / part).is_dir() else lambda p: Path(p).unlink(missing_ok=True))(out / part)
    test = write_data(out, plan, seed)
    print(f"[1/5] {plan.train_pictures} training pictures (captions, questions), {len(test)} held out → {out}")
    base = write_base(out / "base", seed)
    print(f"[2/5] SmolLM2-135M-Instruct + a {TOWER.n_layers}-layer ViT ({TOWER.image_size}px, {TOWER.patch_size}px "
          f"patches) drawn at random (no pretrained CLIP is reachable here) → {base}")
    print(f"[3/5] stage 1: tower + projector on the captions, the language model frozen ({plan.stage1_steps} steps)")
    s1 = stage(out / "stage1", base, out / "captions.json", out / "images", 1, plan.stage1_steps, plan, progress,
               lr=1e-3)
    print(f"[4/5] stage 2: tower + projector + LoRA on the questions ({plan.stage2_steps} steps)")
    s2 = stage(out / "stage2", Path(s1["model_dir"]), out / "questions.json", out / "images", 2, plan.stage2_steps,
               plan, progress, lora_rank=16, lr=5e-4)
    rt = load_runnable(s2["model_dir"], device="cpu", dtype="float32")
    items = items_of(test)
    seen = predictions(rt.vision, rt.tokenizer, items, rt.preprocess, blank=False)
    blind = predictions(rt.vision, rt.tokenizer, items, rt.preprocess, blank=True)
    result = summary(items, seen, blind)
    answers_png(out / "answers.png", items, seen)
    print(f"[5/5] held-out accuracy of {s2['model_dir']}:")
    for line in lines(result):
        print("  " + line)
    report = {"quick": quick, "seconds": round(time.perf_counter() - t0, 1), "plan": plan.__dict__,
              "stage1": {k: s1[k] for k in ("val_loss_before", "val_loss_after", "trainable_params")},
              "stage2": {k: s2[k] for k in ("val_loss_before", "val_loss_after", "trainable_params")},
              "model_dir": s2["model_dir"], **result}
    write_text(out / "report.json", json.dumps(report, indent=2) + "\n")
    print(f"  answers {out / 'answers.png'}\n  report  {out / 'report.json'}  ({report['seconds']:.0f} s)")
    return report
