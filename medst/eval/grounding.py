"""Grounding: does a finding word attend to its lesion? (pointing game)

For a report word such as "effusion", the word→patch cross-attention of the
local alignment (Method §5, :class:`medst.losses.LocalAlignment` details)
gives one weight per image patch. The pointing game scores a *hit* when the
centre of the most attended patch lies inside a lesion box of that finding.

Coordinates: boxes are in pixels of the *original* image (x to the right,
y down, continuous, pixel i covering [i, i + 1)), as in the phantom's
``ground_truth/boxes.csv`` (dicom_id, view, finding, x_min, y_min, x_max,
y_max). The model sees a resized, zero-padded, cropped square; a
:class:`PixelAffine` maps between the two, and :func:`letterbox_affine` builds
it for "resize the long side to S, pad centred to S × S, centre-crop C".
Patches are numbered row by row over an (h, w) grid on the model input, as a
ViT orders its tokens; a map of 2N patches holds the frontal view first, then
the lateral view.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from einops import rearrange

__all__ = [
    "FINDINGS",
    "PixelAffine",
    "letterbox_affine",
    "patch_centers",
    "split_views",
    "pointing_hit",
    "chance_hit_rate",
    "GroundingItem",
    "finding_words",
    "finding_positions",
    "load_boxes",
    "pointing_game",
    "plot_attention",
]

FINDINGS = ("effusion", "consolidation", "edema", "pneumothorax", "pneumonia", "cardiomegaly")
BOX_COLUMNS = ("dicom_id", "view", "finding", "x_min", "y_min", "x_max", "y_max")

ArrayLike = Any  # numpy arrays, torch tensors (any device) or nested sequences


def _numpy(x: ArrayLike) -> np.ndarray:
    """A numpy float64 copy of an array or a (possibly CUDA, grad-carrying) tensor."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class PixelAffine:
    """Axis-aligned map original pixels → model input: ``x' = sx·x + ox``, ``y' = sy·y + oy``."""

    sx: float
    sy: float
    ox: float
    oy: float

    def to_model(self, xy: ArrayLike) -> np.ndarray:
        """Points [..., 2] (x, y) in original pixels -> model-input pixels."""
        xy = _numpy(xy)
        return np.stack([xy[..., 0] * self.sx + self.ox, xy[..., 1] * self.sy + self.oy], axis=-1)

    def to_original(self, xy: ArrayLike) -> np.ndarray:
        """Points [..., 2] (x, y) in model-input pixels -> original pixels."""
        xy = _numpy(xy)
        return np.stack([(xy[..., 0] - self.ox) / self.sx, (xy[..., 1] - self.oy) / self.sy], axis=-1)

    def boxes_to_model(self, boxes: ArrayLike) -> np.ndarray:
        """Boxes [K, 4] (x_min, y_min, x_max, y_max) in original pixels -> model-input pixels."""
        boxes = _numpy(boxes).reshape(-1, 4)
        return np.concatenate([self.to_model(boxes[:, :2]), self.to_model(boxes[:, 2:])], axis=1)

    def boxes_to_original(self, boxes: ArrayLike) -> np.ndarray:
        """Boxes [K, 4] in model-input pixels -> original pixels."""
        boxes = _numpy(boxes).reshape(-1, 4)
        return np.concatenate([self.to_original(boxes[:, :2]), self.to_original(boxes[:, 2:])], axis=1)


def letterbox_affine(height: int, width: int, resize: int = 256, crop: int | None = 224) -> PixelAffine:
    """Affine of "resize the long side to ``resize``, pad centred to a square, centre-crop ``crop``".

    Conventions (Method §1 pre-processing): the short side becomes
    ``round(short · resize / long)`` pixels; padding puts ``(resize - new) // 2``
    zero pixels before the image; the centre crop starts at
    ``round((resize - crop) / 2)`` (as ``torchvision.transforms.CenterCrop``).
    ``crop=None`` (or ``crop == resize``) means no crop.

    Args:
        height, width: original image size in pixels (rows, columns).
    Returns:
        :class:`PixelAffine` from original pixels to model-input pixels.
    """
    if min(height, width, resize) <= 0 or (crop is not None and not 0 < crop <= resize):
        raise ValueError(f"letterbox_affine: bad sizes height={height}, width={width}, resize={resize}, crop={crop}")
    scale = resize / max(height, width)
    new_h, new_w = (resize, round(width * scale)) if height >= width else (round(height * scale), resize)
    pad_top, pad_left = (resize - new_h) // 2, (resize - new_w) // 2
    offset = 0 if crop is None else int(round((resize - crop) / 2.0))
    return PixelAffine(sx=new_w / width, sy=new_h / height, ox=pad_left - offset, oy=pad_top - offset)


def patch_centers(grid: tuple[int, int], input_size: int | tuple[int, int]) -> np.ndarray:
    """Centres of the patch cells in model-input pixels.

    Args:
        grid: (h, w) patches per column and row; input_size: model input side
            (or (height, width)).
    Returns:
        [h·w, 2] (x, y), row by row (ViT token order).
    """
    rows, cols = grid
    size_h, size_w = (input_size, input_size) if isinstance(input_size, int) else input_size
    ys = (np.arange(rows) + 0.5) * size_h / rows
    xs = (np.arange(cols) + 0.5) * size_w / cols
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=-1)


def split_views(attention: ArrayLike, grid: tuple[int, int]) -> dict[str, np.ndarray]:
    """Split a patch map [..., P] into views: P = N (frontal) or 2N (frontal, lateral), N = h·w."""
    attention = _numpy(attention)
    n = grid[0] * grid[1]
    if attention.shape[-1] == n:
        return {"frontal": attention}
    if attention.shape[-1] == 2 * n:
        return {"frontal": attention[..., :n], "lateral": attention[..., n:]}
    raise ValueError(
        f"split_views: a patch map must have N = {n} or 2N = {2 * n} entries for grid {grid}, got {attention.shape[-1]}"
    )


def pointing_hit(
    attention: ArrayLike,
    boxes: ArrayLike,
    affine: PixelAffine,
    grid: tuple[int, int],
    input_size: int | tuple[int, int],
) -> bool:
    """One pointing-game trial on one view.

    Args:
        attention: [h·w] or [h, w] patch weights of one view (higher = more attended).
        boxes: [K, 4] (x_min, y_min, x_max, y_max) lesion boxes in original pixels.
        affine: original pixels -> model-input pixels of this image.
    Returns:
        True if the centre of the most attended patch, mapped to original
        pixels, lies inside (or on the border of) one of the boxes.
    """
    attention = _numpy(attention).reshape(-1)
    if attention.size != grid[0] * grid[1]:
        raise ValueError(f"pointing_hit: {attention.size} patch weights do not fit grid {grid}")
    centre = patch_centers(grid, input_size)[int(np.argmax(attention))]
    return bool(_inside(affine.to_original(centre)[None], boxes)[0])


def _inside(points: np.ndarray, boxes: ArrayLike) -> np.ndarray:
    """[M] bool: which points [M, 2] (x, y) lie inside (or on the border of) any box [K, 4]."""
    boxes = _numpy(boxes).reshape(-1, 4)
    x, y = points[:, None, 0], points[:, None, 1]
    return ((boxes[:, 0] <= x) & (x <= boxes[:, 2]) & (boxes[:, 1] <= y) & (y <= boxes[:, 3])).any(axis=1)


def chance_hit_rate(
    boxes: ArrayLike, affine: PixelAffine, grid: tuple[int, int], input_size: int | tuple[int, int]
) -> float:
    """Hit probability of a patch drawn uniformly at random: the fraction of patch centres inside a box."""
    centres = affine.to_original(patch_centers(grid, input_size))
    return float(_inside(centres, boxes).mean())


@dataclass
class GroundingItem:
    """One study for the pointing game.

    Attributes:
        attention: [W, P] word→patch attention (e.g. one row block of
            ``LocalAlignmentOutput.word_to_patch``); P = N or 2N (frontal, lateral).
        words: the W word strings of the report (padding slots may be "" or "[PAD]").
        views: view name ("frontal", "lateral") -> (dicom_id, affine of that image).
    """

    attention: ArrayLike
    words: Sequence[str]
    views: Mapping[str, tuple[str, PixelAffine]] = field(default_factory=dict)


def finding_words(finding: str) -> tuple[str, ...]:
    """Report words that name a finding: "pleural_effusion" -> ("effusion", "effusions")."""
    head = re.split(r"[_\s]+", finding.strip().lower())[-1]
    return (head, head + "s")


def finding_positions(words: Sequence[str], finding: str, vocabulary: Sequence[str] | None = None) -> list[int]:
    """Indices of the words naming ``finding`` (case-insensitive, punctuation stripped)."""
    names = set(vocabulary) if vocabulary is not None else set(finding_words(finding))
    cleaned = [re.sub(r"[^\w]", "", str(word).lower()) for word in words]
    return [i for i, word in enumerate(cleaned) if word in names]


def load_boxes(boxes: str | Path | pd.DataFrame) -> pd.DataFrame:
    """Read and check a boxes table (path to ``boxes.csv`` or a DataFrame)."""
    source = str(boxes) if not isinstance(boxes, pd.DataFrame) else "the boxes DataFrame"
    if not isinstance(boxes, pd.DataFrame):
        path = Path(boxes)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: boxes file not found")
        boxes = pd.read_csv(path, dtype={"dicom_id": str})
    missing = [c for c in BOX_COLUMNS if c not in boxes.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; expected {list(BOX_COLUMNS)}")
    bad = boxes[(boxes.x_max < boxes.x_min) | (boxes.y_max < boxes.y_min)]
    if len(bad):
        raise ValueError(
            f"{source}: {len(bad)} boxes with x_max < x_min or y_max < y_min, first dicom_id {bad.iloc[0].dicom_id}"
        )
    return boxes


def _ratio(hits: float, total: int) -> float:
    return hits / total if total else math.nan


def pointing_game(
    items: Iterable[GroundingItem],
    boxes: str | Path | pd.DataFrame,
    *,
    grid: tuple[int, int],
    input_size: int | tuple[int, int],
    findings: Sequence[str] | None = None,
    vocabulary: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """Pointing game over studies.

    For every study, view and finding that has boxes in that view and is named
    in the report, the rows of the finding's words are averaged into one patch
    map, restricted to the view, and scored with :func:`pointing_hit`.

    Args:
        items: studies (:class:`GroundingItem`).
        boxes: ``boxes.csv`` path or DataFrame (dicom_id, view, finding, x_min, y_min, x_max, y_max).
        grid, input_size: patch grid (h, w) per view and model input size.
        findings: findings to score (default: all in the table).
        vocabulary: finding -> words that name it (default :func:`finding_words`).
    Returns:
        dict with ``hits``, ``total``, ``accuracy`` (NaN when no trial),
        ``chance`` (expected accuracy of a uniformly random patch,
        :func:`chance_hit_rate` averaged over the trials), ``per_finding`` and
        ``per_view`` ({name: {hits, total, accuracy, chance}}).
    """
    table = load_boxes(boxes)
    if findings is not None:
        table = table[table.finding.isin(list(findings))]
    by_image = {
        key: group[["x_min", "y_min", "x_max", "y_max"]].to_numpy(dtype=np.float64)
        for key, group in table.groupby(["dicom_id", "finding"])
    }
    names = sorted(table.finding.unique())
    counts = {"all": [0, 0, 0.0], **{f"f:{f}": [0, 0, 0.0] for f in names}}  # hits, trials, sum of chance
    for item in items:
        maps = split_views(item.attention, grid)
        for finding in names:
            words = None if vocabulary is None else vocabulary.get(finding)
            positions = finding_positions(item.words, finding, words)
            if not positions:
                continue
            for view, (dicom_id, affine) in item.views.items():
                lesion = by_image.get((dicom_id, finding))
                if lesion is None or view not in maps:
                    continue
                score = maps[view][positions].mean(axis=0)
                hit = pointing_hit(score, lesion, affine, grid, input_size)
                chance = chance_hit_rate(lesion, affine, grid, input_size)
                for key in ("all", f"f:{finding}", f"v:{view}"):
                    tally = counts.setdefault(key, [0, 0, 0.0])
                    tally[0] += int(hit)
                    tally[1] += 1
                    tally[2] += chance

    def summary(key: str) -> dict[str, Any]:
        hits, total, chance = counts[key]
        return {"hits": hits, "total": total, "accuracy": _ratio(hits, total), "chance": _ratio(chance, total)}

    return {
        **summary("all"),
        "per_finding": {f: summary(f"f:{f}") for f in names},
        "per_view": {k[2:]: summary(k) for k in counts if k.startswith("v:")},
    }


def plot_attention(
    image: ArrayLike,
    attn_map: ArrayLike,
    boxes: ArrayLike | None = None,
    ax: Any = None,
    title: str | None = None,
    *,
    affine: PixelAffine | None = None,
    alpha: float = 0.45,
    cmap: str = "jet",
) -> Any:
    """Draw a patch attention map as a heatmap over the image, with lesion boxes.

    Args:
        image: model-input image [H, W], [H, W, C] or [C, H, W] (first channel shown).
        attn_map: [h·w] (square grid) or [h, w] patch weights of this view.
        boxes: [K, 4] (x_min, y_min, x_max, y_max) in the image's pixels, or in
            original pixels when ``affine`` is given (then mapped to the image).
        ax: matplotlib axes (a new figure if None); title: axes title.
    Returns:
        the axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    img = _numpy(image)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img[0]
    elif img.ndim == 3:
        img = img[..., 0]
    heat = _numpy(attn_map)
    if heat.ndim == 1:
        side = int(round(math.sqrt(heat.size)))
        if side * side != heat.size:
            raise ValueError(f"plot_attention: {heat.size} weights are not a square grid; pass [h, w]")
        heat = rearrange(heat, "(h w) -> h w", h=side)  # patches row by row
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    height, width = img.shape
    ax.imshow(img, cmap="gray")
    ax.imshow(heat, cmap=cmap, alpha=alpha, extent=(0, width, height, 0), interpolation="bilinear")
    if boxes is not None:
        rects = affine.boxes_to_model(boxes) if affine is not None else _numpy(boxes).reshape(-1, 4)
        for x0, y0, x1, y1 in rects:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="lime", linewidth=1.5))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    if title:
        ax.set_title(title)
    return ax
