"""CT volumes beside a MIMIC-CXR-JPG root: reading their NIfTI headers and indexing them for ``medst prepare``.

Input (the layout ``medst synth --ct-fraction F`` writes; a real collection can be laid out the same way)::

    MIMIC_ROOT/ct/ct-metadata.csv                    subject_id, study_id, path, columns, rows, slices,
                                                     spacing_x, spacing_y, spacing_z (mm)
    MIMIC_ROOT/ct/files/pXX/pSUBJECT/sSTUDY.nii.gz   one volume (NIfTI-1, RAS+ affine in mm) of a study

Output (in the prepared folder): ``ct_volumes.csv``, one row per usable volume, in the order of ``studies.csv``
(split, subject, time): subject_id, study_id, split, path (under the MIMIC root), columns, rows, slices,
spacing_x, spacing_y, spacing_z (mm, from the file's header) and text, the report of its study (a volume has no
report of its own: it shares its study's, as the phantom's volumes do; Method §1).

A volume is usable when its study is a usable study of ``studies.csv`` and its file reads completely as a 3-D
volume with the spacing and the number of slices the metadata gives. Nothing is left out silently: every other
volume goes to the :class:`~medst.data.studies.Ledger` as kind "volume" with one of the reasons below (a row of
``skipped.csv``, a warning naming the file and a count in the summary), like a bad radiograph.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from medst.data.cache import parallel_map
from medst.data.studies import Ledger

CT_DIR = "ct"
CT_METADATA_NAME = "ct-metadata.csv"
CT_TABLE = "ct_volumes.csv"
SPACING_TOLERANCE = 1e-3  # relative difference allowed between the header's and the metadata's spacing

# Reasons, as written in skipped.csv and counted in the summary (kind "volume").
MISSING_VOLUME = "missing volume"
CORRUPT_VOLUME = "truncated or corrupt volume"
NOT_3D = "not a 3-D volume"
BAD_SPACING = "wrong voxel spacing"
MISSING_SLICES = "missing slices"
EXTRA_SLICES = "more slices than the metadata"
NO_STUDY = "study not usable"

COLUMNS = [
    "subject_id",
    "study_id",
    "split",
    "path",
    "columns",
    "rows",
    "slices",
    "spacing_x",
    "spacing_y",
    "spacing_z",
    "text",
]


class VolumeCheck(NamedTuple):
    """What :func:`check_volume` found: the volume's ``shape`` (columns, rows, slices) and ``spacing`` (mm) from
    its header, or a ``reason`` (one of the module's reasons) and its ``detail``."""

    shape: tuple[int, ...] = ()
    spacing: tuple[float, ...] = ()
    reason: str = ""
    detail: str = ""


def check_volume(task: tuple[str, int, tuple[float, float, float]]) -> VolumeCheck:
    """Read one volume and check it against its metadata: ``(path, slices, spacing_mm)`` -> :class:`VolumeCheck`.

    In order: the file exists and nibabel reads its header; the data are 3-D; the voxel spacing is finite,
    positive and the metadata's (relative tolerance :data:`SPACING_TOLERANCE`); the number of slices is the
    metadata's; the whole data block decompresses (a truncated file fails here)."""
    import nibabel as nib

    path, slices, spacing = task
    if not os.path.isfile(path):
        return VolumeCheck(reason=MISSING_VOLUME, detail="file not found")
    try:
        img = nib.load(path)
        shape = tuple(int(n) for n in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms())
    except Exception as exc:  # nibabel raises many types for a damaged header
        return VolumeCheck(reason=CORRUPT_VOLUME, detail=f"header: {type(exc).__name__}: {exc}")
    if len(shape) != 3:
        return VolumeCheck(shape, zooms, NOT_3D, f"shape {shape}")
    bad = [
        f"{axis}: {got:g} mm (metadata {want:g})"
        for axis, got, want in zip("xyz", zooms, spacing)
        if not (math.isfinite(got) and got > 0 and abs(got - want) <= SPACING_TOLERANCE * abs(want))
    ]
    if bad:
        return VolumeCheck(shape, zooms, BAD_SPACING, "; ".join(bad))
    if shape[2] != slices:
        reason = MISSING_SLICES if shape[2] < slices else EXTRA_SLICES
        return VolumeCheck(shape, zooms, reason, f"{shape[2]} slices, metadata {slices}")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # EOFError, zlib.error, OSError, ValueError from a short or damaged file
        return VolumeCheck(shape, zooms, CORRUPT_VOLUME, f"data: {type(exc).__name__}: {exc}")
    if data.shape != shape:
        return VolumeCheck(shape, zooms, CORRUPT_VOLUME, f"data shape {data.shape}, header {shape}")
    return VolumeCheck(shape, zooms)


def read_ct_metadata(ct_root: Path) -> pd.DataFrame:
    """``ct-metadata.csv`` of ``ct_root`` (the required columns checked), in subject and study order."""
    path = ct_root / CT_METADATA_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; a ct/ folder needs its {CT_METADATA_NAME}")
    meta = pd.read_csv(path, dtype={"path": str})
    need = ["subject_id", "study_id", "path", "slices", "spacing_x", "spacing_y", "spacing_z"]
    missing = [c for c in need if c not in meta.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(meta.columns)}")
    return meta.sort_values(["subject_id", "study_id"], kind="stable").reset_index(drop=True)


def index_volumes(
    root: Path, studies: pd.DataFrame, out: Path, ledger: Ledger, *, workers: int = 1, progress: bool = False
) -> tuple[int, int]:
    """Index the CT volumes of the MIMIC root ``root`` (its ``ct/`` folder) against the usable ``studies`` (the
    table of ``studies.csv``); write ``out/ct_volumes.csv`` and record every left-out volume in ``ledger``.

    Without a ``ct/`` folder nothing is written (an earlier ``ct_volumes.csv`` in ``out`` is removed). Returns
    (volumes in the metadata, volumes indexed)."""
    ct_root = root / CT_DIR
    table_path = out / CT_TABLE
    if not ct_root.is_dir():
        table_path.unlink(missing_ok=True)
        return 0, 0
    meta = read_ct_metadata(ct_root)
    usable = {(int(r.subject_id), int(r.study_id)): i for i, r in enumerate(studies.itertuples(index=False))}
    todo: list[tuple[int, dict]] = []
    for row in meta.to_dict("records"):
        key = (int(row["subject_id"]), int(row["study_id"]))
        item = ledger.under(f"{CT_DIR}/{row['path']}")
        if key not in usable:
            ledger.add("volume", item, NO_STUDY, f"study s{key[1]} of p{key[0]} is not in studies.csv", warn=False)
        else:
            todo.append((usable[key], row))
    jobs = [
        (
            ledger.under(f"{CT_DIR}/{row['path']}"),
            int(row["slices"]),
            (float(row["spacing_x"]), float(row["spacing_y"]), float(row["spacing_z"])),
        )
        for _, row in todo
    ]
    checks = list(parallel_map(check_volume, jobs, workers, "read CT volumes", progress, "volume"))
    rows = []
    for (position, row), job, check in zip(todo, jobs, checks):
        if check.reason:
            ledger.add("volume", job[0], check.reason, check.detail)
            continue
        st = studies.iloc[position]
        rows.append(
            (
                position,
                {
                    "subject_id": int(st["subject_id"]),
                    "study_id": int(st["study_id"]),
                    "split": st["split"],
                    "path": f"{CT_DIR}/{row['path']}",
                    "columns": check.shape[0],
                    "rows": check.shape[1],
                    "slices": check.shape[2],
                    "spacing_x": round(check.spacing[0], 4),
                    "spacing_y": round(check.spacing[1], 4),
                    "spacing_z": round(check.spacing[2], 4),
                    "text": st["text"],
                },
            )
        )
    ledger.emit()
    rows.sort(key=lambda r: r[0])
    pd.DataFrame([r for _, r in rows], columns=COLUMNS).to_csv(table_path, index=False)
    return len(meta), len(rows)
