"""LLaVA's training data: records with an image and a conversation → token ids, loss masks and pixels.

    {"id": ..., "image": "coco/0001.png", "conversations": [{"from": "human", "value": "<image>\\nWhat is ...?"},
                                                          {"from": "gpt", "value": "A red circle."}, ...]}

LLaVA's own layout (both stages: stage 1's image–caption pairs are one-turn conversations too). `image` (a path,
or a list of paths) is resolved against `--image-dir`; each image goes where the text says `<image>` (a record
without the mark gets it in front of its first human turn, as LLaVA does). The conversation goes through
`finetune.records` and `finetune.data` like any ShareGPT record — the same chat template, the same loss only on
the answers — with each `<image>` becoming as many image tokens as one image fills. Every image is opened,
bounded and decoded once before the run starts (a bad file is one error, before anything is written); batches
read their pixels again as they need them, the most recent ones cached.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..chat_templates import resolve_template
from ..errors import LlamalabError
from ..images import Preprocess, open_image, preprocess
from ..textio import read_records
from .data import Example, InstructionLoader, collate, masked_example, turn_texts
from .records import to_example

MARK = "<image>"


@dataclass
class ImageExample(Example):
    images: tuple[Path, ...] = ()  # in the order of the image tokens


@lru_cache(maxsize=4096)
def _pixels(path: Path, pre: Preprocess) -> np.ndarray:
    return preprocess(open_image(path), pre).astype(np.float32)


def load_records(path, image_dir) -> list[tuple[str, dict, list[Path]]]:
    """[(where, {"messages": ...}, image paths)] of a LLaVA JSON / JSONL file."""
    root = Path(image_dir) if image_dir else Path(path).parent
    out = []
    for where, record in read_records(path):
        if not isinstance(record, dict) or "conversations" not in record:
            raise LlamalabError(f"{where}: a LLaVA record needs \"conversations\" (and \"image\"): "
                                f"{{\"image\": \"a.png\", \"conversations\": [{{\"from\": \"human\", ...}}]}}")
        images = record.get("image")
        images = [] if images is None else images if isinstance(images, list) else [images]
        if not all(isinstance(i, str) and i for i in images):
            raise LlamalabError(f"{where}: \"image\" must be a file name or a list of them, got {record['image']!r}")
        example = to_example(record, "sharegpt", where)
        marks = sum(m["content"].count(MARK) for m in example["messages"])
        if marks == 0 and len(images) == 1:
            first = next(m for m in example["messages"] if m["role"] == "user")
            first["content"] = f"{MARK}\n{first['content']}"
        elif marks != len(images):
            raise LlamalabError(f"{where}: the conversation has {marks} {MARK} mark(s) but {len(images)} image(s); "
                                f"put one {MARK} where each image goes")
        out.append((where, example, [root / i for i in images]))
    return out


def _ids(tokenizer, text: str, image_token: int, n_tokens: int, where: str) -> list[int]:
    first, *rest = text.split(MARK)
    pieces = [tokenizer.encode(first, bos=False)] + [tokenizer.encode(p, bos=False) if p else [] for p in rest]
    if any(image_token in p for p in pieces):
        raise LlamalabError(f"{where}: the text holds the image token (id {image_token}) itself; images go in "
                            f"as {MARK} marks only")
    ids = pieces[0]
    for piece in pieces[1:]:
        ids = ids + [image_token] * n_tokens + piece
    return ids


def check_images(paths: list[Path], where: str, seen: set) -> None:
    """Each image opens and decodes within the bounds (`images.open_image`), or one error naming the record."""
    for p in paths:
        if p not in seen:
            try:
                open_image(p).close()
            except LlamalabError as e:
                raise LlamalabError(f"{where}: {e}") from None
            seen.add(p)


def encode(records, tokenizer, template: str | None, max_len: int, *, image_token: int, n_tokens: int,
           seen: set | None = None) -> tuple[list[ImageExample], dict]:
    """Token ids, answer masks and image paths of every record, cut to max_len tokens. A record whose image tokens
    do not fit in max_len is an error (an image cut in half has no meaning); one whose answers start beyond
    it is skipped and counted."""
    template = resolve_template(template, tokenizer)
    seen = set() if seen is None else seen
    out, counts = [], {"examples": len(records), "used": 0, "truncated": 0, "skipped": 0}
    for where, example, paths in records:
        texts, _ = turn_texts(example, tokenizer, template, where)
        ex = masked_example([_ids(tokenizer, t, image_token, n_tokens, where) for t in texts], tokenizer.eos_id, False)
        slots = np.nonzero(ex.ids == image_token)[0]
        if len(slots) and slots[-1] >= max_len - 1:
            raise LlamalabError(f"{where}: {len(paths)} image(s) fill {len(slots)} image tokens, which with the "
                                f"text before them do not fit in seq_len {max_len - 1}; raise --seq-len, or use "
                                f"fewer images per record")
        cut = len(ex) > max_len
        ids, targets = (ex.ids[:max_len], ex.targets[:max_len]) if cut else (ex.ids, ex.targets)
        if not targets[1:].any():
            counts["skipped"] += 1
            continue
        check_images(paths, where, seen)
        counts["used"] += 1
        counts["truncated"] += cut
        out.append(ImageExample(ids, targets, tuple(paths)))
    return out, counts


def collate_images(rows: list[ImageExample | None], pad_id: int, seq_len: int, pre: Preprocess):
    """(inputs, targets, {"pixels": (images, C, H, W)}): the images of the rows in row order."""
    x, y = collate(rows, pad_id, seq_len)
    pixels = [_pixels(p, pre) for r in rows if r is not None for p in r.images]
    return x, y, {"pixels": torch.from_numpy(np.stack(pixels)) if pixels else None}


class ImageLoader(InstructionLoader):
    """`InstructionLoader`'s batches (the same order, resume state) with each row's images."""

    def __init__(self, examples, *, pre: Preprocess, **kwargs):
        super().__init__(examples, **kwargs)
        self.pre = pre

    def __next__(self):
        return collate_images(self.next_rows(), self.pad_id, self.seq_len, self.pre)


def held_out_image_batches(examples: list[ImageExample], *, batch_size: int, seq_len: int, pad_id: int,
                           pre: Preprocess):
    """Every held-out example once, longest first (pixels read when the batches are evaluated)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]))
    chunks = [[examples[i] for i in order[lo:lo + batch_size]] for lo in range(0, len(order), batch_size)]
    return lambda: (collate_images(rows, pad_id, seq_len, pre) for rows in chunks)
