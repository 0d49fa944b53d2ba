"""Reading radiographs from JPEG/PNG files and the resize-and-pad step of Method §1.

Every image Med-ST sees is first resized so that its long side is ``side`` pixels and then zero-padded,
centred, to a ``side × side`` square (``side`` = 256 for a 224 crop; ``cache_side(image_size)`` in general).
``medst prepare`` stores exactly this array in its image cache, so training never decodes a full-size image.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageReadError(OSError):
    """An image file that is missing, unreadable, corrupt or truncated.

    Attributes: ``path`` (the file), ``reason`` (what went wrong), ``missing`` (True when the file does not exist).
    """

    def __init__(self, path: str | os.PathLike, reason: str, missing: bool = False):
        self.path = str(path)
        self.reason = reason
        self.missing = missing
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep the attributes when sent back from a worker process
        return (type(self), (self.path, self.reason, self.missing))


def cache_side(image_size: int) -> int:
    """Side of the resized-and-padded image for a crop of ``image_size``: 256 for 224 (Method §1)."""
    return round(image_size * 256 / 224)


def _to_uint8(im: Image.Image) -> np.ndarray:
    """Any PIL image -> uint8 [H, W] grey levels (16-bit images are scaled, colour images converted)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im, dtype=np.uint16)
        return np.round(arr / 257.0).astype(np.uint8)
    if im.mode in ("I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(np.round(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if im.mode != "L":
        im = im.convert("L")
    return np.asarray(im, dtype=np.uint8)


def read_image(path: str | os.PathLike, reduce_to: int | None = None) -> np.ndarray:
    """Decode a JPEG/PNG radiograph into uint8 [H, W].

    ``reduce_to``: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling) as long as
    its long side stays >= ``reduce_to``; this is several times faster than a full decode for a 3000-pixel
    radiograph that will be resized to 256 anyway. The whole file is still decoded, so truncation is detected.

    Raises :class:`ImageReadError` naming the file when it is missing or cannot be decoded completely.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            if reduce_to and im.format == "JPEG":
                w, h = im.size
                long = max(w, h)
                if long > reduce_to:
                    # draft() keeps both sides >= the request: ask for the aspect-preserving size of the long side.
                    im.draft("L", (math.ceil(reduce_to * w / long), math.ceil(reduce_to * h / long)))
            im.load()
            arr = _to_uint8(im)
    except FileNotFoundError:
        raise ImageReadError(path, "file not found", missing=True) from None
    except UnidentifiedImageError:
        raise ImageReadError(path, "not a readable image file (corrupt or wrong format)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"cannot decode: {exc}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise ImageReadError(path, f"expected a single-channel image, got shape {arr.shape}")
    return arr


def resize_pad(img: np.ndarray, side: int) -> np.ndarray:
    """uint8 [H, W] -> uint8 [side, side]: long side resized to ``side`` (bilinear, antialiased), zero-padded.

    The resized image is centred; the padding is split as ``(side - h) // 2`` before and the rest after.
    """
    if img.ndim != 2:
        raise ValueError(f"resize_pad expects a [H, W] grey image, got shape {tuple(img.shape)}")
    if side <= 0:
        raise ValueError(f"resize_pad: side must be positive, got {side}")
    h, w = img.shape
    scale = side / max(h, w)
    nh, nw = max(1, min(side, round(h * scale))), max(1, min(side, round(w * scale)))
    if (nh, nw) != (h, w):
        img = np.asarray(
            Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).resize((nw, nh), Image.Resampling.BILINEAR)
        )
    out = np.zeros((side, side), dtype=np.uint8)
    top, left = (side - nh) // 2, (side - nw) // 2
    out[top : top + nh, left : left + nw] = img
    return out


def load_resized(path: str | os.PathLike, side: int) -> np.ndarray:
    """``resize_pad(read_image(path, reduce_to=side), side)``: what the cache stores for one file."""
    return resize_pad(read_image(path, reduce_to=side), side)
