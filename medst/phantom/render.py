"""Render phantom radiographs: project one patient's 3-D anatomy and lesions into a frontal or lateral image.

Attenuation ``P`` along each ray is measured relative to soft tissue (1 per unit length): lung parenchyma
0.2, air 0, bone 2. It adds up the exact line integrals of ``medst.phantom.geometry`` over the objects of
``medst.phantom.anatomy``: the body, minus the lungs' air space (each lung minus its dome, the heart and the
aortic knob), plus bones, ribs and vessels. Each lesion's change of ``P`` is kept apart, so that its
visibility and its box can be measured in every view (Method §1). The displayed image is

    255 · clip((1 - exp(-k P) - lo) / (hi - lo), 0, 1) ** gamma

after a small detector blur, plus Gaussian noise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from medst.phantom.anatomy import BONE_EXTRA, LUNG_DENSITY, SIDES, Anatomy, Lesion, Ribs
from medst.phantom.geometry import (
    COL_AXIS,
    RAY_AXIS,
    Ellipsoid,
    Grid,
    Window,
    chord,
    intersect,
    make_grid,
    ray_interval,
    space_length,
    union_length,
    window_empty,
    window_overlap,
)

VISIBLE_LEVELS = 2.5  # a lesion is visible in a view when it changes some pixel by >= this many grey levels


class Box(NamedTuple):
    """A lesion's box in pixel edges (pixel i covers [i, i + 1)), as ground_truth/boxes.csv stores it."""

    x_min: int
    y_min: int
    x_max: int
    y_max: int


@dataclass(frozen=True)
class Exposure:
    """Per-image acquisition: positioning, inspiration, exposure curve, noise."""

    shift: tuple[float, float, float] = (0.0, 0.0, 0.0)  # aim point relative to the chest
    magnification: float = 1.0
    dome_shift: float = 0.0  # > 0: poorer inspiration (domes higher)
    k: float = 2.0  # exposure: I = 1 - exp(-k P)
    lo: float = 0.2  # display window on I
    hi: float = 1.0
    gamma: float = 0.75
    noise: float = 2.5  # grey levels (std) of additive noise
    blur: float = 0.6  # detector blur in pixels (Gaussian sigma)


def default_exposure(view: str) -> Exposure:
    """Typical settings: laterals pass through more tissue, so they get a softer curve and are framed closer."""
    return Exposure() if view == "frontal" else Exposure(k=1.0, lo=0.2, gamma=1.0, magnification=1.15)


@dataclass
class ViewRender:
    """One rendered view: ``image`` [H, W] uint8 (with noise), ``clean`` [H, W] noise-free grey levels,
    ``attenuation`` [H, W] the line integrals ``P`` behind them, and per lesion the change of ``clean``
    (grey levels) that the lesion alone makes (``lesion_delta``) for its visibility and box."""

    image: np.ndarray
    clean: np.ndarray
    attenuation: np.ndarray
    lesions: list[Lesion]
    lesion_delta: list[np.ndarray]
    heart_boxes: dict[int, Box | None] = field(default_factory=dict)

    def visible(self, j: int) -> bool:
        """Whether lesion ``j`` changes some pixel by at least VISIBLE_LEVELS grey levels."""
        return float(np.abs(self.lesion_delta[j]).max(initial=0.0)) >= VISIBLE_LEVELS

    def box(self, j: int) -> Box | None:
        """The :class:`Box` (x_min, y_min, x_max, y_max) of lesion ``j`` in pixel edges, or None when it is not
        visible in this view. Fluid: where it changes the image (where it makes it denser for fluid that
        displaces the lung base); pneumothorax: the lucent gap; cardiomegaly: the cardiac silhouette above the
        diaphragm."""
        if not self.visible(j):
            return None
        les = self.lesions[j]
        if les.kind == "heart":
            return self.heart_boxes.get(j)
        if les.kind == "ptx":
            d = -self.lesion_delta[j]
        elif les.displace:  # the fluid itself, not the air space it pushed forward
            d = np.maximum(self.lesion_delta[j], 0.0)
        else:
            d = np.abs(self.lesion_delta[j])
        mask = d >= max(0.5 * VISIBLE_LEVELS, (0.35 if les.kind == "ptx" else 0.15) * float(d.max()))
        if not mask.any():
            return None
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        return Box(int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def _gauss_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes with edge padding; [..., H, W] -> [..., H, W]."""
    if sigma <= 0:
        return img
    r = max(1, int(np.ceil(2.5 * sigma)))
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w = (w / w.sum()).astype(np.float32)
    h, wd = img.shape[-2:]
    pad = [(0, 0)] * (img.ndim - 2)
    p = np.pad(img, pad + [(r, r), (0, 0)], mode="edge")
    out = w[0] * p[..., 0:h, :]
    for j in range(1, 2 * r + 1):
        out += w[j] * p[..., j : j + h, :]
    p = np.pad(out, pad + [(0, 0), (r, r)], mode="edge")
    out = w[0] * p[..., 0:wd]
    for j in range(1, 2 * r + 1):
        out += w[j] * p[..., j : j + wd]
    return out


def _splat(grid: Grid, points: np.ndarray, mass: np.ndarray) -> np.ndarray:
    """Project point masses ([N, 3], [N]) into the image by bilinear splatting (attenuation per pixel)."""
    h, w = grid.shape
    c, r = grid.to_pixels(points)
    c0, r0 = np.floor(c).astype(np.int64), np.floor(r).astype(np.int64)
    fc, fr = c - c0, r - r0
    m = mass / grid.pitch**2
    rr = np.concatenate([r0, r0, r0 + 1, r0 + 1])
    cc = np.concatenate([c0, c0 + 1, c0, c0 + 1])
    wt = np.concatenate([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc]) * np.tile(m, 4)
    ok = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
    return np.bincount(rr[ok] * w + cc[ok], weights=wt[ok], minlength=h * w).reshape(h, w).astype(np.float32)


def _render_ribs(grid: Grid, ribs: Ribs, out: np.ndarray) -> None:
    """Add the line integrals of the ribs to ``out`` in place.

    Along each monotone run of a projected centre line, a ray at distance d from it crosses the tube over
    ``2 sqrt(r² - d²) / sin φ``. Every (run, column) pair is handled at once: one searchsorted over the
    runs' samples (offset per run so that they form one increasing sequence) interpolates the centre line,
    and one bincount scatters the few rows each column touches."""
    runs = ribs.view_runs(grid.view)
    h, w = grid.shape
    x, start, stop = runs["x"], runs["start"], runs["stop"]
    c0 = np.maximum(np.ceil((x[start] - grid.cols[0]) / grid.pitch), 0).astype(np.int64)
    c1 = np.minimum(np.floor((x[stop - 1] - grid.cols[0]) / grid.pitch) + 1, w).astype(np.int64)
    length = np.maximum(c1 - c0, 0)
    if length.sum() == 0:
        return
    run = np.repeat(np.arange(len(start)), length)
    col = c0[run] + np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length)
    offset = 64.0  # > any coordinate span: run r's samples live in [64 r - 32, 64 r + 32]
    sample_run = np.repeat(np.arange(len(start)), stop - start)
    j = np.searchsorted(x + offset * sample_run, grid.cols[col] + offset * run)
    j = np.clip(j, start[run] + 1, stop[run] - 1)
    f = (grid.cols[col] - x[j - 1]) / np.maximum(x[j] - x[j - 1], 1e-9)
    f = np.clip(f, 0.0, 1.0)
    zc, amp, slope = ((1 - f) * runs[k][j - 1] + f * runs[k][j] for k in ("z", "amp", "slope"))
    half = runs["radius"][run] * np.sqrt(1 + np.minimum(slope * slope, 9.0)) / grid.pitch
    rowf = (grid.rows[0] - zc) / grid.pitch
    reach = int(np.ceil(half.max())) + 1
    r = np.floor(rowf).astype(np.int64)[:, None] + np.arange(-reach + 1, reach + 1)[None, :]
    d = (r - rowf[:, None]) / half[:, None]
    val = (amp * runs["radius"][run])[:, None] * np.sqrt(np.maximum(1 - d * d, 0.0))
    ok = (r >= 0) & (r < h) & (val > 0)
    c = np.broadcast_to(col[:, None], r.shape)
    out += np.bincount(r[ok] * w + c[ok], weights=val[ok], minlength=h * w).reshape(h, w).astype(np.float32)


def _render_spine(grid: Grid, spine: np.ndarray, out: np.ndarray) -> None:
    """Add the chords of the axis-aligned vertebral bodies ([n, 6]: centre, semi-axes) to ``out``, all at once
    over the column strip they cover: ``2 a_ray sqrt(1 - (u / a_col)² - (v / a_z)²)``."""
    e, ca = RAY_AXIS[grid.view], COL_AXIS[grid.view]
    low = spine[:, :3] - spine[:, 3:]
    high = spine[:, :3] + spine[:, 3:]
    rows, cols = grid.window(low.min(0), high.max(0))
    if rows.stop <= rows.start or cols.stop <= cols.start:
        return
    u = (grid.cols[cols][None, None, :] - spine[:, ca, None, None]) / spine[:, 3 + ca, None, None]
    v = (grid.rows[rows][None, :, None] - spine[:, 2, None, None]) / spine[:, 5, None, None]
    q = np.maximum(1.0 - u * u - v * v, 0.0)
    out[rows, cols] += (BONE_EXTRA * 2 * spine[:, 3 + e, None, None] * np.sqrt(q)).sum(axis=0).astype(np.float32)


def _fluid_length(
    lung: Ellipsoid, cuts: Sequence[Ellipsoid], blob: Ellipsoid, grid: Grid, win: Window, ss: int
) -> np.ndarray:
    """Length of (lung minus cuts) ∩ blob along the rays of ``grid[win]``, averaged over ``ss × ss`` sub-rays
    per pixel (a thin blob would otherwise fall between pixel centres)."""
    if ss > 1:
        off = (np.arange(ss) - (ss - 1) / 2) / ss * grid.pitch
        cols = (grid.cols[win[1]][:, None] + off[None, :]).ravel()
        rows = (grid.rows[win[0]][:, None] - off[None, :]).ravel()
        grid = Grid(grid.view, cols.astype(np.float32), rows.astype(np.float32), grid.pitch / ss)
        win = (slice(0, len(rows)), slice(0, len(cols)))
    li = ray_interval(lung, grid, win)
    out = space_length(intersect(li, ray_interval(blob, grid, win)), [ray_interval(c, grid, win) for c in cuts])
    if ss > 1:
        out = out.reshape(len(grid.rows) // ss, ss, len(grid.cols) // ss, ss).mean(axis=(1, 3))
    return out


def _display(p: np.ndarray, ex: Exposure) -> np.ndarray:
    """Attenuation -> noise-free grey levels (float, 0..255)."""
    v = np.clip((1.0 - np.exp(-ex.k * p) - ex.lo) / (ex.hi - ex.lo), 0.0, 1.0)
    return 255.0 * (v**ex.gamma if ex.gamma != 1.0 else v)


def _vessel_weights(anatomy: Anatomy, lesion: Lesion) -> np.ndarray:
    """Factor [N] by which ``lesion`` changes each vessel segment's contrast: fluid hides the vessels inside
    it, a pneumothorax and a larger heart push them away."""
    pts = anatomy.vessels[:, :3]
    w = np.ones(len(pts))
    if lesion.kind == "fluid":
        for b in lesion.blobs:
            w[b.contains(pts)] = 1 - lesion.fill
    elif lesion.kind == "ptx":
        shrunk = anatomy.lungs[lesion.side].scaled(lesion.factor, lesion.pivot)
        w[(anatomy.vessel_side == SIDES.index(lesion.side)) & ~shrunk.contains(pts)] = 0.0
    elif lesion.kind == "heart":
        w[lesion.heart.contains(pts)] = 0.0
    return w


def render_view(
    anatomy: Anatomy,
    lesions: Sequence[Lesion],
    view: str,
    shape: tuple[int, int],
    exposure: Exposure,
    noise_rng: np.random.Generator | None = None,
) -> ViewRender:
    """Project the patient with ``lesions`` into one ``view`` image of ``shape`` = (H, W).

    Returns a :class:`ViewRender`: the uint8 image (noise added when ``noise_rng`` is given), the noise-free
    grey levels, and each lesion's own contribution to them (for visibility and boxes).
    """
    ex = exposure
    grid = make_grid(view, shape, anatomy.center + np.asarray(ex.shift), ex.magnification)
    h, w = shape
    full = (slice(0, h), slice(0, w))
    P = union_length([ray_interval(b, grid, full) for b in anatomy.body])
    for sign, objects in ((BONE_EXTRA, anatomy.bones), (-1.0, anatomy.air)):
        for obj in objects:
            win = grid.window(*obj.extent())
            if not window_empty(win):
                P[win] += sign * chord(obj, grid, win)
    _render_spine(grid, anatomy.spine, P)
    _render_ribs(grid, anatomy.ribs, P)

    deltas = [np.zeros((h, w), np.float32) for _ in lesions]
    lung_gap = 1.0 - LUNG_DENSITY
    for side in SIDES:
        lung = anatomy.lungs[side]
        win = grid.window(*lung.extent())
        if window_empty(win):
            continue
        cut_shapes = anatomy.cuts(side, ex.dome_shift)
        li = ray_interval(lung, grid, win)
        cuts = [ray_interval(c, grid, win) for c in cut_shapes]
        space = space_length(li, cuts)
        P[win] -= lung_gap * space
        for j, les in enumerate(lesions):
            if les.kind == "fluid" and les.side == side:
                for b in les.blobs:
                    low, high = b.extent()
                    bwin = window_overlap(win, grid.window(low, high))
                    if bwin is None:
                        continue
                    ca = COL_AXIS[view]
                    ss = 4 if min(high[ca] - low[ca], high[2] - low[2]) < 4 * grid.pitch else 1
                    deltas[j][bwin] += les.fill * lung_gap * _fluid_length(lung, cut_shapes, b, grid, bwin, ss)
                    if les.displace:
                        # the lung base pushed forward: the same air space, moved by ``displace`` along y,
                        # replaces soft tissue (along y, i.e. on frontal rays, this cancels the fluid)
                        move = (0.0, les.displace, 0.0)
                        m_lung, m_blob = lung.shifted(move), b.shifted(move)
                        mwin = window_overlap(grid.window(*m_lung.extent()), grid.window(*m_blob.extent()))
                        if mwin is not None:
                            deltas[j][mwin] -= (
                                les.fill
                                * lung_gap
                                * _fluid_length(m_lung, [c.shifted(move) for c in cut_shapes], m_blob, grid, mwin, ss)
                            )
            elif les.kind == "ptx" and les.side == side:
                # the lung collapses towards its root keeping its mass (denser by factor⁻³) and leaves a
                # pleural air gap; the visceral pleura shows as a thin line where air lies beyond it
                inner = space_length(intersect(li, ray_interval(lung.scaled(les.factor, les.pivot), grid, win)), cuts)
                core = space_length(
                    intersect(li, ray_interval(lung.scaled(0.97 * les.factor, les.pivot), grid, win)), cuts
                )
                gap = space - inner
                deltas[j][win] += LUNG_DENSITY * (inner / les.factor**3 - space) + 1.2 * (inner - core) * np.clip(
                    gap / 0.05, 0.0, 1.0
                )
            elif les.kind == "heart":
                big = [ray_interval(c, grid, win) for c in anatomy.cuts(side, ex.dome_shift, les.heart)]
                deltas[j][win] += lung_gap * (space - space_length(li, big))

    # pulmonary vessels: only the segments lying in air space at this inspiration
    pts = anatomy.vessels[:, :3]
    keep = np.ones(len(pts), bool)
    for j_side, side in enumerate(SIDES):
        on = anatomy.vessel_side == j_side
        for c in anatomy.cuts(side, ex.dome_shift):
            keep[on] &= ~c.contains(pts[on])
    mass = anatomy.vessels[:, 3] * keep
    P += _splat(grid, pts, mass)
    for j, les in enumerate(lesions):
        wv = _vessel_weights(anatomy, les)
        changed = np.flatnonzero((wv != 1) & keep)
        if len(changed):
            deltas[j] += _splat(grid, pts[changed], mass[changed] * (wv[changed] - 1))

    layers = _gauss_blur(np.stack([P, *deltas]), ex.blur)
    total = layers.sum(axis=0)
    clean = _display(total, ex)
    lesion_delta = [clean - _display(total - d, ex) for d in layers[1:]]
    img = clean
    if noise_rng is not None and ex.noise > 0:
        img = clean + np.float32(ex.noise) * noise_rng.standard_normal(clean.shape, dtype=np.float32)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    heart_boxes = {
        j: _silhouette_box(les.heart, anatomy, grid, ex.dome_shift)
        for j, les in enumerate(lesions)
        if les.kind == "heart"
    }
    return ViewRender(image, clean.astype(np.float32), total, list(lesions), lesion_delta, heart_boxes)


def _silhouette_box(heart: Ellipsoid, anatomy: Anatomy, grid: Grid, dome_shift: float) -> Box | None:
    """Pixel box of the heart's projection above the higher diaphragm dome, clipped to the image."""
    ca = COL_AXIS[grid.view]
    low, high = heart.extent()
    floor = max(d.extent()[1][2] for d in anatomy.domes.values()) + dome_shift
    h, w = grid.shape
    x0 = int(np.clip(np.floor((low[ca] - grid.cols[0]) / grid.pitch + 0.5), 0, w))
    x1 = int(np.clip(np.ceil((high[ca] - grid.cols[0]) / grid.pitch + 0.5), 0, w))
    y0 = int(np.clip(np.floor((grid.rows[0] - high[2]) / grid.pitch + 0.5), 0, h))
    y1 = int(np.clip(np.ceil((grid.rows[0] - max(low[2], floor)) / grid.pitch + 0.5), 0, h))
    return Box(x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None
