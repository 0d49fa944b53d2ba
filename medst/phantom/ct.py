"""CT-like volumes of the phantom: axial cross-sections of the 3-D anatomy and findings the radiographs project.

A radiograph is a line integral through one patient's 3-D description (``medst.phantom.render``); a CT slice is
a cross-section of the same description. :func:`render_ct` samples, in every voxel, which objects of
``medst.phantom.anatomy`` contain it (2 × 2 × 2 sub-samples per voxel, averaged: partial volume) and gives each
one a Hounsfield-like value, then adds the thin structures (ribs, pulmonary vessels), each point of their centre
lines spreading its volume over a small Gaussian in the voxel grid (:func:`_splat`), and Gaussian noise. Values (HU)::

    air -1000   lung -850   soft tissue (body, heart, vessels) 40   bone 700
    fluid filling a fraction ``fill`` of the lung:  lung + fill · (fluid - lung), fluid per finding:
        pleural effusion 15, consolidation 30 (fill 1), pneumonia 30 (fill 0.9), edema 20, COVID-19 25
    pneumothorax: the pleural air gap -1000, the collapsed lung -1000 + 150 / factor³ (denser, as on the
    radiograph where it keeps its mass)

A small posterior pleural effusion (``Lesion.displace``) pushes the lung base forward: the air space it takes
reappears in front of it in place of soft tissue, as on the radiographs. These numbers and the slab's 2 × 2 × 2
sampling are the phantom's choices; a real CT has fat, contrast, beam hardening and finer slices.

Geometry (:class:`CtGeometry`): ``image_size`` × ``image_size`` voxels in-plane over :data:`FOV` world units
(one unit is :data:`MM_PER_UNIT` mm, about half the chest width), ``n_slices`` axial slices covering the lungs
from the lowest point of the posterior recesses to the apices. The NIfTI voxel axes are RAS+: i runs to the
patient's right, j anteriorly, k up (slice 0 is the most inferior); the affine maps them to millimetres.

Files (one volume per chosen study; :func:`ct_tables`)::

    mimic-cxr-jpg/ct/files/pXX/pSUBJECT/sSTUDY.nii.gz    int16, plain HU (no scaling)
    mimic-cxr-jpg/ct/ct-metadata.csv                     subject, study, path (under ct/), size, slices, spacing
    ground_truth/ct_slices.csv                            per volume and present finding: the slices it occupies

The report: the CT shares its study's report (``mimic-cxr-reports/.../sSTUDY.txt``), not a text of its own.
The volume is rendered from the same 3-D state (same findings, sides and severities) the study's radiographs
and report come from, so that report describes it; the one report then ties a radiograph and a volume of one
patient at one time, which is the common semantic space UniMedI learns (a pairing no public data set has), and
the report stream stays untouched, so adding CT changes no radiograph and no report. Its view-specific words
("on the lateral view") are the radiographs'; a model has to learn that they do not concern the CT.

Ground truth (:func:`finding_slices`): a slice contains a finding when a sub-sample point of its slab lies in the
finding's 3-D region (fluid: the lesion's blobs within the lung's air space; pneumothorax: the pleural air gap;
cardiomegaly: the lung air space the enlarged heart takes), tested on the 3-D description, never on the rendered
values.

Randomness: which patients get a CT comes from stream :data:`~medst.phantom.plan.STREAM_CT_PICK`, the study and
the noise from the patient's own stream :data:`~medst.phantom.plan.STREAM_CT`, so ``ct_fraction > 0`` leaves
every radiograph, report and table of the phantom as it is (chapter 11 of the book; Method §1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from medst.phantom.anatomy import LUNG_DENSITY, SIDES, Anatomy, Lesion, lung_recess
from medst.phantom.geometry import Ellipsoid
from medst.phantom.plan import FINDINGS, STREAM_CT, STREAM_CT_PICK, plan_patient, stream_rng
from medst.phantom.rows import CtMetadataRow, CtSliceRow, CtTables
from medst.phantom.writers import CT_DIR, MIMIC_DIR, write_nifti

MM_PER_UNIT = 180.0  # millimetres per world unit (the chest half-width is 0.85-0.97 units)
FOV = 2.2  # world units covered by the in-plane grid (the body is at most 1.94 wide)
FOV_CENTER = (0.0, 0.1)  # world (x, y) of the in-plane grid's centre (the abdomen bulges backwards)
SUBSAMPLES = 2  # sub-samples per voxel along each axis

HU_AIR, HU_LUNG, HU_SOFT, HU_BONE = -1000.0, -850.0, 40.0, 700.0
FLUID_HU = {"pleural_effusion": 15.0, "consolidation": 30.0, "pneumonia": 30.0, "edema": 20.0, "covid": 25.0}
CT_FILL = {"consolidation": 1.0, "pneumonia": 0.9}  # dense on CT; other findings keep ``Lesion.fill``
VESSEL_STEP = 0.02  # length of a vessel segment (``anatomy._vessel_tree``'s step)
NOISE_HU = (6.0, 12.0)  # range of the per-volume noise level (std, HU)


def default_slices(image_size: int) -> int:
    """Slices of a volume at in-plane size ``image_size``: half of it, between 16 and 64."""
    return int(np.clip(image_size // 2, 16, 64))


def ct_relpath(subject_id: int, study_id: int) -> str:
    """``files/pXX/pSUBJECT/sSTUDY.nii.gz`` relative to the ``ct`` folder."""
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}.nii.gz"


def pick_ct_patients(seed: int, n_patients: int, fraction: float) -> list[int]:
    """The indices of the patients that get a CT: ``round(fraction · n_patients)`` of them (at least one when
    ``fraction > 0``), drawn from their own stream; the first ones of one permutation, so a larger fraction
    keeps the patients of a smaller one."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"phantom.ct: ct_fraction must lie in [0, 1], got {fraction}")
    if fraction == 0.0:
        return []
    k = max(1, int(round(fraction * n_patients)))
    return sorted(int(i) for i in stream_rng(seed, STREAM_CT_PICK).permutation(n_patients)[:k])


# ----------------------------------------------------------------------------------------------------------
# the voxel grid


@dataclass(frozen=True)
class CtGeometry:
    """The voxel grid of one volume: ``size`` × ``size`` voxels of ``pitch`` world units in-plane, ``n_slices``
    slices of ``thickness`` from ``z0`` (the centre of slice 0, the most inferior) upwards.

    Voxel (i, j, k) of the NIfTI array [size, size, n_slices] lies at world ``x(i)``, ``y(j)``, ``z(k)``: i runs
    to the patient's right (world x decreases), j anteriorly (world y decreases), k up."""

    size: int
    n_slices: int
    pitch: float
    thickness: float
    z0: float
    center: tuple[float, float] = FOV_CENTER

    def x(self, i: np.ndarray | int) -> np.ndarray:
        return self.center[0] + ((self.size - 1) / 2 - np.asarray(i, dtype=np.float64)) * self.pitch

    def y(self, j: np.ndarray | int) -> np.ndarray:
        return self.center[1] + ((self.size - 1) / 2 - np.asarray(j, dtype=np.float64)) * self.pitch

    def z(self, k: np.ndarray | int) -> np.ndarray:
        return self.z0 + np.asarray(k, dtype=np.float64) * self.thickness

    def slice_of(self, z: float) -> int:
        """The index of the slice whose slab [z(k) - thickness / 2, z(k) + thickness / 2) holds world height z
        (may lie outside 0..n_slices - 1)."""
        return int(np.floor((z - self.z0) / self.thickness + 0.5))

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        """Voxel size (i, j, k) in millimetres."""
        return (self.pitch * MM_PER_UNIT, self.pitch * MM_PER_UNIT, self.thickness * MM_PER_UNIT)

    def affine(self) -> np.ndarray:
        """[4, 4] voxel (i, j, k) -> RAS+ millimetres (R = -x, A = -y, S = z in world units, times MM_PER_UNIT)."""
        out = np.diag([*self.spacing_mm, 1.0])
        out[:3, 3] = [-MM_PER_UNIT * float(self.x(0)), -MM_PER_UNIT * float(self.y(0)), MM_PER_UNIT * self.z0]
        return out

    def world(self, ijk: np.ndarray) -> np.ndarray:
        """[N, 3] voxel indices -> [N, 3] world points."""
        ijk = np.asarray(ijk, dtype=np.float64)
        return np.stack([self.x(ijk[:, 0]), self.y(ijk[:, 1]), self.z(ijk[:, 2])], axis=1)

    def sample_axes(self) -> tuple[np.ndarray, np.ndarray]:
        """World x and y of the in-plane sub-samples, both increasing: [size · SUBSAMPLES] each (sub-samples
        ``SUBSAMPLES · m .. SUBSAMPLES · m + SUBSAMPLES - 1`` belong to voxel ``size - 1 - m``)."""
        n = self.size * SUBSAMPLES
        off = (np.arange(n) - (n - 1) / 2) * (self.pitch / SUBSAMPLES)
        return self.center[0] + off, self.center[1] + off

    def slab_heights(self, k: int) -> np.ndarray:
        """World z of the SUBSAMPLES sub-sample planes of slice ``k``, increasing."""
        return self.z(k) + (np.arange(SUBSAMPLES) - (SUBSAMPLES - 1) / 2) * (self.thickness / SUBSAMPLES)


def ct_geometry(anatomy: Anatomy, size: int, n_slices: int) -> CtGeometry:
    """The grid of a volume of ``anatomy``: ``size`` voxels a side over :data:`FOV`, ``n_slices`` slices from
    just below the lowest point of the lungs' air space (the posterior recesses) to just above the apices."""
    bottom = min(lung_recess(anatomy, side)["bottom"] for side in SIDES) - 0.06
    top = max(float(anatomy.lungs[side].extent()[1][2]) for side in SIDES) + 0.04
    thickness = (top - bottom) / n_slices
    return CtGeometry(size, n_slices, FOV / size, thickness, bottom + thickness / 2)


# ----------------------------------------------------------------------------------------------------------
# rendering


def _inside(ell: Ellipsoid, xs: np.ndarray, ys: np.ndarray, zs: np.ndarray) -> np.ndarray:
    """Whether the points of the grid ``zs`` × ``ys`` × ``xs`` (each increasing) lie in ``ell``: bool
    [len(zs), len(ys), len(xs)], evaluated within the ellipsoid's bounding box only."""
    out = np.zeros((len(zs), len(ys), len(xs)), bool)
    low, high = ell.extent()
    win = [
        slice(np.searchsorted(v, low[a]), np.searchsorted(v, high[a], side="right")) for a, v in enumerate((xs, ys, zs))
    ]
    if any(w.stop <= w.start for w in win):
        return out
    x = (xs[win[0]] - ell.center[0])[None, None, :]
    y = (ys[win[1]] - ell.center[1])[None, :, None]
    z = (zs[win[2]] - ell.center[2])[:, None, None]
    a = ell.A
    q = a[0, 0] * x * x + a[1, 1] * y * y + a[2, 2] * z * z + 2 * (a[0, 1] * x * y + a[0, 2] * x * z + a[1, 2] * y * z)
    out[win[2], win[1], win[0]] = q <= 1.0
    return out


def _splat(geom: CtGeometry, points: np.ndarray, radius: np.ndarray, volume: np.ndarray, out: np.ndarray) -> None:
    """Add thin objects to ``out`` [n_slices, size, size] (world order: slice, y increasing, x increasing): each
    point ([N, 3] world) spreads ``volume`` [N] (world units³ · HU) over a Gaussian of standard deviation
    max(``radius`` / √2, half a voxel) along each axis, sampled at the voxel centres and normalised, then
    divided by the voxel volume. A chain of such points along a tube of radius r has the tube's cross-section
    area and a peak of about ``volume`` per unit volume (2π σ² = π r²); a tube thinner than a voxel ends up
    spread over one voxel (partial volume)."""
    spacing = np.array([geom.thickness, geom.pitch, geom.pitch])  # world order: z, y, x
    first = np.array([geom.z0, float(geom.y(geom.size - 1)), float(geom.x(geom.size - 1))])
    limits = (geom.n_slices, geom.size, geom.size)
    sigma = np.maximum(radius[:, None] / np.sqrt(2.0) / spacing[None, :], 0.5)  # [N, 3] in voxels
    half = np.ceil(3 * sigma.max(axis=0)).astype(int)
    per_voxel = volume / float(np.prod(spacing))
    flat = np.zeros(out.size)
    for lo in range(0, len(points), 1024):
        sl = slice(lo, lo + 1024)
        pos = (points[sl][:, ::-1] - first) / spacing  # [n, 3] fractional voxel coordinates (z, y, x)
        idx, wts = [], []
        for a in range(3):
            i = np.floor(pos[:, a]).astype(np.int64)[:, None] + np.arange(-half[a], half[a] + 2)[None, :]
            w = np.exp(-0.5 * ((i - pos[:, a : a + 1]) / sigma[sl, a : a + 1]) ** 2)
            w /= w.sum(axis=1, keepdims=True)
            w[(i < 0) | (i >= limits[a])] = 0.0
            idx.append(np.clip(i, 0, limits[a] - 1))
            wts.append(w)
        value = per_voxel[sl, None, None, None] * wts[0][:, :, None, None]
        value = value * wts[1][:, None, :, None] * wts[2][:, None, None, :]  # [n, Wz, Wy, Wx]
        where = (idx[0][:, :, None, None] * limits[1] + idx[1][:, None, :, None]) * limits[2] + idx[2][:, None, None, :]
        flat += np.bincount(where.ravel(), weights=value.ravel(), minlength=out.size)
    out += flat.reshape(out.shape)


def _rib_samples(anatomy: Anatomy, step: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every ``step`` world units along the ribs' centre lines, their radius and the volume each stands
    for (π r² · step): ([N, 3], [N], [N])."""
    pts, rad, vol = [], [], []
    for line, r in zip(anatomy.ribs.points, anatomy.ribs.radius):
        arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
        t = np.arange(step / 2, arc[-1], step)
        pts.append(np.stack([np.interp(t, arc, line[:, a]) for a in range(3)], axis=1))
        rad.append(np.full(len(t), r))
        vol.append(np.full(len(t), np.pi * r * r * step))
    return np.concatenate(pts), np.concatenate(rad), np.concatenate(vol)


class CtRender(NamedTuple):
    """One rendered volume: ``hu`` int16 [size, size, n_slices] in NIfTI order (i, j, k), the ``geometry`` and,
    per lesion, the fraction of each slice's sub-samples inside the lesion's region, ``lesion_slices``
    [n_lesions][n_slices] (from the 3-D description)."""

    hu: np.ndarray
    geometry: CtGeometry
    lesions: list[Lesion]
    lesion_slices: list[np.ndarray]


def _fill(les: Lesion) -> float:
    return CT_FILL.get(les.finding, les.fill)


def render_ct(
    anatomy: Anatomy,
    lesions: list[Lesion],
    size: int,
    n_slices: int,
    noise_hu: float = 0.0,
    noise_rng: np.random.Generator | None = None,
) -> CtRender:
    """The CT volume of ``anatomy`` with ``lesions``: ``size`` × ``size`` × ``n_slices`` voxels (see the module
    docstring for the values), Gaussian noise of ``noise_hu`` HU when ``noise_rng`` is given.

    Returns a :class:`CtRender`: int16 HU [size, size, n_slices] (i to the right, j anterior, k up) and the
    per-slice fraction of every lesion's region."""
    geom = ct_geometry(anatomy, size, n_slices)
    xs, ys = geom.sample_axes()
    ss = SUBSAMPLES
    vol = np.zeros((n_slices, size, size))
    lung_frac = np.zeros_like(vol)  # the fraction of each voxel in the lungs' air space
    region_frac = [np.zeros(n_slices) for _ in lesions]
    hearts = [les.heart for les in lesions if les.kind == "heart"]
    heart = hearts[-1] if hearts else None
    for k in range(n_slices):
        zs = geom.slab_heights(k)

        def inside(ell: Ellipsoid, zs: np.ndarray = zs) -> np.ndarray:
            return _inside(ell, xs, ys, zs)

        body = np.zeros((ss, len(ys), len(xs)), bool)
        for b in anatomy.body:
            body |= inside(b)
        v = np.where(body, HU_SOFT, HU_AIR)
        space = {}
        for side in SIDES:
            cut = np.zeros_like(body)
            for c in anatomy.cuts(side, heart=heart):
                cut |= inside(c)
            space[side] = inside(anatomy.lungs[side]) & ~cut
            v[space[side]] = HU_LUNG
        any_space = space["right"] | space["left"]
        soft = body & ~any_space
        regions = []
        for les in lesions:
            if les.kind == "heart":  # the lung air space (with the normal heart) the enlarged heart takes
                region = np.zeros_like(body)
                for side in SIDES:
                    normal = inside(anatomy.lungs[side])
                    for c in anatomy.cuts(side):
                        normal &= ~inside(c)
                    region |= normal
                region &= inside(les.heart)
            elif les.kind == "ptx":
                shrunk = inside(anatomy.lungs[les.side].scaled(les.factor, les.pivot))
                region = space[les.side] & ~shrunk
                v[region] = HU_AIR
                v[space[les.side] & shrunk] = HU_AIR + (HU_LUNG - HU_AIR) / les.factor**3
            else:  # fluid in the lung's air space
                blobs = np.zeros_like(body)
                for b in les.blobs:
                    blobs |= inside(b)
                region = space[les.side] & blobs
                f = _fill(les)
                v[region] += f * (FLUID_HU[les.finding] - v[region])
                if les.displace:  # the lung base pushed forward replaces soft tissue
                    move = (0.0, les.displace, 0.0)
                    moved = np.zeros_like(body)
                    for b in les.blobs:
                        moved |= inside(b.shifted(move))
                    cut = np.zeros_like(body)
                    for c in anatomy.cuts(les.side, heart=heart):
                        cut |= inside(c.shifted(move))
                    moved &= inside(anatomy.lungs[les.side].shifted(move)) & ~cut & soft
                    v[moved] += f * (HU_LUNG - v[moved])
            regions.append(region)
        for a in anatomy.air:
            v[inside(a) & body] = HU_AIR
        bone = np.zeros_like(body)
        for b in anatomy.bones:
            bone |= inside(b)
        for c in anatomy.spine:
            bone |= inside(Ellipsoid.make(c[:3], c[3:]))
        v[bone] = HU_BONE
        vol[k] = v.reshape(ss, size, ss, size, ss).mean(axis=(0, 2, 4))
        lung_frac[k] = any_space.reshape(ss, size, ss, size, ss).mean(axis=(0, 2, 4))
        for j, region in enumerate(regions):
            region_frac[j][k] = region.mean()

    rib_pts, rib_r, rib_vol = _rib_samples(anatomy, min(geom.pitch, geom.thickness) / 4)
    _splat(geom, rib_pts, rib_r, rib_vol * (HU_BONE - HU_SOFT), vol)
    pts = anatomy.vessels[:, :3]
    keep = np.ones(len(pts), bool)  # the segments in air space (not under a dome or in the heart)
    for j_side, side in enumerate(SIDES):
        on = anatomy.vessel_side == j_side
        for c in anatomy.cuts(side, heart=heart):
            keep[on] &= ~c.contains(pts[on])
    weight = keep.astype(np.float64)
    for les in lesions:  # fluid hides vessels, a pneumothorax pushes them away
        if les.kind == "fluid":
            for b in les.blobs:
                weight[b.contains(pts)] *= 1 - _fill(les)
        elif les.kind == "ptx":
            shrunk = anatomy.lungs[les.side].scaled(les.factor, les.pivot)
            weight[(anatomy.vessel_side == SIDES.index(les.side)) & ~shrunk.contains(pts)] = 0.0
    vessel_vol = anatomy.vessels[:, 3] / (1 - LUNG_DENSITY)  # the mass is π r² · step · (1 - LUNG_DENSITY)
    vessel_r = np.sqrt(vessel_vol / (np.pi * VESSEL_STEP))
    vessels = np.zeros_like(vol)  # the branches meet at the hila: at most all soft tissue, in the lungs only
    _splat(geom, pts, vessel_r, vessel_vol * weight * (HU_SOFT - HU_LUNG), vessels)
    vol += np.minimum(vessels, HU_SOFT - HU_LUNG) * lung_frac
    np.clip(vol, HU_AIR, HU_BONE, out=vol)  # ribs meeting the vertebrae: bone, not denser

    if noise_rng is not None and noise_hu > 0:
        vol += noise_hu * noise_rng.standard_normal(vol.shape)
    hu = np.clip(np.rint(vol), -1024, 3071).astype(np.int16)
    # world order [k, y increasing, x increasing] -> NIfTI order [i (right), j (anterior), k]
    hu = np.ascontiguousarray(hu[:, ::-1, ::-1].transpose(2, 1, 0))
    return CtRender(hu, geom, list(lesions), region_frac)


def finding_slices(render: CtRender) -> dict[str, np.ndarray]:
    """Per finding of the render's lesions: the fraction of each slice's sub-samples in the finding's 3-D region
    (its lesions together, e.g. both lungs of a bilateral one), [n_slices]; a slice contains the finding where
    this is > 0."""
    out: dict[str, np.ndarray] = {}
    for les, frac in zip(render.lesions, render.lesion_slices):
        out[les.finding] = out.get(les.finding, 0.0) + frac
    return out


# ----------------------------------------------------------------------------------------------------------
# the task


class CtTask(NamedTuple):
    """The CT volume of MIMIC-part patient ``index`` (of ``n_patients`` in the cohort of ``seed``):
    ``image_size`` voxels in-plane, ``n_slices`` slices, written under the phantom folder ``out``."""

    seed: int
    index: int
    n_patients: int
    image_size: int
    n_slices: int
    out: str

    def run(self) -> CtTables:
        return ct_tables(self)


def ct_tables(task: CtTask) -> CtTables:
    """Plan the patient exactly as its patient task does, render one of its studies (drawn uniformly from the
    patient's CT stream) as a CT volume, write it, and return its :class:`CtTables`: one ``metadata`` row and
    its ``slices`` rows (one per finding present in the study)."""
    plan = plan_patient(task.seed, task.index, task.n_patients, task.image_size)
    rng = stream_rng(task.seed, STREAM_CT, task.index)
    st = plan.studies[int(rng.integers(len(plan.studies)))]
    noise_hu = float(rng.uniform(*NOISE_HU))
    render = render_ct(
        plan.anatomy,
        plan.lesions(st.index),
        task.image_size,
        task.n_slices,
        noise_hu,
        np.random.default_rng(int(rng.integers(2**31))),
    )
    rel = ct_relpath(plan.subject_id, st.study_id)
    geom = render.geometry
    write_nifti(Path(task.out) / MIMIC_DIR / CT_DIR / rel, render.hu, geom.affine(), f"medst phantom CT s{st.study_id}")
    sx, sy, sz = geom.spacing_mm
    rows = CtTables()
    rows.metadata.append(
        CtMetadataRow(
            subject_id=plan.subject_id,
            study_id=st.study_id,
            path=rel,
            columns=render.hu.shape[0],
            rows=render.hu.shape[1],
            slices=render.hu.shape[2],
            spacing_x=f"{sx:.4f}",
            spacing_y=f"{sy:.4f}",
            spacing_z=f"{sz:.4f}",
        )
    )
    per_finding = finding_slices(render)
    for f in FINDINGS:
        if st.severity[f] <= 0:
            continue
        frac = per_finding.get(f, np.zeros(geom.n_slices))
        hit = np.flatnonzero(frac > 0)
        rows.slices.append(
            CtSliceRow(
                subject_id=plan.subject_id,
                study_id=st.study_id,
                finding=f,
                side=plan.sides[f],
                severity=f"{st.severity[f]:.3f}",
                slices=";".join(str(int(k)) for k in hit),
                peak_slice=int(np.argmax(frac)) if len(hit) else -1,
            )
        )
    return rows
