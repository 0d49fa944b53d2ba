"""CT volumes in the phantom (medst.phantom.ct) and their index (medst.data.ct).

A 12-patient cohort at 48 px is written with CT volumes for half of its patients, twice (one and two worker
processes), and without CT (without the option and with ``ct_fraction=0``). The volumes are read back with
nibabel; their finding slices are checked against the 3-D description (re-planned, sampled independently) and
against the values inside and outside the lesions; ``prepare`` indexes them, and damaged copies are named and
counted.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medst.data import ct as data_ct
from medst.data.mimic import prepare
from medst.phantom import ct as phantom_ct
from medst.phantom import synthesize
from medst.phantom.anatomy import SIDES, lesions_for
from medst.phantom.plan import plan_patient
from medst.phantom.writers import CT_DIR, CT_METADATA_NAME

SEED, N, SIZE, SLICES = 5, 12, 48, 24
SMALL = dict(n_patients=N, image_size=SIZE, seed=SEED, progress=False, n_rsna=0, n_covidx=3)


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    out = {name: tmp_path_factory.mktemp(f"ct_{name}") for name in ("a", "b", "plain", "zero")}
    synthesize(out["a"], workers=1, ct_fraction=0.5, ct_slices=SLICES, **SMALL)
    synthesize(out["b"], workers=2, ct_fraction=0.5, ct_slices=SLICES, **SMALL)
    synthesize(out["plain"], workers=1, **SMALL)
    synthesize(out["zero"], workers=1, ct_fraction=0.0, **SMALL)
    return out


@pytest.fixture(scope="module")
def volumes(dirs):
    """The CT metadata rows of cohort a, each with its plan, study index and nibabel image."""
    root = dirs["a"]
    meta = pd.read_csv(root / "mimic-cxr-jpg" / CT_DIR / CT_METADATA_NAME)
    plans = {p.subject_id: p for p in (plan_patient(SEED, i, N, SIZE) for i in range(N))}
    out = []
    for row in meta.to_dict("records"):
        plan = plans[row["subject_id"]]
        study = next(st.index for st in plan.studies if st.study_id == row["study_id"])
        img = nib.load(root / "mimic-cxr-jpg" / CT_DIR / row["path"])
        out.append({**row, "plan": plan, "study": study, "img": img})
    return out


def test_same_seed_gives_byte_identical_volumes_and_ct_fraction_zero_changes_nothing(dirs):
    a, b = tree_hashes(dirs["a"]), tree_hashes(dirs["b"])
    assert a == b
    ct = {k for k in a if k.startswith(f"mimic-cxr-jpg/{CT_DIR}/") or k == "ground_truth/ct_slices.csv"}
    assert len([k for k in ct if k.endswith(".nii.gz")]) == N // 2
    plain, zero = tree_hashes(dirs["plain"]), tree_hashes(dirs["zero"])
    assert zero == plain  # F = 0 is the phantom without the option
    assert {k: v for k, v in a.items() if k not in ct and k != "phantom.json"} == {
        k: v for k, v in plain.items() if k != "phantom.json"
    }  # F > 0 adds files and changes none of the radiographs, reports and tables
    with_ct = json.loads((dirs["a"] / "phantom.json").read_text())
    assert with_ct.pop("ct_fraction") == 0.5
    assert with_ct["counts"].pop("ct_volumes") == N // 2 and with_ct["counts"].pop("ct_slices_per_volume") == SLICES
    assert with_ct == json.loads((dirs["plain"] / "phantom.json").read_text())
    assert (data_ct.CT_DIR, data_ct.CT_METADATA_NAME) == (CT_DIR, CT_METADATA_NAME)  # writer and reader agree


def test_volumes_are_nifti_in_ras_mm_with_hounsfield_values(volumes):
    for v in volumes:
        img, plan = v["img"], v["plan"]
        geom = phantom_ct.ct_geometry(plan.anatomy, SIZE, SLICES)
        assert img.shape == (SIZE, SIZE, SLICES) == (v["columns"], v["rows"], v["slices"])
        assert img.get_data_dtype() == np.int16 and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_allclose(img.header.get_zooms(), [v["spacing_x"], v["spacing_y"], v["spacing_z"]], rtol=1e-4)
        # the affine takes a voxel to its world point in mm: R = -x, A = -y, S = z
        ijk = np.array([[0, 0, 0], [SIZE - 1, 3, SLICES - 1], [7, SIZE - 2, 5]])
        ras = nib.affines.apply_affine(img.affine, ijk)
        world = geom.world(ijk) * phantom_ct.MM_PER_UNIT
        np.testing.assert_allclose(ras, world * [-1, -1, 1], atol=1e-3)
        hu = np.asarray(img.dataobj)
        assert abs(np.median(hu[:3, :3, :]) - phantom_ct.HU_AIR) < 40  # corners: outside the body
        # voxel centres deep in a lung's air space (no lesion) and in the heart
        centres = geom.world(np.stack(np.meshgrid(*map(np.arange, hu.shape), indexing="ij"), -1).reshape(-1, 3))
        lung = plan.anatomy.lungs["right"].scaled(0.6).contains(centres)
        for les in plan.lesions(v["study"]):
            for blob in les.blobs:
                lung &= ~blob.scaled(1.3).contains(centres)
            if les.kind == "ptx" or les.kind == "heart":
                lung[:] = False
        for cut in plan.anatomy.cuts("right"):
            lung &= ~cut.scaled(1.3).contains(centres)
        if lung.sum() > 20:
            assert abs(np.median(hu.reshape(-1)[lung]) - phantom_ct.HU_LUNG) < 60
        heart = plan.anatomy.heart.scaled(0.6).contains(centres)
        assert abs(np.median(hu.reshape(-1)[heart]) - phantom_ct.HU_SOFT) < 30
        assert hu.max() >= 400  # bone


def _region(anatomy, lesions, finding: str, points: np.ndarray) -> np.ndarray:
    """Which ``points`` [N, 3] lie in the 3-D region of ``finding`` among ``lesions`` (computed here, from the
    description): fluid in the lung's air space, the pleural air gap, the enlarged heart."""
    out = np.zeros(len(points), bool)
    heart = next((les.heart for les in lesions if les.kind == "heart"), None)
    for les in lesions:
        if les.finding != finding:
            continue
        if les.kind == "heart":  # the lung air space (with the normal heart) that the enlarged heart takes
            for side in SIDES:
                normal = anatomy.lungs[side].contains(points)
                for cut in anatomy.cuts(side):
                    normal &= ~cut.contains(points)
                out |= normal & les.heart.contains(points)
            continue
        space = anatomy.lungs[les.side].contains(points)
        for cut in anatomy.cuts(les.side, heart=heart):
            space &= ~cut.contains(points)
        if les.kind == "ptx":
            out |= space & ~anatomy.lungs[les.side].scaled(les.factor, les.pivot).contains(points)
        else:
            out |= space & np.any([b.contains(points) for b in les.blobs], axis=0)
    return out


def _check_finding(anatomy, lesions, finding: str, hu: np.ndarray, listed: set[int], peak: int) -> bool:
    """Check one finding's listed slices (and peak slice) of a volume ``hu`` [S, S, K] against the 3-D
    description; where the finding is fluid, its cross-section on the peak slice must read denser than the healthy
    lung of the volume. Returns whether that comparison was made (enough voxels of both)."""
    geom = phantom_ct.ct_geometry(anatomy, hu.shape[0], hu.shape[2])
    assert peak in listed
    # within the z-extent of the ellipsoids that bound the region: its blobs, the enlarged heart, a collapsing lung
    bounds = [
        e for les in lesions if les.finding == finding for e in les.blobs or [les.heart or anatomy.lungs[les.side]]
    ]
    assert geom.slice_of(min(float(e.extent()[0][2]) for e in bounds)) <= min(listed)
    assert max(listed) <= geom.slice_of(max(float(e.extent()[1][2]) for e in bounds))
    # the region sampled here on a finer in-plane grid: where it is large the slice is listed, and a listed slice
    # holds some of it (the generator samples each slab's two planes at z ± thickness / 4)
    xs = np.linspace(-1.1, 1.1, 3 * geom.size)
    count = np.zeros(geom.n_slices, int)
    for k in range(geom.n_slices):
        zs = geom.z(k) + np.array([-0.25, 0.25]) * geom.thickness
        pts = np.stack(np.meshgrid(xs, xs + 0.1, zs, indexing="ij"), -1).reshape(-1, 3)
        count[k] = _region(anatomy, lesions, finding, pts).reshape(len(xs), len(xs), 2).sum(axis=(0, 1)).max()
    assert set(np.flatnonzero(count >= 12).tolist()) <= listed, finding
    assert len(listed - set(np.flatnonzero(count > 0).tolist())) <= 1, finding
    if finding in ("pneumothorax", "cardiomegaly"):  # a thin air gap; the heart is soft tissue with or without it
        return False
    ijk = np.stack(np.meshgrid(*map(np.arange, hu.shape), indexing="ij"), -1).reshape(-1, 3)
    centres = geom.world(ijk)
    inside = _region(anatomy, lesions, finding, centres) & (ijk[:, 2] == peak)
    healthy = np.zeros(len(centres), bool)  # the volume's lung away from every lesion, the domes and the heart
    heart = next((les.heart for les in lesions if les.kind == "heart"), None)
    for side in SIDES:
        lung = anatomy.lungs[side].scaled(0.9).contains(centres)
        for cut in anatomy.cuts(side, heart=heart):
            lung &= ~cut.scaled(1.2).contains(centres)
        healthy |= lung
    for les in lesions:
        for b in les.blobs:
            healthy &= ~b.scaled(1.3).contains(centres)
        if les.kind == "ptx":
            healthy &= ~anatomy.lungs[les.side].contains(centres)
    if inside.sum() < 3 or healthy.sum() < 3:
        return False
    values = hu.reshape(-1)
    assert values[inside].mean() - values[healthy].mean() > 40, finding
    return True


def test_finding_slices_of_the_cohort_match_the_3d_description(dirs, volumes):
    truth = pd.read_csv(dirs["a"] / "ground_truth" / "ct_slices.csv", keep_default_na=False)
    by_study = {v["study_id"]: v for v in volumes}
    present = {(v["study_id"], f) for v in volumes for f, s in v["plan"].studies[v["study"]].severity.items() if s > 0}
    assert set(zip(truth["study_id"], truth["finding"])) == present and len(truth) == len(present)
    compared = 0
    for row in truth.to_dict("records"):
        v = by_study[row["study_id"]]
        plan, study = v["plan"], v["study"]
        assert plan.studies[study].severity[row["finding"]] == pytest.approx(float(row["severity"]), abs=5e-4)
        assert row["side"] == plan.sides[row["finding"]]
        listed = {int(k) for k in str(row["slices"]).split(";") if k}
        lesions = plan.lesions(study)
        compared += _check_finding(
            plan.anatomy, lesions, row["finding"], np.asarray(v["img"].dataobj), listed, row["peak_slice"]
        )
    assert compared >= 2


@pytest.mark.parametrize(
    "finding, severity",
    [
        ("pleural_effusion", 0.15),  # posterior recess only, pushes the lung base forward
        ("pleural_effusion", 0.7),
        ("consolidation", 0.6),
        ("pneumonia", 0.7),
        ("edema", 0.5),
        ("pneumothorax", 0.6),
        ("cardiomegaly", 0.6),
    ],
)
def test_each_finding_occupies_the_slices_of_its_3d_region(finding, severity):
    plan = plan_patient(SEED, 1, N, SIZE)
    lesions = lesions_for(finding, severity, "right", plan.anatomy)
    render = phantom_ct.render_ct(plan.anatomy, lesions, SIZE, SLICES, 8.0, np.random.default_rng(0))
    frac = phantom_ct.finding_slices(render)[finding]
    listed = set(np.flatnonzero(frac > 0).tolist())
    compared = _check_finding(plan.anatomy, lesions, finding, render.hu, listed, int(np.argmax(frac)))
    assert compared == (finding not in ("pneumothorax", "cardiomegaly"))
    plain = phantom_ct.render_ct(plan.anatomy, [], SIZE, SLICES, 8.0, np.random.default_rng(0))
    changed = np.flatnonzero(np.abs(render.hu.astype(int) - plain.hu).max(axis=(0, 1)) > 0)
    assert set(changed.tolist()) >= listed  # the lesion changes the values of every slice it occupies


def test_a_consolidation_occupies_the_slices_of_its_z_extent():
    """An upper-lobe consolidation, rendered alone: the slices whose sub-sample planes lie well inside its z-extent
    are listed, none outside it, and its cross-section reads about 30 HU where the same voxels read lung without
    it."""
    index = next(
        i for i in range(N) if plan_patient(SEED, i, N, SIZE).anatomy.sites["consolidation_right"]["lobe"] == "upper"
    )
    plan = plan_patient(SEED, index, N, SIZE)
    (les,) = lesions_for("consolidation", 0.8, "right", plan.anatomy)
    render = phantom_ct.render_ct(plan.anatomy, [les], SIZE, SLICES)
    geom, frac = render.geometry, phantom_ct.finding_slices(render)["consolidation"]
    low, high = (float(e[2]) for e in les.blobs[0].extent())
    listed = set(np.flatnonzero(frac > 0).tolist())
    quarter = geom.thickness / 4
    certain = {k for k in range(SLICES) if low + 0.02 < geom.z(k) - quarter and geom.z(k) + quarter < high - 0.02}
    possible = {k for k in range(SLICES) if geom.slice_of(low) <= k <= geom.slice_of(high)}
    assert len(certain) >= 3 and certain <= listed <= possible
    plain = phantom_ct.render_ct(plan.anatomy, [], SIZE, SLICES)
    k = int(np.argmax(frac))
    centres = geom.world(np.stack(np.meshgrid(np.arange(SIZE), np.arange(SIZE), [k], indexing="ij"), -1).reshape(-1, 3))
    inside = les.blobs[0].scaled(0.8).contains(centres) & plan.anatomy.lungs["right"].scaled(0.95).contains(centres)
    for cut in plan.anatomy.cuts("right"):
        inside &= ~cut.scaled(1.2).contains(centres)
    assert inside.sum() >= 3
    assert abs(render.hu[:, :, k].reshape(-1)[inside].mean() - phantom_ct.FLUID_HU["consolidation"]) < 60
    assert plain.hu[:, :, k].reshape(-1)[inside].mean() < -600
    assert np.array_equal(phantom_ct.render_ct(plan.anatomy, [les], SIZE, SLICES).hu, render.hu)


@pytest.fixture(scope="module")
def prepared(dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("ct_prepared")
    return out, prepare(dirs["a"] / "mimic-cxr-jpg", out, cache_size=0, workers=1, progress=False)


def test_prepare_indexes_the_volumes(dirs, prepared):
    out, summary = prepared
    table = pd.read_csv(out / data_ct.CT_TABLE, keep_default_na=False)
    studies = pd.read_csv(out / "studies.csv", keep_default_na=False)
    meta = pd.read_csv(dirs["a"] / "mimic-cxr-jpg" / CT_DIR / CT_METADATA_NAME)
    assert list(table.columns) == data_ct.COLUMNS
    assert summary.volumes_seen == summary.volumes_used == len(table) == len(meta) and not summary.skipped_volumes
    merged = table.merge(studies, on=["subject_id", "study_id"], suffixes=("", "_study"))
    assert len(merged) == len(table)
    assert (merged["text"] == merged["text_study"]).all() and (merged["split"] == merged["split_study"]).all()
    order = studies.reset_index().set_index("study_id").loc[table["study_id"], "index"]
    assert order.is_monotonic_increasing  # the order of studies.csv
    for row in table.to_dict("records"):
        assert (dirs["a"] / "mimic-cxr-jpg" / row["path"]).is_file() and row["slices"] == SLICES
    assert "CT volumes used" in summary.format()


def _patch_pixdim(path: Path, axis: int, value: float) -> None:
    """Overwrite pixdim[axis] (the voxel size along axis 1..3) in a .nii.gz file's header."""
    raw = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", raw, 76 + 4 * axis, value)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0))


def test_bad_volumes_are_named_and_counted(dirs, prepared, tmp_path):
    root = tmp_path / "mimic-cxr-jpg"
    shutil.copytree(dirs["a"] / "mimic-cxr-jpg", root)
    meta = pd.read_csv(root / CT_DIR / CT_METADATA_NAME)
    studies = pd.read_csv(prepared[0] / "studies.csv", keep_default_na=False)
    free = studies[~studies["study_id"].isin(meta["study_id"])].head(6)
    good = meta.iloc[0]
    img = nib.load(root / CT_DIR / good["path"])
    data = np.asarray(img.dataobj)
    bad = {}
    for (_, st), reason in zip(
        free.iterrows(),
        ["truncated", "wrong spacing", "zero spacing", "missing slices", "not 3-D", "missing file"],
    ):
        rel = phantom_ct.ct_relpath(st["subject_id"], st["study_id"])
        path = root / CT_DIR / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / CT_DIR / good["path"], path)
        if reason == "truncated":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        elif reason == "wrong spacing":
            _patch_pixdim(path, 3, 2 * float(good["spacing_z"]))
        elif reason == "zero spacing":
            _patch_pixdim(path, 1, 0.0)
        elif reason == "missing slices":
            nib.save(nib.Nifti1Image(data[:, :, :-3], img.affine), path)
        elif reason == "not 3-D":
            nib.save(nib.Nifti1Image(np.stack([data, data], axis=-1), img.affine), path)
        else:
            path.unlink()
        bad[reason] = rel
        meta.loc[len(meta)] = {
            **good.to_dict(),
            "subject_id": st["subject_id"],
            "study_id": st["study_id"],
            "path": rel,
        }
    meta.loc[len(meta)] = {**good.to_dict(), "study_id": 59999999, "path": "files/p10/x/s59999999.nii.gz"}
    meta.to_csv(root / CT_DIR / CT_METADATA_NAME, index=False)

    out = tmp_path / "prepared"
    summary = prepare(root, out, cache_size=0, workers=1, progress=False)
    assert summary.skipped_volumes == {
        data_ct.CORRUPT_VOLUME: 1,
        data_ct.BAD_SPACING: 2,
        data_ct.MISSING_SLICES: 1,
        data_ct.NOT_3D: 1,
        data_ct.MISSING_VOLUME: 1,
        data_ct.NO_STUDY: 1,
    }
    assert summary.volumes_used == N // 2 and summary.volumes_seen == N // 2 + 7
    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    skipped = skipped[skipped["kind"] == "volume"]
    items = dict(zip(skipped["reason"], skipped["item"]))
    assert items[data_ct.CORRUPT_VOLUME].endswith(bad["truncated"]) and items[data_ct.NOT_3D].endswith(bad["not 3-D"])
    assert items[data_ct.MISSING_SLICES].endswith(bad["missing slices"])
    assert items[data_ct.MISSING_VOLUME].endswith(bad["missing file"])
    spacing = skipped[skipped["reason"] == data_ct.BAD_SPACING]
    assert sorted(Path(p).name for p in spacing["item"]) == sorted(
        Path(bad[r]).name for r in ("wrong spacing", "zero spacing")
    )
    assert len(pd.read_csv(out / data_ct.CT_TABLE)) == N // 2
    text = summary.format()
    for reason in summary.skipped_volumes:
        assert reason in text
