"""Prompts with images, for a LLaVA checkpoint: where the images go in the tokens, and the input rows the
engine prefills (the image tokens' rows replaced by the images' projected features).

An image goes where the prompt says `<image>` (one mark per image, in order); a prompt without marks gets
them in front, each followed by a line break, as LLaVA's own prompts (and llava-1.5's chat template) have
them. Each mark becomes as many image tokens as one image fills (`LlavaArgs.image_tokens`); the text between
marks is encoded piece by piece, as a tokenizer does around a special token.

`ImageInput` is the part the server and chat share: images → features (the vision tower and projector, run
once per image), text with marks → token ids, ids + features → the rows to prefill.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch
from PIL import Image

from ..chat_templates import render_for
from ..errors import LlamalabError
from ..images import Preprocess, open_image, preprocess
from ..vision import Llava
from .load import Runnable

MARK = "<image>"


@dataclass(frozen=True)
class ImageInput:
    """A LLaVA checkpoint's way from images to prompt rows."""
    llava: Llava
    preprocess: Preprocess

    @property
    def image_tokens(self) -> int:
        return self.llava.args.image_tokens

    def features(self, images: list) -> torch.Tensor:
        """(N, image_tokens, text dim) for images given as paths, bytes or opened `open_image`s."""
        pixels = torch.stack([torch.from_numpy(preprocess(i if isinstance(i, Image.Image) else open_image(i),
                                                             self.preprocess)) for i in images])
        with torch.inference_mode():
            return self.llava.image_features(pixels.to(self.llava.language_model.norm.weight.device))

    def ids(self, tokenizer, text: str, *, mark: str = MARK, bos: bool = False) -> list[int]:
        """Token ids of `text` with each `mark` replaced by one image's image tokens."""
        first, *rest = text.split(mark)
        image = self.llava.args.image_token_id
        pieces = [tokenizer.encode(first, bos=bos)] + [tokenizer.encode(p, bos=False) if p else [] for p in rest]
        if any(image in piece for piece in pieces):
            raise LlamalabError(f"the text holds the image token (id {image}) itself; images go in as images only")
        ids = pieces[0]
        for piece in pieces[1:]:
            ids += [image] * self.image_tokens + piece
        return ids

    def rows(self, ids: list[int], features: torch.Tensor | None) -> torch.Tensor:
        """The input rows (1, T, dim) of `ids` with the images' features at their image tokens."""
        with torch.inference_mode():
            return self.llava.splice(torch.tensor([ids], device=self.llava.language_model.norm.weight.device),
                                     features)


def image_input(rt: Runnable) -> ImageInput | None:
    """The runnable's `ImageInput` (None: a text-only model)."""
    return None if rt.vision is None else ImageInput(rt.vision, rt.preprocess)


def no_vision(name: str) -> LlamalabError:
    return LlamalabError(f"{name} is a text-only model: it has no vision tower; images need a vision model "
                         "(a LLaVA checkpoint)")


def with_marks(text: str, images: int, mark: str = MARK) -> str:
    """`text` with one `mark` per image: its own, or (none given) all in front, each followed by a line break."""
    marks = text.count(mark)
    if marks == 0:
        return f"{mark}\n" * images + text
    if marks != images:
        raise LlamalabError(f"the prompt has {marks} {mark} marks but {images} images were given; "
                            f"put one {mark} where each image goes, or none to put them all in front")
    return text


def image_prompt(rt: Runnable, text: str, images: list, *, chat: bool = False,
                 system: str | None = None) -> tuple[list[int], torch.Tensor]:
    """(token ids, input rows (1, T, dim)) for `text` with `images` (paths, bytes or opened `open_image`s) at
    its `<image>` marks."""
    eyes = image_input(rt)
    if eyes is None:
        raise no_vision(rt.name)
    text = with_marks(text, len(images))
    features = eyes.features(images)
    if chat:
        text = render_for(rt.tokenizer, ([{"role": "system", "content": system}] if system else [])
                          + [{"role": "user", "content": text}], rt.template)
    ids = eyes.ids(rt.tokenizer, text, bos=not chat and rt.tokenizer.add_bos)
    return ids, eyes.rows(ids, features)


class ConversationImages:
    """The images of a chat: `/image PATH` attaches one to the next user message (its features computed once,
    then); the message gets a mark per image in front (a mark no typed text contains), and every turn's prompt
    gets the features of all images so far at their marks. The images only ever grow within a conversation (or
    all go with `reset`), so a cached prefix of the token ids holds the same images."""

    def __init__(self, rt: Runnable):
        self.eyes, self.name = image_input(rt), rt.name
        self.mark = f"<image-{secrets.token_hex(8)}>"
        self.kept: list[torch.Tensor] = []      # (1, image_tokens, dim) each, of the messages so far
        self.waiting: list[torch.Tensor] = []   # attached to the next message

    def attach(self, path: str) -> None:
        path = path.strip().strip("'\"")
        if not path:
            raise LlamalabError("/image needs a path: /image PATH")
        if self.eyes is None:
            raise no_vision(self.name)
        self.waiting.append(self.eyes.features([open_image(path)]))

    def content(self, text: str) -> str:
        """A user message's content with a mark for each waiting image."""
        return f"{self.mark}\n" * len(self.waiting) + text

    def prompt(self, tokenizer, rendered: str) -> tuple[list[int], torch.Tensor | None]:
        """Token ids of a rendered conversation (the template places BOS) and its rows (None: no images)."""
        features = self.kept + self.waiting
        if not features:
            return tokenizer.encode(rendered, bos=False), None
        ids = self.eyes.ids(tokenizer, rendered, mark=self.mark)
        return ids, self.eyes.rows(ids, torch.cat(features))

    def commit(self) -> None:
        """The message went through: its images are the conversation's now."""
        self.kept, self.waiting = self.kept + self.waiting, []

    def reset(self) -> None:
        self.kept, self.waiting = [], []
