"""The phantom's units of work: one MIMIC-part patient, one RSNA patient or one COVIDx image per task.

Each task draws from its own random stream (:func:`~medst.phantom.plan.stream_rng`), writes its image files
and report texts, and returns its table rows as :class:`~medst.phantom.rows.Tables`; the tasks are therefore
independent and run in any number of worker processes (:func:`run_task` is what a pool maps).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from medst.phantom.anatomy import Lesion, lesions_for, make_anatomy, make_sites
from medst.phantom.ct import CtTask
from medst.phantom.plan import (
    FINDING_SIDES,
    FINDINGS,
    MSCXRT_FINDINGS,
    SEQUENCE_LENGTH,
    STREAM_COVIDX,
    STREAM_RSNA,
    StudyPlan,
    draw_exposure,
    image_shape,
    plan_patient,
    stream_rng,
)
from medst.phantom.render import render_view
from medst.phantom.reports import FindingState, make_report
from medst.phantom.rows import (
    BoxRow,
    CovidxRow,
    CtTables,
    MetadataRow,
    MscxrtRow,
    ProgressionRow,
    RsnaRow,
    SequenceRow,
    SplitRow,
    StudyRow,
    Tables,
)
from medst.phantom.writers import MIMIC_DIR, write_dicom

COVIDX_LABELS = ("normal", "pneumonia", "COVID-19")
_VIEW_CODE = {"PA": "postero-anterior", "AP": "antero-posterior", "LATERAL": "lateral", "LL": "left lateral"}


class PatientTask(NamedTuple):
    """One MIMIC-part patient: ``index`` of ``n_patients`` in the cohort of ``seed``, in ``split``, written
    under the folder ``out``."""

    seed: int
    index: int
    n_patients: int
    image_size: int
    split: str
    out: str

    def run(self) -> Tables:
        return patient_tables(self)


class RsnaTask(NamedTuple):
    """One RSNA Pneumonia patient (a DICOM image) written under ``out``."""

    seed: int
    index: int
    image_size: int
    out: str

    def run(self) -> Tables:
        return rsna_tables(self)


class CovidxTask(NamedTuple):
    """One COVIDx image (a PNG file) written under ``out``."""

    seed: int
    index: int
    image_size: int
    out: str

    def run(self) -> Tables:
        return covidx_tables(self)


Task = PatientTask | RsnaTask | CovidxTask | CtTask


def run_task(task: Task) -> Tables | CtTables:
    """Run one task (module level, so that a process pool can pickle it)."""
    return task.run()


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


def patient_tables(task: PatientTask) -> Tables:
    """Plan and render one patient: its JPEG images and reports in the MIMIC-CXR-JPG layout, and its rows of
    the metadata, split, ground-truth and MS-CXR-T tables (the latter for test patients only)."""
    plan = plan_patient(task.seed, task.index, task.n_patients, task.image_size)
    root = Path(task.out) / MIMIC_DIR
    rows = Tables()
    subject, split = plan.subject_id, task.split
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
            r = render_view(
                plan.anatomy, lesions, image.view, image.shape, image.exposure, np.random.default_rng(image.noise_seed)
            )
            Image.fromarray(r.image).save(study_dir / f"{image.dicom_id}.jpg", format="JPEG", quality=95)
            desc = _procedure(st)
            rows.metadata.append(
                MetadataRow(
                    dicom_id=image.dicom_id,
                    subject_id=subject,
                    study_id=st.study_id,
                    PerformedProcedureStepDescription=desc,
                    ViewPosition=image.position,
                    Rows=image.shape.rows,
                    Columns=image.shape.columns,
                    StudyDate=int(st.date.strftime("%Y%m%d")),
                    StudyTime=_fmt(st.time),
                    ProcedureCodeSequence_CodeMeaning=desc,
                    ViewCodeSequence_CodeMeaning=_VIEW_CODE[image.position],
                    PatientOrientationCodeSequence_CodeMeaning="Recumbent" if st.frontal.position == "AP" else "Erect",
                )
            )
            rows.split.append(SplitRow(dicom_id=image.dicom_id, study_id=st.study_id, subject_id=subject, split=split))
            for j, les in enumerate(r.lesions):
                box = r.box(j)
                visible.setdefault(les.finding, {}).setdefault(image.view, False)
                if box is not None:
                    visible[les.finding][image.view] = True
                    rows.boxes.append(
                        BoxRow(dicom_id=image.dicom_id, view=image.view, finding=les.finding, **box._asdict())
                    )
        prev = plan.studies[st.index - 1] if st.index else None
        states = []
        for f in FINDINGS:
            sev = st.severity[f]
            if st.lateral_only(f) and visible.get(f, {}).get("frontal", False):
                raise RuntimeError(
                    f"phantom: subject {subject} study {st.study_id}: the small {f} meant for the "
                    f"lateral view only is visible on the frontal image"
                )
            was_present = prev is not None and prev.severity[f] > 0
            states.append(
                FindingState(
                    finding=f,
                    severity=sev,
                    previous=None if prev is None else prev.severity[f],
                    side=plan.sides[f] if sev > 0 or was_present else "",
                    change=st.progression[f],
                    lobe=plan.anatomy.sites.get(f"{f}_{plan.sides[f]}", {}).get("lobe", ""),
                    lateral_only=st.lateral_only(f),
                )
            )
        text = make_report(
            states,
            view=st.frontal.position,
            lateral=st.lateral is not None,
            prior_date=None if prev is None else prev.date.strftime("%m/%d/%Y"),
            sex=plan.sex,
            rng=np.random.default_rng(st.report_seed),
            findings_section=st.findings_section,
        )
        (rdir / f"s{st.study_id}.txt").write_text(text, encoding="utf-8")
        lat = st.lateral
        per_finding = {}
        for f in FINDINGS:
            sev = st.severity[f]
            per_finding.update(
                {
                    f"{f}_severity": _fmt(sev),
                    f"{f}_side": plan.sides[f] if sev > 0 else "",
                    f"{f}_lateral_only": int(st.lateral_only(f)),
                }
            )
        rows.studies.append(
            StudyRow(
                subject_id=subject,
                study_id=st.study_id,
                study_index=st.index,
                split=split,
                frontal_dicom_id=st.frontal.dicom_id,
                frontal_view=st.frontal.position,
                lateral_dicom_id="" if lat is None else lat.dicom_id,
                lateral_view="" if lat is None else lat.position,
                **per_finding,
            )
        )
        if prev is not None:
            rows.progression.append(
                ProgressionRow(
                    subject_id=subject,
                    study_id=st.study_id,
                    previous_study_id=prev.study_id,
                    **{f"{f}_progression": st.progression[f] for f in FINDINGS},
                )
            )
            if split == "test":
                rows.mscxrt.append(
                    MscxrtRow(
                        dicom_id=st.frontal.dicom_id,
                        previous_dicom_id=prev.frontal.dicom_id,
                        study_id=st.study_id,
                        previous_study_id=prev.study_id,
                        subject_id=subject,
                        **{f"{f}_progression": st.progression[f] for f in MSCXRT_FINDINGS},
                    )
                )
    ids = [st.study_id for st in plan.studies]
    for k in range(len(ids) - SEQUENCE_LENGTH + 1):
        rows.sequences.append(
            SequenceRow(
                split=split,
                subject_id=subject,
                sequence_index=k,
                study_ids=";".join(str(i) for i in ids[k : k + SEQUENCE_LENGTH]),
            )
        )
    return rows


def rsna_tables(task: RsnaTask) -> Tables:
    """One RSNA patient: a single frontal DICOM, pneumonia-positive with boxes (~35 %) or negative (some with
    other, non-opacity findings). Returns its label rows (one per box; one empty row when negative)."""
    rng = stream_rng(task.seed, STREAM_RSNA, task.index)
    anatomy = make_anatomy(rng)
    anatomy.sites = make_sites(rng, anatomy)
    patient_id = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    lesions: list[Lesion] = []
    positive = rng.random() < 0.35
    if positive:
        side = ("right", "left", "bilateral")[int(rng.choice(3, p=[0.45, 0.35, 0.2]))]
        lesions = lesions_for("pneumonia", rng.uniform(0.45, 1.0), side, anatomy)
    elif rng.random() < 0.4:
        other = ("pleural_effusion", "cardiomegaly", "pneumothorax")[int(rng.integers(3))]
        names, p = FINDING_SIDES[other]
        lesions = lesions_for(other, rng.uniform(0.3, 0.9), names[int(rng.choice(len(names), p=p))], anatomy)
    ap = rng.random() < 0.45
    size = task.image_size
    r = render_view(
        anatomy,
        lesions,
        "frontal",
        (size, size),
        draw_exposure(rng, "frontal", ap),
        np.random.default_rng(int(rng.integers(2**31))),
    )
    write_dicom(
        Path(task.out) / "rsna" / "stage_2_train_images" / f"{patient_id}.dcm",
        r.image,
        rng,
        patient_id,
        "AP" if ap else "PA",
    )
    boxes = [r.box(j) for j, les in enumerate(r.lesions) if les.finding == "pneumonia"]
    labels = [
        RsnaRow(
            patientId=patient_id,
            x=f"{b.x_min:.1f}",
            y=f"{b.y_min:.1f}",
            width=f"{b.x_max - b.x_min:.1f}",
            height=f"{b.y_max - b.y_min:.1f}",
            Target=1,
        )
        for b in boxes
        if b is not None
    ]
    return Tables(rsna=labels or [RsnaRow(patientId=patient_id, x="", y="", width="", height="", Target=0)])


def covidx_tables(task: CovidxTask) -> Tables:
    """One COVIDx image: normal, pneumonia (focal lobar consolidation) or COVID-19 (bilateral peripheral,
    basal opacities); labels cycle so classes stay balanced, every fifth triple goes to the test list."""
    rng = stream_rng(task.seed, STREAM_COVIDX, task.index)
    label = COVIDX_LABELS[task.index % 3]
    split = "test" if (task.index // 3) % 5 == 0 else "train"
    anatomy = make_anatomy(rng)
    anatomy.sites = make_sites(rng, anatomy)
    if label == "pneumonia":
        side = ("right", "left")[int(rng.integers(2))]
        lesions = lesions_for("consolidation", rng.uniform(0.5, 1.0), side, anatomy)
    elif label == "COVID-19":
        lesions = lesions_for("covid", rng.uniform(0.4, 1.0), "bilateral", anatomy)
    else:
        lesions = []
    ap = rng.random() < 0.4
    r = render_view(
        anatomy,
        lesions,
        "frontal",
        image_shape(rng, task.image_size),
        draw_exposure(rng, "frontal", ap),
        np.random.default_rng(int(rng.integers(2**31))),
    )
    name = f"{rng.bytes(8).hex()}.png"
    img = Image.fromarray(r.image)
    if rng.random() < 0.3:
        img = img.convert("RGB")
    img.save(Path(task.out) / "covidx" / split / name, format="PNG", compress_level=6)
    source = ("site_a", "site_b", "site_c", "site_d")[int(rng.integers(4))]
    return Tables(
        covidx=[CovidxRow(split=split, patient_id=f"{100000 + task.index}", filename=name, label=label, source=source)]
    )
