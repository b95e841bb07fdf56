"""The vision demo's measurement: held-out questions answered by the trained model with the picture and with a
blank picture in its place (the no-image baseline: the same model, the same prompt length), each answer the
most likely first token among its question's closed set of answers; accuracies with Wilson intervals, the
margin with a paired bootstrap interval, and a PNG of some test pictures with the model's answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..atomic import staged_file
from ..chat_templates import render_for
from ..errors import LlamalabError
from ..finetune.llava_data import MARK, _ids
from ..images import preprocess
from .shapes import QUESTIONS, Picture


@dataclass
class Item:
    picture: Picture
    kind: str
    question: str
    answer: str


def items_of(pictures: list[Picture]) -> list[Item]:
    return [Item(p, kind, q, a) for p in pictures for kind, q, a in p.questions()]


def first_tokens(tokenizer, answers) -> list[int]:
    """The first token of each answer, as it starts an assistant turn; they must differ."""
    firsts = [tokenizer.encode(a, bos=False)[0] for a in answers]
    if len(set(firsts)) != len(firsts):
        raise LlamalabError(f"answers {answers} share a first token; the demo scores first tokens")
    return firsts


@torch.no_grad()
def predictions(model, tokenizer, items: list[Item], pre, *, blank: bool, batch: int = 32) -> list[str]:
    """The model's answer to each item: with its picture, or with a blank (white) picture in its place."""
    args = model.args
    out = [None] * len(items)
    for kind, (question, answers) in QUESTIONS.items():
        idx = [i for i, it in enumerate(items) if it.kind == kind]
        if not idx:
            continue
        text = render_for(tokenizer, [{"role": "user", "content": f"{MARK}\n{question}"}], "chatml",
                          add_generation_prompt=True)
        ids = _ids(tokenizer, text, args.image_token_id, args.image_tokens, "demo")
        firsts = torch.tensor(first_tokens(tokenizer, answers))
        white = Image.new("RGB", items[0].picture.image.size, (255, 255, 255))
        for lo in range(0, len(idx), batch):
            chunk = idx[lo:lo + batch]
            pixels = torch.from_numpy(np.stack([preprocess(white if blank else items[i].picture.image, pre)
                                                for i in chunk]))
            logits = model(torch.tensor([ids] * len(chunk)), pixels, last_only=True)[:, -1]
            for i, k in zip(chunk, logits[:, firsts].argmax(-1).tolist()):
                out[i] = answers[k]
    return out


Z95 = NormalDist().inv_cdf(0.975)


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval (95%) of a proportion k/n."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 4000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) − mean(b) over the same items, resampled together."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n, len(a)))
    diffs = a[idx].mean(1) - b[idx].mean(1)
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


def summary(items: list[Item], with_image: list[str], without: list[str]) -> dict:
    right = np.array([p == it.answer for p, it in zip(with_image, items)], dtype=float)
    blind = np.array([p == it.answer for p, it in zip(without, items)], dtype=float)
    chance = float(np.mean([1 / len(QUESTIONS[it.kind][1]) for it in items]))
    kinds = {k: [i for i, it in enumerate(items) if it.kind == k] for k in QUESTIONS}
    return {"questions": len(items), "chance": chance,
            "with_image": float(right.mean()), "with_image_ci": wilson(int(right.sum()), len(items)),
            "no_image": float(blind.mean()), "no_image_ci": wilson(int(blind.sum()), len(items)),
            "margin": float(right.mean() - blind.mean()), "margin_ci": paired_bootstrap(right, blind),
            "per_kind": {k: {"n": len(ix), "with_image": float(right[ix].mean()), "no_image": float(blind[ix].mean()),
                             "chance": 1 / len(QUESTIONS[k][1])} for k, ix in kinds.items() if ix}}


def lines(s: dict) -> list[str]:
    pct = lambda x: f"{100 * x:5.1f}%"  # noqa: E731
    ci = lambda c: f"[95% CI {100 * c[0]:.1f}–{100 * c[1]:.1f}]"  # noqa: E731
    out = [f"held-out questions: {s['questions']}",
           f"  chance (one over each question's answers)   {pct(s['chance'])}",
           f"  no image (a blank picture in its place)     {pct(s['no_image'])}  {ci(s['no_image_ci'])}",
           f"  with the image                              {pct(s['with_image'])}  {ci(s['with_image_ci'])}",
           f"  margin over no image: {100 * s['margin']:+.1f} points {ci(s['margin_ci'])} (paired bootstrap)"]
    out += [f"    {k:7s} {v['n']:4d} questions: {pct(v['with_image'])} with the image, {pct(v['no_image'])} "
            f"without, chance {pct(v['chance'])}" for k, v in s["per_kind"].items()]
    return out


def answers_png(path, items: list[Item], predicted: list[str], n: int = 8, scale: int = 4) -> None:
    """A strip of the first `n` test pictures, each with one question (the kinds in turn), the model's answer and
    the truth."""
    by_picture: dict[int, list] = {}
    for it, pred in zip(items, predicted):
        by_picture.setdefault(id(it.picture), []).append((it, pred))
    kinds = list(QUESTIONS)
    shown = [next((x for x in pairs if x[0].kind == kinds[k % len(kinds)]), pairs[0])
             for k, pairs in enumerate(list(by_picture.values())[:n])]
    side = items[0].picture.image.size[0] * scale
    width, text_h = max(side, 150), 42
    sheet = Image.new("RGB", (width * len(shown), side + text_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (it, pred) in enumerate(shown):
        sheet.paste(it.picture.image.resize((side, side), Image.NEAREST), (k * width, 0))
        mark = "right" if pred == it.answer else f"wrong ({it.answer})"
        draw.text((k * width + 2, side + 2), f"{it.kind}?\n-> {pred}\n{mark}", fill="black")
    with staged_file(path) as tmp:
        sheet.save(tmp, format="PNG")
