"""The image transforms of Method §1: uint8 grey image -> float [3, S, S] for the vision encoder.

Resize the long side and zero-pad to a square of side ``cache_side(S)`` (:func:`medst.data.images.resize_pad`,
what the prepared image cache already holds), crop S × S (random for training, centred for evaluation), scale to
[0, 1] and normalise with mean 0.5, std 0.5, copying the grey channel to three.

- :func:`normalise`: the last step alone, uint8 [..., 1, S, S] -> float [..., 3, S, S] (the
  :class:`~medst.data.dataset.Collator` applies it once per batch);
- :class:`ImageTransform` (:func:`train_transform`, :func:`eval_transform`): the whole chain for one image,
  uint8 [H, W] -> float [3, S, S]; its :meth:`~ImageTransform.crop` stops before normalising.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from medst.data.images import cache_side, resize_pad

try:  # torchvision >= 0.16
    from torchvision.transforms import v2 as _T

    def _to_float() -> Any:
        return _T.ToDtype(torch.float32, scale=True)
except ImportError:  # pragma: no cover - old torchvision
    from torchvision import transforms as _T

    def _to_float() -> Any:
        return _T.ConvertImageDtype(torch.float32)


MEAN, STD = 0.5, 0.5  # Method §1: the same on all three channels
_NORMALISE = _T.Compose([_to_float(), _T.Normalize(mean=[MEAN], std=[STD])])


def normalise(images: Tensor) -> Tensor:
    """uint8 [..., 1, S, S] -> float32 [..., 3, S, S]: (x / 255 - 0.5) / 0.5 (Method §1), grey copied to 3 channels.

    Applied once per batch by the :class:`~medst.data.dataset.Collator` (a handful of large tensor ops instead
    of several small ones per image).
    """
    if images.dtype != torch.uint8 or images.ndim < 3 or images.shape[-3] != 1:
        raise ValueError(f"normalise expects uint8 [..., 1, S, S], got {images.dtype} {tuple(images.shape)}")
    x = _NORMALISE(images)
    return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).contiguous()


class ImageTransform:
    """uint8 [H, W] grey image -> float32 [3, S, S] normalised with mean 0.5, std 0.5 (Method §1).

    An input that is not already ``cache_side(S) × cache_side(S)`` is first resized (long side) and
    zero-padded to that square; then a random crop (``train=True``) or the centre crop of side S is taken.
    The random crop draws from torch's global generator (seeded per DataLoader worker).
    :meth:`crop` stops before normalising (uint8 [1, S, S]), which is what the Dataset returns.
    """

    def __init__(self, image_size: int, train: bool):
        self.image_size, self.train = int(image_size), bool(train)
        self.side = cache_side(self.image_size)
        self._crop = _T.RandomCrop(self.image_size) if train else _T.CenterCrop(self.image_size)

    def crop(self, img: np.ndarray) -> Tensor:
        """uint8 [H, W] -> uint8 [1, S, S]: resize-and-pad to the cache side if needed, then crop."""
        if img.ndim != 2:
            raise ValueError(f"ImageTransform expects a uint8 [H, W] image, got shape {tuple(img.shape)}")
        if img.shape != (self.side, self.side):
            img = resize_pad(img, self.side)
        x = torch.from_numpy(np.ascontiguousarray(img, dtype=np.uint8))[None]  # [1, side, side] uint8
        return self._crop(x).contiguous()  # [1, S, S] uint8

    def __call__(self, img: np.ndarray) -> Tensor:
        return normalise(self.crop(img))  # [3, S, S] float32

    def __repr__(self) -> str:
        return f"ImageTransform(image_size={self.image_size}, train={self.train}, side={self.side})"


def train_transform(image_size: int) -> ImageTransform:
    """Resize-and-pad, random crop of ``image_size``, normalise: uint8 [H, W] -> float [3, S, S]."""
    return ImageTransform(image_size, train=True)


def eval_transform(image_size: int) -> ImageTransform:
    """Resize-and-pad, centre crop of ``image_size``, normalise: uint8 [H, W] -> float [3, S, S]."""
    return ImageTransform(image_size, train=False)
