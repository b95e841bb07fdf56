"""Prompts with images, for a LLaVA checkpoint: where the images go in the tokens, and the input rows the
engine prefills (the image tokens' rows replaced by the images' projected features).

An image goes where the prompt says `<image>` (one mark per image, in order); a prompt without marks gets
them in front, each followed by a line break, as LLaVA's own prompts have them. Each mark becomes as many
image tokens as one image fills (`LlavaArgs.image_tokens`); the text between marks is encoded piece by piece,
as a tokenizer does around a special token.
"""

from __future__ import annotations

import torch
from PIL import Image

from ..chat_templates import render_for
from ..errors import LlamalabError
from ..images import open_image, preprocess
from .load import Runnable

MARK = "<image>"


def image_prompt(rt: Runnable, text: str, images: list, *, chat: bool = False,
                 system: str | None = None) -> tuple[list[int], torch.Tensor]:
    """(token ids, input rows (1, T, dim)) for `text` with `images` (paths, bytes or opened `open_image`s) at
    its `<image>` marks."""
    if rt.vision is None:
        raise LlamalabError(f"{rt.name} is a text-only model; images need a vision model (a llava-hf checkpoint)")
    marks = text.count(MARK)
    if marks == 0:
        text = f"{MARK}\n" * len(images) + text
    elif marks != len(images):
        raise LlamalabError(f"the prompt has {marks} {MARK} marks but {len(images)} images were given; "
                            f"put one {MARK} where each image goes, or none to put them all in front")
    pixels = torch.stack([torch.from_numpy(preprocess(i if isinstance(i, Image.Image) else open_image(i),
                                                         rt.preprocess)) for i in images])
    if chat:
        text = render_for(rt.tokenizer, ([{"role": "system", "content": system}] if system else [])
                          + [{"role": "user", "content": text}], rt.template)
    first, *rest = text.split(MARK)
    ids = rt.tokenizer.encode(first, bos=not chat and rt.tokenizer.add_bos)
    for piece in rest:
        ids += [rt.vision.args.image_token_id] * rt.vision.args.image_tokens
        ids += rt.tokenizer.encode(piece, bos=False) if piece else []
    with torch.inference_mode():
        rows = rt.vision.embed(torch.tensor([ids], device=rt.device), pixels.to(rt.device))
    return ids, rows
