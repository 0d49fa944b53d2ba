"""The phantom: synthetic longitudinal, multi-view chest X-ray studies with reports, in the real formats.

No real chest X-ray data can be shipped, so :func:`synthesize` writes patients with 1–6 studies over time
(frontal and often lateral images, free-text reports) laid out like MIMIC-CXR-JPG, plus MS-CXR-T, RSNA
Pneumonia and COVIDx counterparts and the ground truth behind all of it (chapter 1 of the book; Method §1,
§6, §8). ``python -m medst.phantom --out DIR`` does the same from the command line.

Modules, from the bottom up::

    geometry   ellipsoids, image grids, exact line integrals along the rays of a view
    anatomy    one patient's 3-D anatomy and the findings as 3-D lesions
    render     projection of anatomy and lesions into a frontal or lateral radiograph
    ct         cross-sections of the same anatomy and lesions: CT-like volumes (NIfTI) and their finding slices
    reports    MIMIC-style report text and MS-CXR-T sentence pairs
    plan       one patient's plan: finding courses, studies, views, ids, dates
    rows       the typed rows of every table written
    writers    rows to CSV, RSNA DICOM files, COVIDx lists
    tasks      one patient / RSNA image / COVIDx image (/ CT volume): files and rows
    synth      ``synthesize`` and the command line
"""

from medst.phantom.plan import (
    FINDINGS,
    MSCXRT_FINDINGS,
    SEQUENCE_LENGTH,
    ImagePlan,
    ImageShape,
    PatientPlan,
    StudyPlan,
    n_studies,
    plan_patient,
    render_study_view,
)
from medst.phantom.render import VISIBLE_LEVELS, Box, Exposure, ViewRender, render_view
from medst.phantom.reports import FindingState, SentencePair, make_report, sentence_pairs
from medst.phantom.synth import VERSION, main, synthesize
from medst.phantom.tasks import COVIDX_LABELS

__all__ = [
    "COVIDX_LABELS",
    "FINDINGS",
    "MSCXRT_FINDINGS",
    "SEQUENCE_LENGTH",
    "VERSION",
    "VISIBLE_LEVELS",
    "Box",
    "Exposure",
    "FindingState",
    "ImagePlan",
    "ImageShape",
    "PatientPlan",
    "SentencePair",
    "StudyPlan",
    "ViewRender",
    "main",
    "make_report",
    "n_studies",
    "plan_patient",
    "render_study_view",
    "render_view",
    "sentence_pairs",
    "synthesize",
]
