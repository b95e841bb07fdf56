"""Image preprocessing against transformers' own processors (CLIP, SigLIP, LLaVA's pad-to-square, a
`preprocessor_config.json`), and bad images: each one clear line."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from transformers import CLIPImageProcessor, LlavaImageProcessor, SiglipImageProcessor

from llamalab import images
from llamalab.errors import LlamalabError


def sample_images():
    rng = np.random.default_rng(0)
    out = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
           [(50, 80), (97, 33), (30, 30), (12, 20)]]
    out.append(Image.fromarray(rng.integers(0, 256, (40, 60, 4), dtype=np.uint8), "RGBA"))
    out.append(Image.fromarray(rng.integers(0, 256, (40, 60), dtype=np.uint8), "L"))
    return out


CROP = {"shortest_edge": 28}, {"height": 24, "width": 24}
CASES = {
    "clip": (CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}),
             images.Preprocess.clip(28)),
    "siglip": (SiglipImageProcessor(size={"height": 28, "width": 28}), images.Preprocess.siglip(28)),
    "llava-pad": (LlavaImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, do_pad=True),
                  images.Preprocess.clip(28, pad_to_square=True)),
    "from-config": (CLIPImageProcessor(size=CROP[0], crop_size=CROP[1]),
                    images.Preprocess.from_config(CLIPImageProcessor(size=CROP[0], crop_size=CROP[1]).to_dict(), "x")),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_pixels_equal_transformers(case):
    reference, ours = CASES[case]
    for image in sample_images():
        expected = reference(image, return_tensors="pt").pixel_values[0].numpy()
        got = images.preprocess(image, ours)
        assert got.shape == expected.shape and got.dtype == np.float32
        assert np.abs(got - expected).max() < 1e-6, (case, image.size, image.mode)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_open_image_reads_a_png(tmp_path):
    image = sample_images()[0]
    (tmp_path / "a.png").write_bytes(png_bytes(image))
    assert np.array_equal(np.array(images.open_image(tmp_path / "a.png")), np.array(image))


def test_bad_images_are_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image at all\n")
    truncated = png_bytes(sample_images()[1])
    (tmp_path / "cut.png").write_bytes(truncated[:len(truncated) // 2])
    (tmp_path / "bomb.png").write_bytes(png_bytes(Image.new("1", (9000, 9000))))  # 81 Mpx in a few kB
    cases = {"notes.txt": "not an image", "cut.png": "truncated", "bomb.png": "over the limit",
             "missing.png": "no such file"}
    for name, why in cases.items():
        with pytest.raises(LlamalabError, match=why) as err:
            images.open_image(tmp_path / name)
        assert "\n" not in str(err.value) and name in str(err.value)
    with pytest.raises(LlamalabError, match="not an image"):
        images.open_image(b"\x89PNG but not really")


def test_the_pixel_count_is_checked_before_decoding(tmp_path, monkeypatch):
    (tmp_path / "bomb.png").write_bytes(png_bytes(Image.new("1", (9000, 9000))))
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("decoded before the size check"))
    with pytest.raises(LlamalabError, match="over the limit"):
        images.open_image(tmp_path / "bomb.png")
