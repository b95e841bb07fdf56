"""Synthetic pictures for the vision demo, drawn with Pillow: one to three shapes of one kind and one colour on a
light background, with a caption (LLaVA's stage 1) and questions whose answers come from small closed sets
(stage 2 and the held-out accuracy; chance is one over the size of each question's set).

    colour    What colour are the shapes?                 red, green, blue, yellow
    shape     What shape are they?                        circle, square, triangle
    count     How many shapes are there?                  one, two, three
    side      Is the shape on the left or on the right?   left, right           (pictures of one shape)

Everything is drawn from a seeded `numpy` generator: the same seed, the same pictures.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
SHAPES = ("circle", "square", "triangle")
COUNTS = ("one", "two", "three")
SIDES = ("left", "right")
QUESTIONS = {
    "colour": ("What colour are the shapes?", tuple(COLOURS)),
    "shape": ("What shape are they?", SHAPES),
    "count": ("How many shapes are there?", COUNTS),
    "side": ("Is the shape on the left or on the right?", SIDES),
}


@dataclass
class Picture:
    image: Image.Image
    colour: str
    shape: str
    count: int
    side: str | None  # for one shape: which half its centre is in

    def caption(self) -> str:
        n = COUNTS[self.count - 1]
        what = f"{self.shape}s" if self.count > 1 else self.shape
        where = f" on the {self.side}" if self.side else ""
        return f"{n.capitalize()} {self.colour} {what}{where}."

    def answer(self, kind: str) -> str | None:
        return {"colour": self.colour, "shape": self.shape, "count": COUNTS[self.count - 1],
                "side": self.side}[kind]

    def questions(self) -> list[tuple[str, str, str]]:
        """[(kind, question, answer)] that this picture answers."""
        return [(k, q, self.answer(k)) for k, (q, _) in QUESTIONS.items() if self.answer(k) is not None]


def _draw(d: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        d.ellipse(box, fill=fill)
    elif shape == "square":
        d.rectangle(box, fill=fill)
    else:
        d.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def picture(rng: np.random.Generator, size: int = 30) -> Picture:
    """One picture: shapes placed in distinct cells of a 3×3 grid (a little jitter), none overlapping."""
    colour = list(COLOURS)[rng.integers(len(COLOURS))]
    shape = SHAPES[rng.integers(len(SHAPES))]
    count = int(rng.integers(1, 4))
    background = tuple(int(v) for v in rng.integers(225, 256, size=3))
    image = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(image)
    cell = size // 3
    cells = rng.choice(9, size=count, replace=False)
    if count == 1 and cells[0] % 3 == 1:  # one shape: never in the middle column, so left/right is defined
        cells[0] += 1 if rng.random() < 0.5 else -1
    r = cell * 0.35  # with the jitter, neighbours stay at least a pixel apart
    for c in cells:
        cx = (c % 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        cy = (c // 3 + 0.5) * cell + rng.uniform(-0.5, 0.5)
        _draw(d, shape, (round(cx - r), round(cy - r), round(cx + r), round(cy + r)), COLOURS[colour])
    side = None if count > 1 else ("left" if cells[0] % 3 == 0 else "right")
    return Picture(image, colour, shape, count, side)


def pictures(n: int, seed: int, size: int = 30) -> list[Picture]:
    rng = np.random.default_rng(seed)
    return [picture(rng, size) for _ in range(n)]
