"""Geometry of the phantom: ellipsoids, image grids and exact line integrals along the rays of a view.

World coordinates (unit ≈ half the chest width): x points to the patient's left, y to the patient's back,
z to the head. A frontal image (PA or AP) looks along y: columns follow x, so the patient's right lies on
the viewer's left as radiographs are displayed, and rows follow -z. A lateral image looks along x: columns
follow y (anterior on the viewer's left), rows follow -z.

The line integral of an ellipsoid along a ray is analytic: for ``(p - c)ᵀ A (p - c) <= 1`` and rays along
axis ``e``, a ray enters and leaves at ``mid ± h`` with

    k = A_ee,   b = A_e· u,   mid = c_e - b / k,   h = sqrt(b² - k (uᵀ A u - 1)) / k,

where ``u`` is the pixel's offset from the centre in the image plane. A projection is therefore a handful of
vectorised numpy operations per object, and no voxel volume is ever built. Unions and differences of
ellipsoids (a lung minus the diaphragm dome and the heart) are exact too, by interval arithmetic per ray.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

VIEWS = ("frontal", "lateral")
RAY_AXIS = {"frontal": 1, "lateral": 0}  # the axis each view integrates along
COL_AXIS = {"frontal": 0, "lateral": 1}  # the axis image columns follow (rows always follow -z)
FOV_HEIGHT = 2.3  # world units covered by the long side of an image (magnification 1)

Window = tuple[slice, slice]
Interval = tuple[np.ndarray, np.ndarray]

# ----------------------------------------------------------------------------------------------------------
# geometry


@dataclass(frozen=True)
class Ellipsoid:
    """``{p : (p - center)ᵀ A (p - center) <= 1}`` with ``A = R diag(axes⁻²) Rᵀ``; ``half`` [3] is the
    half-size of its axis-aligned bounding box."""

    center: np.ndarray  # [3]
    A: np.ndarray  # [3, 3] symmetric positive definite
    half: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.half is None:
            object.__setattr__(self, "half", np.sqrt(np.diag(np.linalg.inv(self.A))))

    @staticmethod
    def make(center: Sequence[float], axes: Sequence[float], tilt_y: float = 0.0, tilt_x: float = 0.0) -> Ellipsoid:
        """Semi-axes ``axes`` rotated by ``tilt_y`` radians about y (in the frontal plane), then by
        ``tilt_x`` about x (in the lateral plane)."""
        cy, sy = np.cos(tilt_y), np.sin(tilt_y)
        cx, sx = np.cos(tilt_x), np.sin(tilt_x)
        rot = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]) @ np.array([[cy, 0, -sy], [0, 1, 0], [sy, 0, cy]])
        a = np.diag(1.0 / np.square(np.asarray(axes, dtype=np.float64)))
        return Ellipsoid(np.asarray(center, dtype=np.float64), rot @ a @ rot.T)

    def scaled(self, factor: float, about: Sequence[float] | None = None) -> Ellipsoid:
        """Scaled by ``factor`` about the point ``about`` (default: the centre)."""
        pivot = self.center if about is None else np.asarray(about, dtype=np.float64)
        return Ellipsoid(pivot + factor * (self.center - pivot), self.A / factor**2, self.half * factor)

    def stretched(self, factors: Sequence[float]) -> Ellipsoid:
        """Scaled along the world axes about the centre by [3] ``factors``."""
        s = np.diag(1.0 / np.asarray(factors, dtype=np.float64))
        return Ellipsoid(self.center, s @ self.A @ s)

    def shifted(self, offset: Sequence[float]) -> Ellipsoid:
        return Ellipsoid(self.center + np.asarray(offset, dtype=np.float64), self.A, self.half)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """[N, 3] points -> [N] bool."""
        x, y, z = (points[:, j] - self.center[j] for j in range(3))
        a = self.A
        q = (
            a[0, 0] * x * x
            + a[1, 1] * y * y
            + a[2, 2] * z * z
            + 2 * (a[0, 1] * x * y + a[0, 2] * x * z + a[1, 2] * y * z)
        )
        return q <= 1.0

    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box: (low [3], high [3])."""
        return self.center - self.half, self.center + self.half


@dataclass(frozen=True)
class Grid:
    """World coordinates of one image's pixel centres: ``cols`` [W] (increasing) and ``rows`` [H]
    (decreasing z), spaced by ``pitch``."""

    view: str
    cols: np.ndarray
    rows: np.ndarray
    pitch: float

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), len(self.cols)

    def window(self, low: np.ndarray, high: np.ndarray) -> Window:
        """Row and column slices of the pixels whose centres may fall in the world box ``low``..``high``."""
        ca = COL_AXIS[self.view]
        c0 = int(np.floor((low[ca] - self.cols[0]) / self.pitch))
        c1 = int(np.ceil((high[ca] - self.cols[0]) / self.pitch)) + 1
        r0 = int(np.floor((self.rows[0] - high[2]) / self.pitch))
        r1 = int(np.ceil((self.rows[0] - low[2]) / self.pitch)) + 1
        h, w = self.shape
        return slice(min(max(r0, 0), h), min(max(r1, 0), h)), slice(min(max(c0, 0), w), min(max(c1, 0), w))

    def to_pixels(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[N, 3] world points -> (column, row) float pixel indices of their projections."""
        ca = COL_AXIS[self.view]
        return (points[:, ca] - self.cols[0]) / self.pitch, (self.rows[0] - points[:, 2]) / self.pitch


def make_grid(view: str, shape: tuple[int, int], center: Sequence[float], magnification: float) -> Grid:
    """Pixel grid of an image of ``shape`` = (H, W) aimed at the world point ``center`` [3]."""
    if view not in VIEWS:
        raise ValueError(f"phantom.geometry.make_grid: unknown view {view!r}, expected one of {VIEWS}")
    h, w = shape
    pitch = FOV_HEIGHT / max(h, w) / magnification
    cols = center[COL_AXIS[view]] + (np.arange(w) - (w - 1) / 2) * pitch
    rows = center[2] - (np.arange(h) - (h - 1) / 2) * pitch
    return Grid(view, cols.astype(np.float32), rows.astype(np.float32), float(pitch))


def window_empty(win: Window) -> bool:
    """Whether a (row, column) window holds no pixel."""
    return win[0].stop <= win[0].start or win[1].stop <= win[1].start


def window_overlap(a: Window, b: Window) -> Window | None:
    """Intersection of two (row, column) windows, or None when empty."""
    out = (
        slice(max(a[0].start, b[0].start), min(a[0].stop, b[0].stop)),
        slice(max(a[1].start, b[1].start), min(a[1].stop, b[1].stop)),
    )
    return None if window_empty(out) else out


def ray_interval(ell: Ellipsoid, grid: Grid, win: Window) -> Interval:
    """Entry and exit coordinates (along the ray axis) of the rays of ``grid[win]`` through ``ell``.

    With u = (u_i, u_z) the pixel's in-plane offset from the centre, ``disc = b² - k (uᵀAu - 1)`` is a
    quadratic α u_i² + 2β u_i u_z + γ u_z² + k, so it is built from one outer product and two 1-D terms.
    Returns two float32 arrays of the window's shape; a ray that misses gets an empty interval (lo = hi).
    """
    e, i = RAY_AXIS[grid.view], COL_AXIS[grid.view]
    a = ell.A
    k = float(a[e, e])
    aei, aez = float(a[e, i]), float(a[e, 2])
    alpha, beta, gamma = aei * aei - k * float(a[i, i]), aei * aez - k * float(a[i, 2]), aez * aez - k * float(a[2, 2])
    ui = grid.cols[win[1]] - np.float32(ell.center[i])
    uz = grid.rows[win[0]] - np.float32(ell.center[2])
    disc = np.multiply.outer((2 * beta) * uz, ui)
    disc += (alpha * ui * ui)[None, :]
    disc += (gamma * uz * uz + k)[:, None]
    np.maximum(disc, 0.0, out=disc)
    np.sqrt(disc, out=disc)
    disc *= 1.0 / k
    mid = np.add.outer((-aez / k) * uz, float(ell.center[e]) - (aei / k) * ui)
    return mid - disc, mid + disc


def chord(ell: Ellipsoid, grid: Grid, win: Window) -> np.ndarray:
    """Length of each ray of ``grid[win]`` inside ``ell``."""
    lo, hi = ray_interval(ell, grid, win)
    return hi - lo


def intersect(*intervals: Interval) -> Interval:
    """Per-ray intersection of intervals (empty where lo >= hi)."""
    lo = intervals[0][0]
    hi = intervals[0][1]
    for other in intervals[1:]:
        lo, hi = np.maximum(lo, other[0]), np.minimum(hi, other[1])
    return lo, hi


def union_length(intervals: Sequence[Interval], within: Interval | None = None) -> np.ndarray:
    """Per-ray length of the union of a few intervals (each clipped to ``within`` if given), by
    inclusion–exclusion: ``|∪ I| = Σ_S (-1)^(|S|+1) |∩_S I|`` over non-empty subsets S (intersections of
    intervals are intervals, so every term is exact)."""
    if within is not None:
        intervals = [intersect(c, within) for c in intervals]
    total = None
    stack = [((), None)]  # depth-first over subsets, reusing each parent's intersection
    while stack:
        members, inter = stack.pop()
        start = members[-1] + 1 if members else 0
        for j in range(start, len(intervals)):
            cur = intervals[j] if inter is None else intersect(inter, intervals[j])
            term = np.maximum(cur[1] - cur[0], 0.0)
            if total is None:
                total = term
            elif len(members) % 2 == 0:
                total = total + term
            else:
                total = total - term
            stack.append((members + (j,), cur))
    return total


def space_length(base: Interval, cuts: Sequence[Interval]) -> np.ndarray:
    """Length of the interval ``base`` minus the union of ``cuts``, per ray."""
    out = np.maximum(base[1] - base[0], 0.0)
    return out - union_length(cuts, within=base) if cuts else out
