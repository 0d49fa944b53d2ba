"""The phantom: synthetic longitudinal, multi-view chest X-ray studies with reports, in the real formats.

No real chest X-ray data can be shipped, so ``synthesize`` writes patients with 1–6 studies over time,
each a frontal image, often a lateral image and a free-text report, laid out exactly like
MIMIC-CXR-JPG, plus MS-CXR-T (temporal labels and sentence pairs), RSNA Pneumonia (DICOM) and COVIDx
(PNG lists) counterparts, and the ground truth behind all of it (chapter 1 of the book,
``book/01_data.ipynb``). The same preparation and loading code then runs on the phantom and on the real data.

Images come from one 3-D description per patient (``phantom_render``); findings are 3-D lesions whose
severity follows a trajectory over the studies, so every consecutive pair of studies has a true
improving / stable / worsening label per finding (Method §1, §6, §8). Reports (``phantom_reports``)
describe the current state and the change since the prior study.

Determinism: every patient draws from its own ``SeedSequence([seed, stream, index])``, so the files are
byte-identical for a seed whatever the number of worker processes. Layout under ``out_dir``::

    mimic-cxr-jpg/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg
    mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv, mimic-cxr-2.0.0-split.csv
    mimic-cxr-jpg/mimic-cxr-reports/files/pXX/pSUBJECT/sSTUDY.txt
    ms-cxr-t/MS_CXR_T_temporal_image_classification_v1.0.0.csv, MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv
    rsna/stage_2_train_images/<patientId>.dcm, rsna/stage_2_train_labels.csv
    covidx/{train,test}/*.png, covidx/{train,test}.txt
    ground_truth/{studies,progression,boxes,sequences}.csv
    phantom.json
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import multiprocessing as mp
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from medst.data import phantom_render as R
from medst.data.phantom_reports import FindingState, make_report, sentence_pairs

FINDINGS = ("pleural_effusion", "consolidation", "edema", "pneumothorax", "pneumonia", "cardiomegaly")
MSCXRT_FINDINGS = ("consolidation", "edema", "pleural_effusion", "pneumonia", "pneumothorax")
VERSION = "1.0"
SEQUENCE_LENGTH = 4          # studies per pre-training sequence (Method §1)
MAX_STUDIES = 6
N_SENTENCE_PAIRS = 360

_STREAM_PATIENT, _STREAM_COUNT, _STREAM_SPLIT, _STREAM_RSNA, _STREAM_COVIDX, _STREAM_TEXT = range(6)
_INVOLVED = {"pleural_effusion": 0.4, "consolidation": 0.3, "edema": 0.3, "pneumothorax": 0.25,
             "pneumonia": 0.3, "cardiomegaly": 0.3}
_SIDES = {"pleural_effusion": (("right", "left", "bilateral"), (0.4, 0.3, 0.3)),
          "consolidation": (("right", "left"), (0.55, 0.45)),
          "pneumonia": (("right", "left", "bilateral"), (0.45, 0.4, 0.15)),
          "pneumothorax": (("right", "left"), (0.5, 0.5)),
          "edema": (("bilateral",), (1.0,)), "cardiomegaly": (("",), (1.0,))}
_CYCLE = ("stable", "worsening", "improving")   # improving last: it may resolve the finding
_VIEW_CODE = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}
_MIMIC = "mimic-cxr-jpg"
_OUTPUTS = (_MIMIC, "ms-cxr-t", "rsna", "covidx", "ground_truth", "phantom.json")


def _rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, int(index)]))


# ----------------------------------------------------------------------------------------------------------
# planning one patient


@dataclass
class ImagePlan:
    """One stored image: its id, view, size and acquisition (exposure and noise seed)."""

    dicom_id: str
    view: str                       # "frontal" | "lateral"
    position: str                   # ViewPosition: PA, AP, LATERAL, LL
    shape: tuple[int, int]          # (Rows, Columns)
    exposure: R.Exposure
    noise_seed: int


@dataclass
class StudyPlan:
    """One study: when, which findings how severe (and how they changed), its images and its report seed."""

    index: int                      # 0-based position in time
    study_id: int
    date: dt.date
    time: float                     # HHMMSS.fff
    severity: dict[str, float]      # per finding, 0 = absent
    progression: dict[str, str]     # per finding vs the previous study ("" if none / absent in both)
    frontal: ImagePlan
    lateral: Optional[ImagePlan]
    report_seed: int
    findings_section: bool

    def lateral_only(self, finding: str) -> bool:
        """A small posterior pleural effusion: present, visible on the lateral view only."""
        sev = self.severity[finding]
        return finding == "pleural_effusion" and 0 < sev <= R.LATERAL_ONLY_MAX


@dataclass
class PatientPlan:
    """One MIMIC-part patient: ids, the 3-D anatomy, a side per finding and the time-ordered studies."""

    index: int
    subject_id: int
    sex: str
    anatomy: R.Anatomy
    sides: dict[str, str]
    studies: list[StudyPlan]

    def lesions(self, study: int, exclude: Sequence[str] = ()) -> list[R.Lesion]:
        """The 3-D lesions of study ``study`` (findings in ``exclude`` left out)."""
        st = self.studies[study]
        return [les for f in FINDINGS if f not in exclude and st.severity[f] > 0
                for les in R.lesions_for(f, st.severity[f], self.sides[f], self.anatomy)]


def n_studies(seed: int, index: int) -> int:
    """Number of studies of patient ``index`` (1..6), from its own stream so the split can be planned first."""
    return 1 + int(_rng(seed, _STREAM_COUNT, index).choice(MAX_STUDIES, p=[0.12, 0.13, 0.15, 0.2, 0.2, 0.2]))


def _course(rng: np.random.Generator, n: int, finding: str, rotation: int) -> tuple[np.ndarray, list[str]]:
    """Severity over ``n`` studies and the change labels between consecutive ones.

    A present finding improves (by 0.15–0.45, possibly to resolution), stays (±0.03) or worsens (by
    0.15–0.45); an absent one may appear (worsening). Changes follow the cycle stable → worsening →
    improving from a per-patient starting point ``rotation`` (a random feasible change replaces an impossible
    one), so the three labels stay balanced even in a small cohort. Small pleural effusions
    (≤ LATERAL_ONLY_MAX) are common: they are the ones seen on the lateral view only.

    Returns:
        severities [n] (0 = absent) and n - 1 labels ("" where the finding is absent in both studies).
    """
    sev, labels = np.zeros(n), [""] * (n - 1)
    if rng.random() >= _INVOLVED[finding]:
        return sev, labels

    def fresh() -> float:
        if finding == "pleural_effusion" and rng.random() < 0.4:
            return float(rng.uniform(0.1, R.LATERAL_ONLY_MAX))
        return float(rng.uniform(0.25, 0.9))

    sev[0] = fresh() if (n == 1 or rng.random() < 0.8) else 0.0
    turn = rotation
    for t in range(1, n):
        cur = sev[t - 1]
        if cur <= 0:
            if rng.random() < 0.45:   # the finding appears: a worsening; the cycle goes on from there
                sev[t], labels[t - 1] = fresh(), "worsening"
                turn = 0
            continue
        options = ["improving", "stable"] + (["worsening"] if cur <= 0.8 else [])
        label = _CYCLE[turn % 3]
        if label not in options:
            label = options[int(rng.integers(len(options)))]
        turn += 1
        if label == "improving":
            new = cur - rng.uniform(0.15, 0.45)
            new = 0.0 if new < 0.1 else new
        elif label == "worsening":
            new = min(1.0, cur + rng.uniform(0.15, 0.45))
        else:   # stable: stay on the same side of the lateral-only limit
            lo, hi = (0.1, R.LATERAL_ONLY_MAX) if cur <= R.LATERAL_ONLY_MAX else (R.LATERAL_ONLY_MAX + 1e-3, 1.0)
            new = float(np.clip(cur + rng.uniform(-0.03, 0.03), lo, hi))
        sev[t], labels[t - 1] = round(new, 3), label
    sev[0] = round(sev[0], 3)
    return sev, labels


def _shape(rng: np.random.Generator, size: int, landscape: float = 0.15) -> tuple[int, int]:
    """Non-square like real radiographs: mostly portrait, some landscape."""
    if rng.random() >= landscape:
        return size, int(round(size * rng.uniform(0.8, 1.0)))
    return int(round(size * rng.uniform(0.85, 1.0))), size


def _exposure(rng: np.random.Generator, view: str, ap: bool) -> R.Exposure:
    shift = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), rng.uniform(-0.05, 0.05))
    if view == "frontal":
        return R.Exposure(shift=shift, magnification=rng.uniform(0.96, 1.04),
                          dome_shift=rng.uniform(0.0, 0.06) if ap else rng.uniform(-0.03, 0.03),
                          k=rng.uniform(1.85, 2.15), lo=rng.uniform(0.17, 0.23), gamma=rng.uniform(0.7, 0.8),
                          noise=rng.uniform(1.5, 3.5))
    return R.Exposure(shift=shift, magnification=rng.uniform(1.1, 1.2), dome_shift=rng.uniform(-0.03, 0.03),
                      k=rng.uniform(0.9, 1.1), lo=rng.uniform(0.17, 0.23), gamma=1.0, noise=rng.uniform(1.5, 3.5))


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2 ** 32, size=5, dtype=np.uint64))


def plan_patient(seed: int, index: int, n_patients: int, image_size: int) -> PatientPlan:
    """Everything about MIMIC-part patient ``index``: anatomy, studies, findings, views, ids, dates."""
    rng = _rng(seed, _STREAM_PATIENT, index)
    n = n_studies(seed, index)
    anatomy = R.make_anatomy(rng)
    anatomy.sites = R.make_sites(rng, anatomy)
    sides, courses = {}, {}
    for f in FINDINGS:
        names, p = _SIDES[f]
        sides[f] = names[int(rng.choice(len(names), p=p))]
        courses[f] = _course(rng, n, f, rotation=index + FINDINGS.index(f))
    stride = max(1, min(97, 9_990_000 // max(n_patients, 1)))
    subject_id = 10_000_000 + index * stride + int(rng.integers(stride))
    study_ids = 50_000_000 + index * 60 + rng.choice(60, size=n, replace=False)
    date = dt.date(2150, 1, 1) + dt.timedelta(days=int(rng.integers(0, 40 * 365)))
    studies = []
    for t in range(n):
        if t:
            kind = rng.choice(3, p=[0.35, 0.4, 0.25])
            date = date + dt.timedelta(days=int(rng.integers(*((1, 8), (8, 91), (91, 366))[kind])))
        hh, mm, ss, ms = rng.integers(6, 24), rng.integers(60), rng.integers(60), rng.integers(1000)
        severity = {f: float(courses[f][0][t]) for f in FINDINGS}
        progression = {f: (courses[f][1][t - 1] if t else "") for f in FINDINGS}
        ap = rng.random() < 0.25
        frontal = ImagePlan(_dicom_id(rng), "frontal", "AP" if ap else "PA", _shape(rng, image_size),
                            _exposure(rng, "frontal", ap), int(rng.integers(2 ** 31)))
        need_lateral = 0 < severity["pleural_effusion"] <= R.LATERAL_ONLY_MAX
        lateral = None
        if rng.random() < (0.15 if ap else 0.7) or need_lateral:
            lateral = ImagePlan(_dicom_id(rng), "lateral", "LL" if rng.random() < 0.15 else "LATERAL",
                                _shape(rng, image_size, landscape=0.0), _exposure(rng, "lateral", ap),
                                int(rng.integers(2 ** 31)))
        studies.append(StudyPlan(t, int(study_ids[t]), date, hh * 10000 + mm * 100 + ss + ms / 1000, severity,
                                 progression, frontal, lateral, int(rng.integers(2 ** 31)), rng.random() >= 0.15))
    return PatientPlan(index, subject_id, "woman" if rng.random() < 0.5 else "man", anatomy, sides, studies)


def render_study_view(plan: PatientPlan, study: int, view: str, *, exclude: Sequence[str] = (),
                      noise: bool = True) -> R.ViewRender:
    """Render one image of a planned study exactly as ``synthesize`` stores it (before JPEG coding);
    ``exclude`` leaves findings out and ``noise=False`` gives the noise-free image, e.g. to show that a
    finding is invisible in a view."""
    st = plan.studies[study]
    image = st.frontal if view == "frontal" else st.lateral
    if image is None:
        raise ValueError(f"phantom.render_study_view: study {st.study_id} of subject {plan.subject_id} has no {view}")
    return R.render_view(plan.anatomy, plan.lesions(study, exclude), view, image.shape, image.exposure,
                         np.random.default_rng(image.noise_seed) if noise else None)


# ----------------------------------------------------------------------------------------------------------
# one patient -> files and table rows


def _subject_dir(root: Path, subject_id: int) -> Path:
    s = str(subject_id)
    return root / "files" / f"p{s[:2]}" / f"p{s}"


def _procedure(st: StudyPlan) -> str:
    view = st.frontal.position
    if st.lateral is not None:
        return f"CHEST ({view} AND LAT)"
    return "CHEST (PA ONLY)" if view == "PA" else "CHEST (PORTABLE AP)"


def _fmt(x: float) -> str:
    return f"{x:.3f}"


def _patient_task(seed: int, index: int, n_patients: int, image_size: int, split: str, out: str) -> dict:
    plan = plan_patient(seed, index, n_patients, image_size)
    root = Path(out) / _MIMIC
    rows: dict[str, list] = {k: [] for k in ("metadata", "split", "studies", "progression", "boxes", "sequences",
                                             "mscxrt")}
    subject = plan.subject_id
    sdir, rdir = _subject_dir(root, subject), _subject_dir(root / "mimic-cxr-reports", subject)
    rdir.mkdir(parents=True, exist_ok=True)
    for st in plan.studies:
        lesions = plan.lesions(st.index)
        study_dir = sdir / f"s{st.study_id}"
        study_dir.mkdir(parents=True, exist_ok=True)
        visible: dict[str, dict[str, bool]] = {}
        for image in (st.frontal, st.lateral):
            if image is None:
                continue
            r = R.render_view(plan.anatomy, lesions, image.view, image.shape, image.exposure,
                              np.random.default_rng(image.noise_seed))
            Image.fromarray(r.image).save(study_dir / f"{image.dicom_id}.jpg", format="JPEG", quality=95)
            desc = _procedure(st)
            posture = "Recumbent" if st.frontal.position == "AP" else "Erect"
            rows["metadata"].append((image.dicom_id, subject, st.study_id, desc, image.position, image.shape[0],
                                     image.shape[1], int(st.date.strftime("%Y%m%d")), _fmt(st.time), desc,
                                     _VIEW_CODE[image.position], posture))
            rows["split"].append((image.dicom_id, st.study_id, subject, split))
            for j, les in enumerate(r.lesions):
                box = r.box(j)
                visible.setdefault(les.finding, {}).setdefault(image.view, False)
                if box is not None:
                    visible[les.finding][image.view] = True
                    rows["boxes"].append((image.dicom_id, image.view, les.finding, *box))
        prev = plan.studies[st.index - 1] if st.index else None
        states = []
        for f in FINDINGS:
            sev = st.severity[f]
            if st.lateral_only(f) and visible.get(f, {}).get("frontal", False):
                raise RuntimeError(f"phantom: subject {subject} study {st.study_id}: the small {f} meant for the "
                                   f"lateral view only is visible on the frontal image")
            lobe = plan.anatomy.sites.get(f"{f}_{plan.sides[f]}", {}).get("lobe", "")
            states.append(FindingState(f, sev, None if prev is None else prev.severity[f],
                                       plan.sides[f] if sev > 0 or (prev is not None and prev.severity[f] > 0) else "",
                                       st.progression[f], lobe, st.lateral_only(f)))
        text = make_report(states, view=st.frontal.position, lateral=st.lateral is not None,
                           prior_date=None if prev is None else prev.date.strftime("%m/%d/%Y"), sex=plan.sex,
                           rng=np.random.default_rng(st.report_seed), findings_section=st.findings_section)
        (rdir / f"s{st.study_id}.txt").write_text(text, encoding="utf-8")
        lat = st.lateral
        per_finding = []
        for f in FINDINGS:
            sev = st.severity[f]
            per_finding += [_fmt(sev), plan.sides[f] if sev > 0 else "", int(st.lateral_only(f))]
        rows["studies"].append((subject, st.study_id, st.index, split, st.frontal.dicom_id, st.frontal.position,
                                "" if lat is None else lat.dicom_id, "" if lat is None else lat.position, *per_finding))
        if prev is not None:
            rows["progression"].append((subject, st.study_id, prev.study_id, *(st.progression[f] for f in FINDINGS)))
            if split == "test":
                rows["mscxrt"].append((st.frontal.dicom_id, prev.frontal.dicom_id, st.study_id, prev.study_id, subject,
                                       *(st.progression[f] for f in MSCXRT_FINDINGS)))
    ids = [st.study_id for st in plan.studies]
    for k in range(len(ids) - SEQUENCE_LENGTH + 1):
        rows["sequences"].append((split, subject, k, ";".join(str(i) for i in ids[k:k + SEQUENCE_LENGTH])))
    return rows


# ----------------------------------------------------------------------------------------------------------
# RSNA Pneumonia (DICOM) and COVIDx (PNG)


def _uid(rng: np.random.Generator) -> str:
    return "2.25." + str(uuid.UUID(bytes=rng.bytes(16)).int)


def _write_dicom(path: Path, pixels: np.ndarray, rng: np.random.Generator, patient_id: str, view: str) -> dict:
    """Write an 8-bit display image [H, W] as a DICOM radiograph with a random but valid encoding:
    MONOCHROME2 or MONOCHROME1 (inverted values), 8, 12 or 16 stored bits, with Rescale and VOI window for
    more than 8 bits. Returns the encoding chosen."""
    from pydicom.dataset import FileMetaDataset, Dataset
    from pydicom.uid import ExplicitVRLittleEndian
    import pydicom

    mono1 = rng.random() < 0.3
    bits = int(rng.choice([8, 12, 16], p=[0.4, 0.35, 0.25]))
    u = pixels.astype(np.float64) / 255.0
    ds = Dataset()
    if bits == 8:
        stored = np.rint(255 * (1 - u if mono1 else u)).astype(np.uint8)
    else:
        top = 2 ** bits - 1
        stored = np.rint(top * (0.05 + 0.9 * (1 - u if mono1 else u))).astype(np.uint16)
        slope, intercept = float(rng.choice([1.0, 0.5])), float(rng.choice([0.0, -1024.0]))
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = f"{slope:g}", f"{intercept:g}", "US"
        ds.WindowCenter = f"{top * 0.5 * slope + intercept:g}"
        ds.WindowWidth = f"{top * 0.9 * slope:g}"
    sop_class = "1.2.840.10008.5.1.4.1.1.1" if rng.random() < 0.6 else "1.2.840.10008.5.1.4.1.1.1.1"
    sop_uid = _uid(rng)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(rng), _uid(rng)
    ds.Modality = "CR" if sop_class.endswith(".1.1") else "DX"
    ds.PatientID = ds.PatientName = patient_id
    ds.PatientSex = "F" if rng.random() < 0.45 else "M"
    ds.PatientAge = f"{int(rng.integers(18, 90)):03d}Y"
    ds.BodyPartExamined, ds.ViewPosition = "CHEST", view
    ds.StudyDate, ds.StudyTime, ds.SeriesNumber, ds.InstanceNumber = "19010101", "000000.00", "1", "1"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing = ["0.168", "0.168"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = (8 if bits == 8 else 16), bits, bits - 1, 0
    ds.PixelData = stored.tobytes()
    if int(pydicom.__version__.split(".")[0]) >= 3:
        pydicom.dcmwrite(path, ds, enforce_file_format=True, little_endian=True, implicit_vr=False)
    else:  # pydicom 2.x
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return {"photometric": ds.PhotometricInterpretation, "bits": bits}


def _rsna_task(seed: int, index: int, image_size: int, out: str) -> dict:
    """One RSNA patient: a single frontal DICOM, pneumonia-positive with boxes (~35 %) or negative (some with
    other, non-opacity findings)."""
    rng = _rng(seed, _STREAM_RSNA, index)
    anatomy = R.make_anatomy(rng)
    anatomy.sites = R.make_sites(rng, anatomy)
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    lesions: list[R.Lesion] = []
    positive = rng.random() < 0.35
    if positive:
        side = ("right", "left", "bilateral")[int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
        lesions = R.lesions_for("pneumonia", rng.uniform(0.45, 1.0), side, anatomy)
    elif rng.random() < 0.4:
        other = ("pleural_effusion", "cardiomegaly", "pneumothorax")[int(rng.integers(3))]
        names, p = _SIDES[other]
        lesions = R.lesions_for(other, rng.uniform(0.3, 0.9), names[int(rng.choice(len(names), p=p))], anatomy)
    ap = rng.random() < 0.45
    r = R.render_view(anatomy, lesions, "frontal", (image_size, image_size), _exposure(rng, "frontal", ap),
                      np.random.default_rng(int(rng.integers(2 ** 31))))
    enc = _write_dicom(Path(out) / "rsna" / "stage_2_train_images" / f"{patient_id}.dcm", r.image, rng, patient_id,
                       "AP" if ap else "PA")
    boxes = [r.box(j) for j, les in enumerate(r.lesions) if les.finding == "pneumonia"]
    boxes = [b for b in boxes if b is not None]
    rows = [(patient_id, f"{x0:.1f}", f"{y0:.1f}", f"{x1 - x0:.1f}", f"{y1 - y0:.1f}", 1) for x0, y0, x1, y1 in boxes]
    return {"rsna": rows or [(patient_id, "", "", "", "", 0)], "encoding": [enc]}


COVIDX_LABELS = ("normal", "pneumonia", "COVID-19")


def _covidx_task(seed: int, index: int, image_size: int, out: str) -> dict:
    """One COVIDx image: normal, pneumonia (focal lobar consolidation) or COVID-19 (bilateral peripheral,
    basal opacities); labels cycle so classes stay balanced, every fifth triple goes to the test list."""
    rng = _rng(seed, _STREAM_COVIDX, index)
    label = COVIDX_LABELS[index % 3]
    split = "test" if (index // 3) % 5 == 0 else "train"
    anatomy = R.make_anatomy(rng)
    anatomy.sites = R.make_sites(rng, anatomy)
    if label == "pneumonia":
        side = ("right", "left")[int(rng.integers(2))]
        lesions = R.lesions_for("consolidation", rng.uniform(0.5, 1.0), side, anatomy)
    elif label == "COVID-19":
        lesions = R.lesions_for("covid", rng.uniform(0.4, 1.0), "bilateral", anatomy)
    else:
        lesions = []
    ap = rng.random() < 0.4
    r = R.render_view(anatomy, lesions, "frontal", _shape(rng, image_size), _exposure(rng, "frontal", ap),
                      np.random.default_rng(int(rng.integers(2 ** 31))))
    name = f"{rng.bytes(8).hex()}.png"
    img = Image.fromarray(r.image)
    if rng.random() < 0.3:
        img = img.convert("RGB")
    img.save(Path(out) / "covidx" / split / name, format="PNG", compress_level=6)
    source = ("site_a", "site_b", "site_c", "site_d")[int(rng.integers(4))]
    return {"covidx": [(split, f"{100000 + index}", name, label, source)]}


# ----------------------------------------------------------------------------------------------------------
# the whole data set


def _run(task: tuple) -> dict:
    kind, args = task
    return {"mimic": _patient_task, "rsna": _rsna_task, "covidx": _covidx_task}[kind](*args)


def _splits(seed: int, counts: np.ndarray) -> list[str]:
    """Split by patient ≈ 90 / 5 / 5. Test patients (the MS-CXR-T ones) are drawn among patients with at
    least two studies, as MS-CXR-T's are, so that they contribute image pairs."""
    n = len(counts)
    rng = _rng(seed, _STREAM_SPLIT)
    order = rng.permutation(n)
    n_small = max(1, round(0.05 * n)) if n >= 3 else 0
    multi = [i for i in order if counts[i] >= 2]
    test = set(multi[:n_small])
    rest = [i for i in order if i not in test]
    validate = set(rest[:n_small])
    return ["test" if i in test else "validate" if i in validate else "train" for i in range(n)]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def synthesize(out_dir: Union[str, Path], n_patients: int = 200, image_size: int = 128, seed: int = 0,
               workers: Optional[int] = None, progress: bool = True, *, n_rsna: Optional[int] = None,
               n_covidx: Optional[int] = None) -> dict:
    """Write the phantom data set under ``out_dir`` and return its summary (also in ``phantom.json``).

    Args:
        out_dir: output folder; earlier phantom outputs in it (and only those) are replaced.
        n_patients: MIMIC-part patients.
        image_size: long side of the stored images in pixels (images are not square).
        seed: the same seed gives byte-identical files, whatever ``workers``.
        workers: processes (None: all cores; 0 or 1: in this process).
        progress: show a tqdm progress bar.
        n_rsna, n_covidx: RSNA patients and COVIDx images (default ~10 % of ``n_patients``, at least 40, and
            ~12 %, at least 60).
    """
    if n_patients < 1 or image_size < 32:
        raise ValueError(f"phantom.synthesize: need n_patients >= 1 and image_size >= 32, got {n_patients}, "
                         f"{image_size}")
    out = Path(out_dir)
    if (out / "phantom.json").exists():
        for name in _OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    for d in (out / _MIMIC / "files", out / "rsna" / "stage_2_train_images", out / "covidx" / "train",
              out / "covidx" / "test"):
        d.mkdir(parents=True, exist_ok=True)
    counts = np.array([n_studies(seed, i) for i in range(n_patients)])
    splits = _splits(seed, counts)
    n_rsna = max(40, round(0.10 * n_patients)) if n_rsna is None else n_rsna
    n_covidx = max(60, round(0.12 * n_patients)) if n_covidx is None else n_covidx
    tasks = ([("mimic", (seed, i, n_patients, image_size, splits[i], str(out))) for i in range(n_patients)]
             + [("rsna", (seed, i, image_size, str(out))) for i in range(n_rsna)]
             + [("covidx", (seed, i, image_size, str(out))) for i in range(n_covidx)])
    workers = (os.cpu_count() or 1) if workers is None else workers
    results = []
    with tqdm(total=len(tasks), desc="phantom", unit="task", disable=not progress) as bar:
        if workers <= 1:
            for t in tasks:
                results.append(_run(t))
                bar.update()
        else:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                for res in pool.imap(_run, tasks, chunksize=max(1, min(16, len(tasks) // (8 * workers)))):
                    results.append(res)
                    bar.update()
    rows: dict[str, list] = {"rsna": [], "covidx": []}  # either part may be empty (n_rsna=0: no pydicom needed)
    for res in results:
        for k, v in res.items():
            rows.setdefault(k, []).extend(v)

    mimic = out / _MIMIC
    _write_csv(mimic / "mimic-cxr-2.0.0-metadata.csv",
               ("dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition", "Rows",
                "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
                "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning"),
               sorted(rows["metadata"], key=lambda r: (r[1], r[2], r[0])))
    _write_csv(mimic / "mimic-cxr-2.0.0-split.csv", ("dicom_id", "study_id", "subject_id", "split"),
               sorted(rows["split"], key=lambda r: (r[2], r[1], r[0])))
    per_f = [f"{f}_{k}" for f in FINDINGS for k in ("severity", "side", "lateral_only")]
    gt = out / "ground_truth"
    _write_csv(gt / "studies.csv", ("subject_id", "study_id", "study_index", "split", "frontal_dicom_id",
                                    "frontal_view", "lateral_dicom_id", "lateral_view", *per_f),
               sorted(rows["studies"], key=lambda r: (r[0], r[2])))
    _write_csv(gt / "progression.csv", ("subject_id", "study_id", "previous_study_id",
                                        *(f"{f}_progression" for f in FINDINGS)), sorted(rows["progression"]))
    _write_csv(gt / "boxes.csv", ("dicom_id", "view", "finding", "x_min", "y_min", "x_max", "y_max"),
               sorted(rows["boxes"]))
    _write_csv(gt / "sequences.csv", ("split", "subject_id", "sequence_index", "study_ids"),
               sorted(rows["sequences"], key=lambda r: (r[1], r[2])))
    _write_csv(out / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv",
               ("dicom_id", "previous_dicom_id", "study_id", "previous_study_id", "subject_id",
                *(f"{f}_progression" for f in MSCXRT_FINDINGS)), sorted(rows["mscxrt"], key=lambda r: (r[4], r[2])))
    pairs = sentence_pairs(_rng(seed, _STREAM_TEXT), N_SENTENCE_PAIRS, MSCXRT_FINDINGS)
    _write_csv(out / "ms-cxr-t" / "MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv",
               ("sentence_1", "sentence_2", "category", "subset_name"), [(a, b, c, "RadGraph") for a, b, c in pairs])
    _write_csv(out / "rsna" / "stage_2_train_labels.csv", ("patientId", "x", "y", "width", "height", "Target"),
               sorted(rows["rsna"]))
    covidx = sorted(rows["covidx"], key=lambda r: (r[0], r[1]))
    for split in ("train", "test"):
        lines = [f"{pid} {name} {label} {source}\n" for s, pid, name, label, source in covidx if s == split]
        (out / "covidx" / f"{split}.txt").write_text("".join(lines), encoding="utf-8")

    studies = rows["studies"]
    lat_col = 6
    summary = {
        "seed": int(seed), "n_patients": int(n_patients), "image_size": int(image_size), "version": VERSION,
        "findings": list(FINDINGS),
        "counts": {
            "patients": n_patients,
            "studies": len(studies),
            "images": len(rows["metadata"]),
            "studies_with_lateral": sum(1 for r in studies if r[lat_col]),
            "studies_per_patient": {str(k): int((counts == k).sum()) for k in range(1, MAX_STUDIES + 1)},
            "split_patients": {s: splits.count(s) for s in ("train", "validate", "test")},
            "sequences": len(rows["sequences"]),
            "lateral_only_findings": sum(int(v) for r in studies for v in r[10::3]),
            "boxes": len(rows["boxes"]),
            "mscxrt_image_pairs": len(rows["mscxrt"]),
            "mscxrt_sentence_pairs": len(pairs),
            "rsna_images": n_rsna,
            "rsna_positive": len({r[0] for r in rows["rsna"] if r[5] == 1}),
            "covidx_train": sum(1 for r in covidx if r[0] == "train"),
            "covidx_test": sum(1 for r in covidx if r[0] == "test"),
        },
    }
    (out / "phantom.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> dict:
    """``python -m medst.data.phantom --out DIR [--patients N] [--image-size S] [--seed K] [--workers W]``"""
    p = argparse.ArgumentParser(prog="python -m medst.data.phantom", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--patients", type=int, default=200, help="MIMIC-part patients (default 200)")
    p.add_argument("--image-size", type=int, default=128, help="long image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    summary = synthesize(a.out, a.patients, a.image_size, a.seed, a.workers, not a.quiet)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return summary


if __name__ == "__main__":
    main()
