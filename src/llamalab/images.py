"""Images for the vision tower: reading one (bounded), and turning it into the tower's pixel tensor exactly as
transformers' image processors do (`CLIPImageProcessor`, `SiglipImageProcessor`, `LlavaImageProcessor`; their
Pillow backend).

Reading: Pillow parses the header only, the pixel count is checked against `MAX_PIXELS` before anything is
decoded (a small file may claim a huge canvas: a decompression bomb), then the pixels are decoded; a file that
is no image, or a truncated one, is one `LlamalabError` line.

Preprocessing, in transformers' order: convert to RGB (transparency composited onto white); LLaVA's optional
pad-to-square (the short side padded evenly with the mean colour); resize with bicubic resampling — the shortest
edge to `size` keeping the aspect ratio (CLIP, the long side `int(size · long / short)`), or to exactly
`size × size` (SigLIP); center crop (CLIP); rescale by 1/255; normalize by mean and std per channel.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from .bounded import read_json
from .errors import LlamalabError

MAX_PIXELS = 64 * 1024 * 1024  # 64 Mpx: far above any camera photo a model is shown, far below a bomb
MAX_IMAGE_BYTES = 16 * 1024 * 1024  # one encoded image sent inline (base64 / a data: URL), decoded
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)  # SigLIP's (transformers' IMAGENET_STANDARD_MEAN/STD)


@dataclass(frozen=True)
class Preprocess:
    """How images become pixel tensors (a `preprocessor_config.json`'s settings).

    shortest_edge: resize so the shorter side is this long (aspect kept); else `height`×`width` exactly.
    crop: (height, width) of the center crop, or None."""

    shortest_edge: int | None = None
    height: int | None = None
    width: int | None = None
    crop: tuple[int, int] | None = None
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    rescale: float = 1 / 255
    pad_to_square: bool = False

    @classmethod
    def clip(cls, image_size: int, pad_to_square: bool = False) -> "Preprocess":
        return cls(shortest_edge=image_size, crop=(image_size, image_size), pad_to_square=pad_to_square)

    @classmethod
    def siglip(cls, image_size: int) -> "Preprocess":
        return cls(height=image_size, width=image_size, mean=HALF, std=HALF)

    @classmethod
    def from_config(cls, cfg: dict, where) -> "Preprocess":
        """From a `preprocessor_config.json` (CLIPImageProcessor, SiglipImageProcessor, LlavaImageProcessor)."""
        try:
            size, crop = cfg.get("size") or {}, cfg.get("crop_size")
            if isinstance(crop, int):
                crop = {"height": crop, "width": crop}
            return cls(shortest_edge=size.get("shortest_edge"), height=size.get("height"), width=size.get("width"),
                       crop=(crop["height"], crop["width"]) if crop and cfg.get("do_center_crop", True) else None,
                       mean=tuple(cfg.get("image_mean", CLIP_MEAN)), std=tuple(cfg.get("image_std", CLIP_STD)),
                       rescale=cfg.get("rescale_factor", 1 / 255), pad_to_square=bool(cfg.get("do_pad", False)))
        except (AttributeError, KeyError, TypeError) as e:
            raise LlamalabError(f"{where}: unreadable image processor settings ({e})") from None


def read_preprocess(directory, default: Preprocess) -> Preprocess:
    """The checkpoint's `preprocessor_config.json` if it has one, else `default`."""
    file = Path(directory) / "preprocessor_config.json"
    if not file.is_file():
        return default
    try:
        return Preprocess.from_config(read_json(file), file)
    except (OSError, ValueError) as e:
        raise LlamalabError(f"{file}: cannot read JSON ({e})") from None


def open_image(source, *, max_pixels: int = MAX_PIXELS, name: str | None = None) -> Image.Image:
    """A decoded image from a path or bytes; `name` says where it came from in messages."""
    where = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "image")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source)
    except FileNotFoundError:
        raise LlamalabError(f"{where}: no such file; check the path") from None
    except Image.DecompressionBombError:  # Pillow's own check, for a header claiming far more than ours allows
        raise LlamalabError(f"{where}: the image claims more pixels than the limit of {max_pixels}; "
                            "scale the image down first") from None
    except UnidentifiedImageError:
        raise LlamalabError(f"{where}: not an image Pillow can read (PNG, JPEG, WebP, GIF, ...)") from None
    except OSError as e:
        raise LlamalabError(f"{where}: cannot read ({e})") from None
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise LlamalabError(f"{where}: {width}×{height} pixels is over the limit of {max_pixels}; "
                            "scale the image down first")
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise LlamalabError(f"{where}: the image data is damaged or truncated ({e})") from None
    return image


def decode_base64(text: str, where: str, *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of a base64 image (standard alphabet, padding required), its size checked before decoding."""
    if len(text) > (max_bytes + 2) // 3 * 4:
        raise LlamalabError(f"{where}: the image is over {max_bytes // (1024 * 1024)} MiB; send a smaller one")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise LlamalabError(f"{where}: not valid base64") from None


def data_url_bytes(url: str, where: str, *, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """The image bytes of a `data:[<media type>][;base64],<data>` URL (RFC 2397); any other URL is refused,
    since nothing is fetched."""
    scheme = url[:url.find(":") + 1].lower() if ":" in url[:16] else ""
    if scheme != "data:":
        shown = f"{scheme}// URLs are" if scheme in ("http:", "https:") else "that URL is"
        raise LlamalabError(f"{where}: {shown} not accepted: only data: URLs (data:image/png;base64,...) are, "
                            "since this server fetches nothing")
    head, comma, data = url[5:].partition(",")
    if not comma or not head.lower().endswith(";base64"):
        raise LlamalabError(f"{where}: a data: URL must be base64 (data:image/png;base64,...)")
    return decode_base64(data, where, max_bytes=max_bytes)


def to_rgb(image: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8; transparency composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image.convert("RGBA"))
    return np.array(image.convert("RGB"))


def pad_to_square(rgb: np.ndarray, colour: tuple[int, ...]) -> np.ndarray:
    height, width, _ = rgb.shape
    side = max(height, width)
    out = np.empty((side, side, 3), dtype=rgb.dtype)
    out[:] = colour
    top, left = (side - height) // 2, (side - width) // 2
    out[top:top + height, left:left + width] = rgb
    return out


def resize_size(height: int, width: int, p: Preprocess) -> tuple[int, int]:
    if p.shortest_edge is None:
        return p.height, p.width
    short, long = min(height, width), max(height, width)
    new_long = int(p.shortest_edge * long / short)
    return (new_long, p.shortest_edge) if width <= height else (p.shortest_edge, new_long)


def center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) → (height, width, C) around the center; a side shorter than the crop is zero-padded."""
    h, w = x.shape[:2]
    if h < height or w < width:
        big = np.zeros((max(h, height), max(w, width), x.shape[2]), dtype=x.dtype)
        top, left = -(-(big.shape[0] - h) // 2), -(-(big.shape[1] - w) // 2)
        big[top:top + h, left:left + w] = x
        x, h, w = big, *big.shape[:2]
    top, left = (h - height) // 2, (w - width) // 2
    return x[top:top + height, left:left + width]


def preprocess(image: Image.Image, p: Preprocess) -> np.ndarray:
    """The tower's input for one image: float32 (3, H, W)."""
    rgb = to_rgb(image)
    if p.pad_to_square:
        rgb = pad_to_square(rgb, tuple(int(m * 255) for m in p.mean))
    height, width = resize_size(*rgb.shape[:2], p)
    rgb = np.array(Image.fromarray(rgb).resize((width, height), resample=Image.Resampling.BICUBIC))
    if p.crop is not None:
        rgb = center_crop(rgb, *p.crop)
    x = rgb.astype(np.float64) * p.rescale
    x = (x - np.array(p.mean)) / np.array(p.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
