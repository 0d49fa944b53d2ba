"""Planning one phantom patient: anatomy, finding courses over time, studies, views, ids and dates.

A :class:`PatientPlan` holds everything random about one MIMIC-part patient, drawn from the patient's own
stream (:func:`stream_rng`), before any pixel is rendered: the 3-D anatomy, a side per finding, and the
time-ordered :class:`StudyPlan` s with their severities, change labels (Method §1, §6) and
:class:`ImagePlan` s. :func:`render_study_view` renders any image of a plan exactly as ``synthesize`` stores
it (before JPEG coding).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from medst.phantom.anatomy import LATERAL_ONLY_MAX, Anatomy, Lesion, lesions_for, make_anatomy, make_sites
from medst.phantom.render import Exposure, ViewRender, render_view

FINDINGS = ("pleural_effusion", "consolidation", "edema", "pneumothorax", "pneumonia", "cardiomegaly")
MSCXRT_FINDINGS = ("consolidation", "edema", "pleural_effusion", "pneumonia", "pneumothorax")
MAX_STUDIES = 6
SEQUENCE_LENGTH = 4  # studies per pre-training sequence (Method §1)

# independent random streams: SeedSequence([seed, stream, index])
STREAM_PATIENT, STREAM_COUNT, STREAM_SPLIT, STREAM_RSNA, STREAM_COVIDX, STREAM_TEXT = range(6)
STREAM_CT_PICK, STREAM_CT = 6, 7  # which patients get a CT volume; each one's study and noise (medst.phantom.ct)

FINDING_SIDES = {  # per finding: the sides it may take and their probabilities
    "pleural_effusion": (("right", "left", "bilateral"), (0.4, 0.3, 0.3)),
    "consolidation": (("right", "left"), (0.55, 0.45)),
    "pneumonia": (("right", "left", "bilateral"), (0.45, 0.4, 0.15)),
    "pneumothorax": (("right", "left"), (0.5, 0.5)),
    "edema": (("bilateral",), (1.0,)),
    "cardiomegaly": (("",), (1.0,)),
}
_INVOLVED = {
    "pleural_effusion": 0.4,
    "consolidation": 0.3,
    "edema": 0.3,
    "pneumothorax": 0.25,
    "pneumonia": 0.3,
    "cardiomegaly": 0.3,
}
_CYCLE = ("stable", "worsening", "improving")  # improving last: it may resolve the finding


def stream_rng(seed: int, stream: int, index: int = 0) -> np.random.Generator:
    """The generator of item ``index`` of ``stream``: the files do not depend on the order of the work."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), stream, int(index)]))


class ImageShape(NamedTuple):
    """An image's size in pixels, as DICOM's (Rows, Columns)."""

    rows: int
    columns: int


class Course(NamedTuple):
    """One finding over a patient's studies: ``severity`` [n] (0 = absent) and the n - 1 change labels between
    consecutive studies (``""`` where the finding is absent in both)."""

    severity: np.ndarray
    labels: list[str]


@dataclass(frozen=True)
class ImagePlan:
    """One stored image: its id, view, size and acquisition (exposure and noise seed)."""

    dicom_id: str
    view: str  # "frontal" | "lateral"
    position: str  # ViewPosition: PA, AP, LATERAL, LL
    shape: ImageShape
    exposure: Exposure
    noise_seed: int


@dataclass(frozen=True)
class StudyPlan:
    """One study: when, which findings how severe (and how they changed), its images and its report seed."""

    index: int  # 0-based position in time
    study_id: int
    date: dt.date
    time: float  # HHMMSS.fff
    severity: dict[str, float]  # per finding, 0 = absent
    progression: dict[str, str]  # per finding vs the previous study ("" if none / absent in both)
    frontal: ImagePlan
    lateral: ImagePlan | None
    report_seed: int
    findings_section: bool

    def lateral_only(self, finding: str) -> bool:
        """A small posterior pleural effusion: present, visible on the lateral view only."""
        sev = self.severity[finding]
        return finding == "pleural_effusion" and 0 < sev <= LATERAL_ONLY_MAX


@dataclass(frozen=True)
class PatientPlan:
    """One MIMIC-part patient: ids, the 3-D anatomy, a side per finding and the time-ordered studies."""

    index: int
    subject_id: int
    sex: str
    anatomy: Anatomy
    sides: dict[str, str]
    studies: list[StudyPlan]

    def lesions(self, study: int, exclude: Sequence[str] = ()) -> list[Lesion]:
        """The 3-D lesions of study ``study`` (findings in ``exclude`` left out)."""
        st = self.studies[study]
        return [
            les
            for f in FINDINGS
            if f not in exclude and st.severity[f] > 0
            for les in lesions_for(f, st.severity[f], self.sides[f], self.anatomy)
        ]


def n_studies(seed: int, index: int) -> int:
    """Number of studies of patient ``index`` (1..6), from its own stream so the split can be planned first."""
    return 1 + int(stream_rng(seed, STREAM_COUNT, index).choice(MAX_STUDIES, p=[0.12, 0.13, 0.15, 0.2, 0.2, 0.2]))


def _course(rng: np.random.Generator, n: int, finding: str, rotation: int) -> Course:
    """Severity over ``n`` studies and the change labels between consecutive ones.

    A present finding improves (by 0.15–0.45, possibly to resolution), stays (±0.03) or worsens (by
    0.15–0.45); an absent one may appear (worsening). Changes follow the cycle stable → worsening →
    improving from a per-patient starting point ``rotation`` (a random feasible change replaces an impossible
    one), so the three labels stay balanced even in a small cohort. Small pleural effusions
    (≤ LATERAL_ONLY_MAX) are common: they are the ones seen on the lateral view only.

    Returns:
        the :class:`Course`: severities [n] (0 = absent) and n - 1 labels.
    """
    sev, labels = np.zeros(n), [""] * (n - 1)
    if rng.random() >= _INVOLVED[finding]:
        return Course(sev, labels)

    def fresh() -> float:
        if finding == "pleural_effusion" and rng.random() < 0.4:
            return float(rng.uniform(0.1, LATERAL_ONLY_MAX))
        return float(rng.uniform(0.25, 0.9))

    sev[0] = fresh() if (n == 1 or rng.random() < 0.8) else 0.0
    turn = rotation
    for t in range(1, n):
        cur = sev[t - 1]
        if cur <= 0:
            if rng.random() < 0.45:  # the finding appears: a worsening; the cycle goes on from there
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
        else:  # stable: stay on the same side of the lateral-only limit
            lo, hi = (0.1, LATERAL_ONLY_MAX) if cur <= LATERAL_ONLY_MAX else (LATERAL_ONLY_MAX + 1e-3, 1.0)
            new = float(np.clip(cur + rng.uniform(-0.03, 0.03), lo, hi))
        sev[t], labels[t - 1] = round(new, 3), label
    sev[0] = round(sev[0], 3)
    return Course(sev, labels)


def image_shape(rng: np.random.Generator, size: int, landscape: float = 0.15) -> ImageShape:
    """Non-square like real radiographs: mostly portrait, some landscape; the long side is ``size``."""
    if rng.random() >= landscape:
        return ImageShape(size, int(round(size * rng.uniform(0.8, 1.0))))
    return ImageShape(int(round(size * rng.uniform(0.85, 1.0))), size)


def draw_exposure(rng: np.random.Generator, view: str, ap: bool) -> Exposure:
    """One image's acquisition: aim, magnification, inspiration (AP: often poorer), exposure curve, noise."""
    shift = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04), rng.uniform(-0.05, 0.05))
    if view == "frontal":
        return Exposure(
            shift=shift,
            magnification=rng.uniform(0.96, 1.04),
            dome_shift=rng.uniform(0.0, 0.06) if ap else rng.uniform(-0.03, 0.03),
            k=rng.uniform(1.85, 2.15),
            lo=rng.uniform(0.17, 0.23),
            gamma=rng.uniform(0.7, 0.8),
            noise=rng.uniform(1.5, 3.5),
        )
    return Exposure(
        shift=shift,
        magnification=rng.uniform(1.1, 1.2),
        dome_shift=rng.uniform(-0.03, 0.03),
        k=rng.uniform(0.9, 1.1),
        lo=rng.uniform(0.17, 0.23),
        gamma=1.0,
        noise=rng.uniform(1.5, 3.5),
    )


def _dicom_id(rng: np.random.Generator) -> str:
    return "-".join(f"{int(x):08x}" for x in rng.integers(0, 2**32, size=5, dtype=np.uint64))


def plan_patient(seed: int, index: int, n_patients: int, image_size: int) -> PatientPlan:
    """Everything about MIMIC-part patient ``index``: anatomy, studies, findings, views, ids, dates."""
    rng = stream_rng(seed, STREAM_PATIENT, index)
    n = n_studies(seed, index)
    anatomy = make_anatomy(rng)
    anatomy.sites = make_sites(rng, anatomy)
    sides, courses = {}, {}
    for f in FINDINGS:
        names, p = FINDING_SIDES[f]
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
        severity = {f: float(courses[f].severity[t]) for f in FINDINGS}
        progression = {f: (courses[f].labels[t - 1] if t else "") for f in FINDINGS}
        ap = rng.random() < 0.25
        # keyword arguments are evaluated left to right: the draws keep their order
        frontal = ImagePlan(
            dicom_id=_dicom_id(rng),
            view="frontal",
            position="AP" if ap else "PA",
            shape=image_shape(rng, image_size),
            exposure=draw_exposure(rng, "frontal", ap),
            noise_seed=int(rng.integers(2**31)),
        )
        need_lateral = 0 < severity["pleural_effusion"] <= LATERAL_ONLY_MAX
        lateral = None
        if rng.random() < (0.15 if ap else 0.7) or need_lateral:
            lateral = ImagePlan(
                dicom_id=_dicom_id(rng),
                view="lateral",
                position="LL" if rng.random() < 0.15 else "LATERAL",
                shape=image_shape(rng, image_size, landscape=0.0),
                exposure=draw_exposure(rng, "lateral", ap),
                noise_seed=int(rng.integers(2**31)),
            )
        studies.append(
            StudyPlan(
                index=t,
                study_id=int(study_ids[t]),
                date=date,
                time=hh * 10000 + mm * 100 + ss + ms / 1000,
                severity=severity,
                progression=progression,
                frontal=frontal,
                lateral=lateral,
                report_seed=int(rng.integers(2**31)),
                findings_section=rng.random() >= 0.15,
            )
        )
    return PatientPlan(
        index=index,
        subject_id=subject_id,
        sex="woman" if rng.random() < 0.5 else "man",
        anatomy=anatomy,
        sides=sides,
        studies=studies,
    )


def render_study_view(
    plan: PatientPlan, study: int, view: str, *, exclude: Sequence[str] = (), noise: bool = True
) -> ViewRender:
    """Render one image of a planned study exactly as ``synthesize`` stores it (before JPEG coding);
    ``exclude`` leaves findings out and ``noise=False`` gives the noise-free image, e.g. to show that a
    finding is invisible in a view. Returns the :class:`ViewRender` (image [H, W] uint8 and its parts)."""
    st = plan.studies[study]
    image = st.frontal if view == "frontal" else st.lateral
    if image is None:
        raise ValueError(f"phantom.render_study_view: study {st.study_id} of subject {plan.subject_id} has no {view}")
    return render_view(
        plan.anatomy,
        plan.lesions(study, exclude),
        view,
        image.shape,
        image.exposure,
        np.random.default_rng(image.noise_seed) if noise else None,
    )
