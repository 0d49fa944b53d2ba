"""One patient's anatomy and findings as 3-D objects for the phantom (chapter 1 of the book).

Body (thorax and abdomen), lungs, diaphragm domes, heart, aortic knob, vertebrae, clavicles, trachea and
gastric bubble are ellipsoids; ribs are thin tubes along 3-D hoops; pulmonary vessels are short segments
along random walks out of the hila. Sizes and positions vary per patient. Findings are 3-D lesions whose size
follows a severity in (0, 1]: fluid filling lung space (pleural effusion from the posterior recess upward,
lobe-shaped consolidation, patchy pneumonia, perihilar edema), a collapsing lung with a pleural air gap
(pneumothorax) or a larger heart (cardiomegaly). ``medst.phantom.render`` projects all of it into either view.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medst.phantom.geometry import COL_AXIS, RAY_AXIS, Ellipsoid

SIDES = ("right", "left")
_SIGN = {"right": -1.0, "left": 1.0}
LUNG_DENSITY = 0.2  # parenchyma, relative to soft tissue (air 0, soft tissue 1)
BONE_EXTRA = 1.0  # bone = soft tissue + 1
LATERAL_ONLY_MAX = 0.2  # pleural effusions up to this severity lie in the posterior recess only ...
POSTERIOR_LAYER = 0.08  # ... at least this deep (half-extent along y, the frontal rays), and push the lung
# base forward (``Lesion.displace``) so that no frontal ray sees them


@dataclass
class Ribs:
    """Thin bony tubes (ribs) along 3-D polylines: ``points`` [n_ribs, n, 3], per-rib ``radius`` [n_ribs]
    and extra ``density``."""

    points: np.ndarray
    radius: np.ndarray
    density: float
    _runs: dict = field(default_factory=dict, repr=False)

    def view_runs(self, view: str) -> dict[str, np.ndarray]:
        """The projected centre lines for ``view`` split into runs monotone in the column coordinate,
        concatenated: per sample ``x`` (column coordinate, increasing within a run), ``z``, ``amp`` (line
        integral through the tube's axis per unit radius, 2 · density / sin φ, φ the angle between tube and
        ray, clamped) and
        ``slope`` dz/dx; per run ``start``/``stop`` sample indices and ``radius``. Cached per view."""
        if view not in self._runs:
            e, ca = RAY_AXIS[view], COL_AXIS[view]
            t = np.gradient(self.points, axis=1)
            sin_phi = np.sqrt(np.maximum(1 - (t[..., e] / np.linalg.norm(t, axis=-1)) ** 2, 0.0))
            amp = self.density * 2 / np.maximum(sin_phi, 0.5) * np.ones_like(self.radius)[:, None]
            slope = t[..., 2] / np.where(np.abs(t[..., ca]) > 1e-9, t[..., ca], 1e-9)
            xs, zs = self.points[..., ca], self.points[..., 2]
            parts: dict[str, list] = {k: [] for k in ("x", "z", "amp", "slope", "start", "stop", "radius")}
            n = 0
            for r in range(len(xs)):
                sign = np.sign(np.diff(xs[r]))
                breaks = np.flatnonzero(sign[1:] != sign[:-1]) + 1
                for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, xs.shape[1] - 1]):
                    idx = np.arange(lo, hi + 1)
                    if xs[r, idx[-1]] < xs[r, idx[0]]:
                        idx = idx[::-1]
                    for key, arr in (("x", xs), ("z", zs), ("amp", amp), ("slope", slope)):
                        parts[key].append(arr[r, idx])
                    parts["start"].append(n)
                    parts["stop"].append(n + len(idx))
                    parts["radius"].append(self.radius[r])
                    n += len(idx)
            self._runs[view] = {
                k: (np.concatenate(v) if k in ("x", "z", "amp", "slope") else np.asarray(v)) for k, v in parts.items()
            }
        return self._runs[view]


@dataclass
class Anatomy:
    """One patient's 3-D description, fixed for the patient (the domes move with each study's inspiration)."""

    body: list[Ellipsoid]  # thorax and abdomen; their union is soft tissue
    lungs: dict[str, Ellipsoid]  # "right", "left"
    domes: dict[str, Ellipsoid]  # diaphragm domes (abdomen below them), cut from the lungs
    heart: Ellipsoid
    knob: Ellipsoid  # aortic knob, cut from the left lung
    spine: np.ndarray  # [n, 6] axis-aligned vertebral bodies: centre (3), semi-axes (3)
    bones: list[Ellipsoid]  # clavicles (extra density BONE_EXTRA, as the vertebrae)
    air: list[Ellipsoid]  # trachea, stomach bubble (density -1)
    ribs: Ribs
    vessels: np.ndarray  # [N, 4]: x, y, z, attenuation mass of a vessel segment
    vessel_side: np.ndarray  # [N] 0 = right lung, 1 = left lung
    hilum: dict[str, np.ndarray]  # [3] per side
    center: np.ndarray  # [3] where images are aimed
    sites: dict[str, dict] = field(default_factory=dict)  # lesion placement per finding (fixed per patient)

    def cuts(self, side: str, dome_shift: float = 0.0, heart: Ellipsoid | None = None) -> list[Ellipsoid]:
        """Ellipsoids removed from the ``side`` lung (domes raised by ``dome_shift``; another heart)."""
        out = [
            self.domes[side].shifted((0, 0, dome_shift)) if dome_shift else self.domes[side],
            self.heart if heart is None else heart,
        ]
        if side == "left":
            out.append(self.knob)
        return out


def _ribs(rng: np.random.Generator, width: float, depth: float) -> Ribs:
    """Ten ribs a side, each a hoop segment from the spine (θ = 0, posterior) round to the costal cartilage
    (θ = 0.8π): the posterior part arches up and then down to the side, the anterior part runs down towards
    the front."""
    theta = np.linspace(0.05, 0.80 * np.pi, 40)
    pts, radius = [], []
    for sign in (-1.0, 1.0):
        for i in range(10):
            frac = (i + 1) / 10.0
            reach = np.sin(min(1.0, frac * 1.9) * np.pi / 2)
            rx = width * (0.42 + 0.55 * reach) * rng.uniform(0.97, 1.03)
            ry = depth * (0.55 + 0.4 * reach)
            z0 = 0.80 - 0.13 * i
            x = sign * (0.06 + rx * np.sin(theta))
            y = 0.06 + ry * np.cos(theta)
            z = z0 + 0.07 * np.sin(2 * theta) - (0.16 + 0.04 * frac) * (1 - np.cos(theta))
            pts.append(np.stack([x, y, z], axis=1))
            radius.append(0.026 if i > 0 else 0.022)
    return Ribs(np.stack(pts), np.asarray(radius), 0.6 * BONE_EXTRA)


def _vessel_tree(
    rng: np.random.Generator,
    sign: float,
    hilum: np.ndarray,
    lung: Ellipsoid,
    n_branches: int = 14,
    n_steps: int = 40,
    step: float = 0.02,
) -> np.ndarray:
    """Pulmonary vessels: tapering random walks out of the hilum with short side twigs.

    Returns [N, 4] (x, y, z, attenuation mass of the segment) for the segments inside the lung."""
    d = rng.normal(size=(n_branches, 3))
    d[:, 0] = sign * (np.abs(d[:, 0]) + 0.6)
    d[:, 2] *= 1.3
    d = d[:, None, :] + np.cumsum(rng.normal(scale=0.12, size=(n_branches, n_steps, 3)), axis=1)
    d[..., 0] = sign * np.maximum(sign * d[..., 0], 0.1)
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    p = hilum + step * np.cumsum(d, axis=1)  # [B, T, 3]
    length = rng.integers(24, n_steps + 1, size=n_branches)[:, None]
    t = np.arange(n_steps)[None, :]
    r = rng.uniform(0.016, 0.022, size=(n_branches, 1)) * (1 - 0.75 * t / length)
    alive = t < length
    trunk_p, trunk_r = p[alive], r[alive]
    # twigs: short straight segments leaving ~22 % of the trunk points
    twig = rng.random(len(trunk_p)) < 0.22
    tdir = d[alive][twig] + rng.normal(scale=0.6, size=(int(twig.sum()), 3))
    tdir /= np.linalg.norm(tdir, axis=1, keepdims=True)
    s = np.arange(1, 9)[None, :, None]
    twig_p = (trunk_p[twig][:, None, :] + step * s * tdir[:, None, :]).reshape(-1, 3)
    twig_r = (0.6 * trunk_r[twig][:, None] * (1 - s[..., 0] / 10)).reshape(-1)
    pts = np.concatenate([trunk_p, twig_p])
    rad = np.concatenate([trunk_r, twig_r])
    mass = np.pi * rad**2 * step * (1 - LUNG_DENSITY)
    keep = lung.contains(pts)
    return np.concatenate([pts[keep], mass[keep, None]], axis=1)


def make_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient's anatomy (sizes, positions, ribs, vessels) from ``rng``."""
    width = rng.uniform(0.85, 0.97)  # chest half-width
    depth = width * rng.uniform(0.6, 0.72)  # chest half-depth
    heart_scale = rng.uniform(0.9, 1.08)
    body = [
        Ellipsoid.make((0, 0.05, -0.15), (width, depth, 1.7)),
        Ellipsoid.make((0, 0.05 + 0.2 * depth, -1.1), (width * 0.96, depth * 1.3, 0.9)),
    ]
    dome_top = {"right": rng.uniform(-0.30, -0.20)}
    dome_top["left"] = dome_top["right"] - rng.uniform(0.03, 0.1)
    lungs, domes, hilum = {}, {}, {}
    for side in SIDES:
        s = _SIGN[side]
        lw = (0.36 if side == "right" else 0.33) * width / 0.9 * rng.uniform(0.95, 1.05)
        cx = s * (0.1 + lw)
        lungs[side] = Ellipsoid.make(
            (cx, 0.1 * depth + 0.02, -0.12), (lw, 0.80 * depth, 0.88 * rng.uniform(0.95, 1.04)), tilt_y=-s * 0.05
        )
        domes[side] = Ellipsoid.make(
            (cx + s * 0.03, -0.12, dome_top[side] - 0.46), (lw * 1.25, 0.66 * depth, 0.46), tilt_x=-0.12
        )
        hilum[side] = np.array([s * 0.2, 0.04, 0.02])
    heart = Ellipsoid.make(
        (0.1 * heart_scale, -0.16, dome_top["left"] + 0.08),
        (0.40 * heart_scale, 0.27 * heart_scale, 0.25 * heart_scale),
        tilt_y=0.55,
        tilt_x=0.25,
    )
    knob = Ellipsoid.make((0.12, 0.05, 0.33), (0.075, 0.08, 0.07))
    spine = np.array([(0.0, 0.62 * depth, z, 0.07, 0.075, 0.052) for z in np.arange(0.95, -1.05, -0.15)])
    bones = []
    for s in (-1.0, 1.0):  # clavicles
        bones.append(
            Ellipsoid.make(
                (s * 0.36 * width / 0.9, -0.25, 0.74), (0.34, 0.035, 0.032), tilt_y=-s * rng.uniform(0.1, 0.25)
            )
        )
    air = [Ellipsoid.make((0.0, -0.02, 0.75), (0.045, 0.045, 0.45))]  # trachea
    if rng.random() < 0.75:  # gastric bubble
        air.append(Ellipsoid.make((0.42, -0.05, dome_top["left"] - 0.2), (0.13, 0.1, 0.07)))
    ribs = _ribs(rng, width, depth)
    vessels = [_vessel_tree(rng, _SIGN[side], hilum[side], lungs[side]) for side in SIDES]
    side_of = np.concatenate([np.full(len(v), j) for j, v in enumerate(vessels)])
    return Anatomy(
        body,
        lungs,
        domes,
        heart,
        knob,
        spine,
        bones,
        air,
        ribs,
        np.concatenate(vessels),
        side_of,
        hilum,
        np.array([0.0, 0.05, -0.12]),
    )


# ----------------------------------------------------------------------------------------------------------
# findings as 3-D lesions


@dataclass
class Lesion:
    """One lesion of a finding: where it is and how it changes attenuation.

    ``kind`` is "fluid" (``blobs`` filled to ``fill`` inside the ``side`` lung's air space), "ptx" (that
    lung collapses towards ``pivot`` by ``factor``, leaving a pleural air gap) or "heart" (``heart``
    replaces the normal heart).

    ``displace`` (fluid only, world units along y, < 0: anteriorly): the fluid pushes the lung base forward,
    so the air space it takes reappears, as the same shape moved by ``displace`` along y, in place of the soft
    tissue of the diaphragm dome in front of it. Every frontal ray (along y) then crosses as much fluid as it
    gains air: the lesion cancels exactly on the frontal view and shows on the lateral view only.
    """

    finding: str
    side: str  # "right", "left" or "" (heart)
    kind: str
    blobs: list[Ellipsoid] = field(default_factory=list)
    fill: float = 1.0
    pivot: np.ndarray | None = None
    factor: float = 1.0
    heart: Ellipsoid | None = None
    displace: float = 0.0


def lung_recess(anatomy: Anatomy, side: str, n: int = 16) -> dict:
    """The floor of the ``side`` lung's air space (the posterior costophrenic recess), from a point sample
    of the lung's lower back part: ``bottom`` (lowest height), ``recess`` [3] (centroid of the air space
    within 0.12 of the bottom) and ``recess_width`` (half its extent along x)."""
    lung = anatomy.lungs[side]
    low, high = lung.extent()
    axes = [
        np.linspace(low[0], high[0], n),
        np.linspace(lung.center[1] - 0.1, high[1], int(1.5 * n)),
        np.linspace(low[2], low[2] + 0.6, 2 * n),
    ]
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    pts = pts[lung.contains(pts)]
    for c in anatomy.cuts(side):
        pts = pts[~c.contains(pts)]
    bottom = float(pts[:, 2].min())
    floor = pts[pts[:, 2] < bottom + 0.12]
    centre = floor.mean(axis=0)
    return dict(
        bottom=bottom,
        recess=np.array([centre[0], centre[1], bottom]),
        recess_width=float(floor[:, 0].max() - floor[:, 0].min()) / 2,
    )


def make_sites(rng: np.random.Generator, anatomy: Anatomy) -> dict[str, dict]:
    """Per-patient lesion placement for every finding and side (the size then follows the severity)."""
    sites: dict[str, dict] = {}
    lobes = ("upper", "middle", "lower")
    for side in SIDES:
        lung, s = anatomy.lungs[side], _SIGN[side]
        lobe = lobes[int(rng.choice(3, p=[0.3, 0.2, 0.5]))]
        cz = {"upper": 0.3, "middle": -0.05, "lower": -0.2}[lobe] + rng.uniform(-0.05, 0.05)
        cy = {"upper": 0.05, "middle": -0.2, "lower": 0.22}[lobe]
        sites[f"consolidation_{side}"] = dict(
            lobe=lobe,
            center=np.array([lung.center[0] + s * rng.uniform(0.0, 0.1), cy, cz]),
            tilt=(rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5)),
        )
        lobe = lobes[int(rng.choice(3, p=[0.25, 0.25, 0.5]))]
        cz = {"upper": 0.32, "middle": 0.0, "lower": -0.15}[lobe]
        sites[f"pneumonia_{side}"] = dict(
            lobe=lobe,
            center=np.array([lung.center[0] + s * rng.uniform(-0.05, 0.1), rng.uniform(-0.1, 0.2), cz]),
            offsets=rng.normal(scale=(0.1, 0.1, 0.09), size=(6, 3)),
            sizes=rng.uniform(0.6, 1.0, size=6),
        )
        sites[f"effusion_{side}"] = dict(
            **lung_recess(anatomy, side),
            lateral=rng.uniform(0.15, 0.25),
            posterior=lung.center[1] + rng.uniform(0.25, 0.35),
        )
        sites[f"pneumothorax_{side}"] = dict(
            pivot=np.array([lung.center[0] - s * rng.uniform(0.12, 0.2), 0.05, rng.uniform(-0.45, -0.3)])
        )
        sites[f"covid_{side}"] = dict(jitter=rng.normal(scale=0.03, size=(4, 3)))
    sites["edema"] = dict(stretch=rng.uniform(0.9, 1.1, size=3))
    return sites


def lesions_for(finding: str, severity: float, side: str, anatomy: Anatomy) -> list[Lesion]:
    """The 3-D lesions of one finding at ``severity`` (0 < severity <= 1) on ``side`` ("left", "right",
    "bilateral"; ignored for cardiomegaly): one lesion per lung, or the enlarged heart."""
    if severity <= 0:
        return []
    sev = float(severity)
    if finding == "cardiomegaly":
        h, f = anatomy.heart, 1.12 + 0.30 * sev
        big = h.shifted((0.04 * sev, 0.0, -0.02 * sev)).stretched((f, 1 + 0.1 * sev, 0.92 * f))
        return [Lesion(finding, "", "heart", heart=big)]
    out: list[Lesion] = []
    for sd in SIDES if side == "bilateral" else (side,):
        if sd not in SIDES:
            raise ValueError(f"phantom.anatomy.lesions_for: side {side!r} of {finding} is not left/right/bilateral")
        s, lung = _SIGN[sd], anatomy.lungs[sd]
        if finding == "pleural_effusion":
            p = anatomy.sites[f"effusion_{sd}"]
            if sev <= LATERAL_ONLY_MAX:
                # A small effusion fills the posterior costophrenic recess, the lowest point of the lung, up
                # to a level that rises with the amount; it lies behind the dome and pushes the lung base
                # forward by its own depth, so along each frontal ray the fluid replaces as much air as the
                # base gains in front of it (no net change; seen against the upper abdomen) while the lateral
                # rays, along x, cross its whole width: a blunted posterior costophrenic angle.
                depth = POSTERIOR_LAYER + 0.3 * sev
                c = p["recess"] + np.array([0.0, 0.5 * depth, 0.0])
                blobs = [Ellipsoid.make(c, (p["recess_width"] * (1.0 + sev) + 0.1, depth, 0.22 + 1.0 * sev))]
                out.append(Lesion(finding, sd, "fluid", blobs, fill=1.0, displace=-(2.0 * depth + 0.02)))
            else:
                # Larger: the air space below a meniscus that rises with the amount of fluid and is higher
                # laterally and posteriorly.
                level = p["bottom"] + 0.02 + 1.3 * sev
                c = np.array([lung.center[0] + s * p["lateral"], p["posterior"], level - 0.9])
                out.append(Lesion(finding, sd, "fluid", [Ellipsoid.make(c, (0.75, 0.9, 0.9))], fill=1.0))
        elif finding == "consolidation":  # one dense, lobe-shaped opacity
            p = anatomy.sites[f"consolidation_{sd}"]
            r = 0.09 + 0.13 * sev
            out.append(
                Lesion(
                    finding,
                    sd,
                    "fluid",
                    [Ellipsoid.make(p["center"], (1.1 * r, 1.3 * r, 0.85 * r), *p["tilt"])],
                    fill=0.85,
                )
            )
        elif finding == "pneumonia":  # a patchy cluster of opacities in one lobe
            p = anatomy.sites[f"pneumonia_{sd}"]
            n = 2 + int(round(4 * sev))
            blobs = [
                Ellipsoid.make(
                    p["center"] + p["offsets"][j] * (0.6 + 0.6 * sev),
                    np.array([1.2, 1.0, 0.9]) * (0.05 + 0.07 * sev) * p["sizes"][j],
                )
                for j in range(n)
            ]
            out.append(Lesion(finding, sd, "fluid", blobs, fill=0.7))
        elif finding == "edema":  # perihilar haze, always both lungs
            c = anatomy.hilum[sd] + np.array([s * 0.1, 0.0, -0.05])
            axes = np.array([0.22 + 0.12 * sev, 0.3 + 0.1 * sev, 0.32 + 0.15 * sev]) * anatomy.sites["edema"]["stretch"]
            out.append(Lesion(finding, sd, "fluid", [Ellipsoid.make(c, axes)], fill=0.08 + 0.32 * sev))
        elif finding == "pneumothorax":  # apical / lateral air gap
            p = anatomy.sites[f"pneumothorax_{sd}"]
            out.append(Lesion(finding, sd, "ptx", pivot=p["pivot"], factor=1.0 - (0.05 + 0.3 * sev)))
        elif finding == "covid":  # COVIDx: peripheral, basal ground-glass opacities
            jit = anatomy.sites[f"covid_{sd}"]["jitter"]
            blobs = [
                Ellipsoid.make(
                    np.array(
                        [
                            lung.center[0] + s * (0.12 + 0.06 * (j % 2)),
                            0.05 + 0.1 * (j - 1.5),
                            -0.3 + 0.1 * j * (0.5 + 0.5 * sev),
                        ]
                    )
                    + jit[j],
                    (0.1 + 0.05 * sev, 0.18, 0.12 + 0.05 * sev),
                )
                for j in range(4)
            ]
            out.append(Lesion(finding, sd, "fluid", blobs, fill=0.2 + 0.3 * sev))
        else:
            raise ValueError(f"phantom.anatomy.lesions_for: unknown finding {finding!r}")
    return out
