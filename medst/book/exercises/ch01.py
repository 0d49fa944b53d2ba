"""Exercises of chapter 1 (``book/01_data.ipynb``, Method §1): DICOM grey levels and the sequence windows.

* 1.1 (easy) ``dicom_grey``: the pixel pipeline of :mod:`medst.data.dicom` (rescale, LINEAR window,
  MONOCHROME1) written with torch; checked against :func:`medst.data.dicom.dicom_to_float` on datasets built in
  memory with pydicom.
* 1.2 (hard) ``sequence_windows``: the sequences of ``medst prepare`` built from a metadata table, with a rule
  the chapter does not have (a sequence may not span a gap longer than ``max_gap_days``); checked against the
  library's own rule (:func:`medst.data.studies.select_views`, the study time of
  :func:`medst.data.studies.read_metadata`, :func:`medst.data.mimic.sliding_windows`) on shuffled tables with
  same-day studies, lateral-only studies, gaps and short patients.

Two helpers that the checkers of chapters 2 and 3 use as well: :class:`CopyCase` (a case whose DataFrames and
modules each call gets its own copy of) and :func:`tensor_answer` (lets a conceptual answer be a plain number).
"""

from __future__ import annotations

import copy
import functools
import numbers
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian
from torch import Tensor

from medst.book.exercises.framework import Case, Check, CheckResult, Exercise, argument_ignored, generator, run_check
from medst.data.dicom import apply_modality_lut, apply_voi_lut, dicom_to_float, read_dicom
from medst.data.mimic import prepare, sliding_windows
from medst.data.studies import FRONTAL_VIEWS, _study_datetime, read_metadata, select_studies, select_views


# ----------------------------------------------------------------------------------------------------
# Helpers (chapters 1-3)
# ----------------------------------------------------------------------------------------------------
class CopyCase(Case):
    """A :class:`Case` whose DataFrames and modules are deep-copied for every call, as its tensors are, so that
    the reader's function, the reference and the mistake models never see each other's changes (a sort in
    place, BatchNorm's running statistics)."""

    def fresh(self) -> tuple[list[Any], dict]:
        args, kwargs = super().fresh()
        return [_copied(a) for a in args], {k: _copied(v) for k, v in kwargs.items()}


def _copied(value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        return value.copy(deep=True)
    if isinstance(value, nn.Module):
        return copy.deepcopy(value)
    return value


_NUMBER = (numbers.Real, np.number)  # int, float, numpy scalars (bool too)


def _as_tensor(value: Any) -> Any:
    """A plain number (or a tuple of them) as tensor(s), floats in float64; anything else unchanged."""
    if isinstance(value, _NUMBER):
        floating = isinstance(value, (float, np.floating))
        return torch.tensor(float(value), dtype=torch.float64) if floating else torch.tensor(int(value))
    if isinstance(value, tuple) and value and all(isinstance(v, (*_NUMBER, Tensor)) for v in value):
        return tuple(_as_tensor(v) for v in value)
    return value


def tensor_answer(fn: Any) -> Any:
    """``fn`` with a plain-number result (int, float, or a tuple of them) turned into tensors, so that a
    conceptual answer may be ``return 2.5`` or a tensor alike. The refusal of library code still sees ``fn``
    itself (through ``__wrapped__``); a non-callable is passed on for :func:`run_check` to reject."""
    if not callable(fn):
        return fn

    @functools.wraps(fn)
    def answer(*args: Any, **kwargs: Any) -> Any:
        return _as_tensor(fn(*args, **kwargs))

    return answer


# ----------------------------------------------------------------------------------------------------
# Exercise 1.1: DICOM grey levels
# ----------------------------------------------------------------------------------------------------
def _dicom_dataset(stored: Tensor, bits_stored, slope, intercept, center, width, monochrome1) -> Dataset:
    """An uncompressed 16-bit-allocated grey DICOM dataset in memory, with these pixels and attributes."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits_stored, bits_stored - 1, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if center is not None:
        ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.numpy().astype(np.uint16).tobytes()
    return ds


def _dicom_reference(stored, bits_stored, slope=1.0, intercept=0.0, center=None, width=None, monochrome1=False):
    """medst's reading of the same pixels: :func:`medst.data.dicom.dicom_to_float` on a pydicom dataset."""
    ds = _dicom_dataset(stored, bits_stored, slope, intercept, center, width, monochrome1)
    return torch.from_numpy(dicom_to_float(ds))


def _dicom_variant(
    stored,
    bits_stored,
    slope=1.0,
    intercept=0.0,
    center=None,
    width=None,
    monochrome1=False,
    *,
    rescale=True,
    invert="after",
    window="dicom",
    scale="bits",
):
    """The pipeline with one switchable mistake each (for hints only)."""
    top = 2.0**bits_stored - 1
    x = stored.double()
    if invert == "before" and monochrome1:
        x = top - x
    values = x * slope + intercept if rescale else x
    if center is None:
        if scale == "image":
            lo, hi = values.min(), values.max()
        else:
            ends = torch.tensor([0.0, top], dtype=torch.float64)
            ends = ends * slope + intercept if rescale else ends
            lo, hi = ends.min(), ends.max()
        grey = (values - lo) / (hi - lo)
    elif window == "textbook":
        grey = ((values - (center - width / 2)) / width).clamp(0, 1)
    else:
        grey = (values - (center - 0.5)) / (width - 1) + 0.5
        grey = grey.clamp(0, 1) if window == "dicom" else grey
    if invert == "after" and monochrome1:
        grey = 1 - grey
    return grey.float()


def _dicom_cases() -> list[Case]:
    settings = [  # bits, slope, intercept, center, width, MONOCHROME1, shape
        (12, 1.0, -1024.0, 40.0, 400.0, False, (5, 7)),
        (12, 1.0, -1024.0, 40.0, 400.0, True, (6, 6)),
        (16, 0.5, 100.0, 9000.0, 12000.0, True, (4, 9)),
        (12, 1.0, 0.0, 1500.0, 1000.0, True, (7, 5)),
        (8, 1.0, 0.0, None, None, False, (5, 5)),
        (12, 2.0, -1024.0, None, None, True, (3, 8)),
        (10, 1.0, 0.0, 100.0, 2.0, False, (4, 4)),
    ]
    cases = []
    for seed, (bits, slope, intercept, center, width, mono1, shape) in enumerate(settings):
        stored = torch.randint(0, 2**bits, shape, generator=generator(300 + seed), dtype=torch.int32)
        if seed == 4:  # an image that uses only part of the range its bits allow
            stored = 40 + stored % 100
        if center is not None:  # the values on the window's edges and the middle, exactly
            edges = [center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2, center]
            for k, v in enumerate(edges):
                s = round((v - intercept) / slope)
                if 0 <= s < 2**bits:
                    stored[0, k] = s
        window = "no window" if center is None else f"window center {center:g}, width {width:g}"
        label = (
            f"stored {list(shape)} random ({bits} bits stored), slope {slope:g}, intercept {intercept:g}, {window}, "
            f"{'MONOCHROME1' if mono1 else 'MONOCHROME2'}"
        )
        kwargs = {"slope": slope, "intercept": intercept, "center": center, "width": width, "monochrome1": mono1}
        cases.append(Case(label, (stored, bits), kwargs))
    return cases


def check_dicom_grey(fn: Callable) -> CheckResult:
    """Grade exercise 1.1: ``fn(stored, bits_stored, slope, intercept, center, width, monochrome1)`` must return
    the grey levels [H, W] in [0, 1] that :func:`medst.data.dicom.read_dicom` gives for such a file."""

    def variant(**options):
        return lambda *args, **kwargs: _dicom_variant(*args, **kwargs, **options)

    return run_check(
        Check(
            "1.1",
            "DICOM grey levels",
            "dicom_grey",
            _dicom_cases(),
            _dicom_reference,
            forbidden=(dicom_to_float, read_dicom, apply_voi_lut, apply_modality_lut),
            hint="rescale first (values = stored * slope + intercept); then the LINEAR window "
            "((values - (center - 0.5)) / (width - 1) + 0.5, clipped to [0, 1]), or without a window the range "
            "that bits_stored allows after the same rescale; invert MONOCHROME1 last (1 - grey).",
            mistakes=[
                ("MONOCHROME1 is not inverted: its high values are dark, so grey = 1 - grey", variant(invert="no")),
                (
                    "MONOCHROME1 is inverted on the stored values, before the window; invert the grey level after "
                    "it (the window is set in the rescaled values of the file as stored)",
                    variant(invert="before"),
                ),
                (
                    "the window is applied to the stored values: rescale them first (slope, intercept); the window "
                    "center and width are in rescaled units",
                    variant(rescale=False),
                ),
                (
                    "without a window the grey level is scaled by the image's own min and max; scale by the range "
                    "that bits_stored allows (after the rescale), so that a grey means the same value in every file",
                    variant(scale="image"),
                ),
                (
                    "the window is the textbook (values - (center - width/2)) / width; DICOM's LINEAR window uses "
                    "center - 0.5 and width - 1",
                    variant(window="textbook"),
                ),
                ("values outside the window are not clipped to [0, 1]", variant(window="unclipped")),
            ],
        ),
        tensor_answer(fn),
    )


# ----------------------------------------------------------------------------------------------------
# Exercise 1.2: sequence windows from the metadata table
# ----------------------------------------------------------------------------------------------------
def _windows_reference(meta: pd.DataFrame, length: int = 4, max_gap_days: float | None = None) -> Tensor:
    """medst's rule: a study's views (:func:`select_views`) and time (its earliest image, as
    :func:`read_metadata` takes it), studies without a frontal left out, time order (study id breaks ties), and
    :func:`sliding_windows` over runs that a new patient, or a gap longer than ``max_gap_days``, starts."""
    studies = []
    for (subject, study), rows in meta.groupby(["subject_id", "study_id"], sort=True):
        if not select_views(zip(rows.dicom_id, rows.ViewPosition)).frontal_candidates:
            continue
        when = min(_study_datetime(d, t) for d, t in zip(rows.StudyDate, rows.StudyTime))
        studies.append((int(subject), when, int(study)))
    studies.sort()
    runs, run = [], 0
    for k, (subject, when, _) in enumerate(studies):
        if k and subject != studies[k - 1][0]:
            run += 1
        elif k and max_gap_days is not None and when - studies[k - 1][1] > timedelta(days=max_gap_days):
            run += 1
        runs.append(run)
    rows = [[studies[i][2] for i in window] for window in sliding_windows(runs, length)]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, length)


def _windows_variant(
    meta, length=4, max_gap_days=None, *, order="time", keep_lateral_only=False, gap="time", gap_ge=False
):
    """A plain-pandas version with switchable mistakes (for hints only)."""
    t = meta.StudyTime
    when = pd.to_datetime(meta.StudyDate.astype(str), format="%Y%m%d") + pd.to_timedelta(
        t // 10000 * 3600 + t // 100 % 100 * 60 + t % 100, unit="s"
    )
    images = meta.assign(when=when, day=pd.to_datetime(meta.StudyDate.astype(str), format="%Y%m%d"))
    images["frontal"] = images.ViewPosition.isin(FRONTAL_VIEWS)
    st = images.groupby(["subject_id", "study_id"], as_index=False).agg(
        when=("when", "min"), day=("day", "min"), frontal=("frontal", "any")
    )
    if not keep_lateral_only:
        st = st[st.frontal]
    keys = {"time": ["subject_id", "when", "study_id"], "study_id": ["subject_id", "study_id"]}
    st = st.sort_values(keys.get(order, ["subject_id", "day", "study_id"]))
    cut = st.subject_id.diff().ne(0)
    if max_gap_days is not None:
        step = (st.when if gap == "time" else st.day).diff().dt.total_seconds()
        cut |= (step >= max_gap_days * 86400) if gap_ge else (step > max_gap_days * 86400)
    windows = []
    for _, ids in st.groupby(cut.cumsum(), sort=False).study_id:
        ids = ids.tolist()
        windows += [ids[i : i + length] for i in range(len(ids) - length + 1)]
    return torch.tensor(windows, dtype=torch.long).reshape(-1, length)


def _hhmmss(seconds: float) -> float:
    """Seconds since midnight -> MIMIC's StudyTime HHMMSS.fff."""
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return float(h * 10000 + m * 100) + round(s, 3)


class _Table:
    """A metadata table written row by row: studies with their images, study ids not in time order.

    Study ids have 4 digits (MIMIC's have 8): the check compares them as numbers with a relative tolerance of
    1e-4, which tells ids apart only below 10,000.
    """

    def __init__(self, seed: int) -> None:
        self.gen = generator(seed)
        self.rows: list[dict[str, Any]] = []

    def rand(self, n: int) -> int:
        return int(torch.randint(n, (1,), generator=self.gen))

    def study(self, subject: int, day: pd.Timestamp, seconds: float, views: list, study_id: int | None = None):
        if study_id is None:  # random ids, as MIMIC's: not in time order
            study_id = 1000 + self.rand(9000)
            while any(r["study_id"] == study_id for r in self.rows):
                study_id = 1000 + (study_id - 999) % 9000
        for k, view in enumerate(views):
            at = seconds + (self.rand(240) if k else 0)  # the images of a study: taken minutes apart
            self.rows.append(
                {
                    "dicom_id": f"{self.rand(16**8):08x}-{k}",
                    "subject_id": subject,
                    "study_id": study_id,
                    "ViewPosition": view,
                    "StudyDate": int(day.strftime("%Y%m%d")),
                    "StudyTime": _hhmmss(min(at, 86399)),
                }
            )
        return study_id

    def frame(self) -> pd.DataFrame:
        """The table, rows shuffled (a metadata table is in no particular order)."""
        order = torch.randperm(len(self.rows), generator=self.gen).tolist()
        table = pd.DataFrame([self.rows[i] for i in order])
        return table.astype({"subject_id": "int64", "study_id": "int64", "StudyDate": "int64", "StudyTime": "float64"})


def _random_table(seed: int, patients: int) -> pd.DataFrame:
    """Patients with 0-7 studies days to months apart, some on the same day, some with a lateral only."""
    table = _Table(seed)
    views = [["PA", "LATERAL"], ["AP"], ["PA"], ["AP", "LL"], ["LATERAL"], ["PA", "LATERAL", "LAO"], ["AP", np.nan]]
    for p in range(patients):
        subject = 10_000_000 + 1_000 * seed + 37 * p
        day = pd.Timestamp("2150-01-01") + pd.Timedelta(days=table.rand(2000))
        for _ in range(table.rand(8)):
            gap = [0, 1, 3, 20, 45, 95, 200][table.rand(7)]
            day += pd.Timedelta(days=gap)
            pick = views[table.rand(len(views))] if table.rand(5) else ["LATERAL"]
            table.study(subject, day, 3600 * (6 + table.rand(14)) + table.rand(3600) + 0.5 * table.rand(2), pick)
    return table.frame()


def _same_day_table() -> pd.DataFrame:
    """Two patients whose same-day studies are not in study id order; one study without a frontal view."""
    t = _Table(41)
    day = pd.Timestamp("2160-05-03")
    same_day = [(0, 9 * 3600 + 35 * 60 + 12.5, 5901), (0, 7 * 3600, 5909), (3, 10 * 3600, 5800)]
    for offset, seconds, sid in same_day:
        t.study(10_100_001, day + pd.Timedelta(days=offset), seconds, ["PA", "LATERAL"], sid)
    t.study(10_100_001, day + pd.Timedelta(days=9), 8 * 3600, ["AP"], 5950)
    t.study(10_100_001, day + pd.Timedelta(days=12), 8 * 3600, ["PA"], 5700)
    for k in range(5):  # the third study has a lateral image only: the patient's run closes over it
        views = ["LATERAL"] if k == 2 else ["PA", "LATERAL"]
        t.study(10_200_002, day + pd.Timedelta(days=k // 2), 23 * 3600 - 3600 * k, views, 5600 - k)
    return t.frame()


def _gap_table() -> pd.DataFrame:
    """One patient with gaps of exactly 30 days (kept) and of 30 days and 1 second (cut); another whose studies
    are 47 hours apart on consecutive calendar days."""
    t = _Table(42)
    day = pd.Timestamp("2170-02-20")
    seconds = [8 * 3600, 8 * 3600, 8 * 3600, 8 * 3600 + 1, 8 * 3600 + 1, 8 * 3600 + 1, 8 * 3600 + 1]
    days = [0, 30, 60, 90, 91, 92, 93]
    for k, (d, s) in enumerate(zip(days, seconds)):
        t.study(10_300_003, day + pd.Timedelta(days=d), s, ["PA"], 5500 + 7 * k)
    for k in range(4):  # 00:30, then 23:30 the next day (47 hours, one calendar day apart), 00:30, 23:30
        t.study(10_400_004, day + pd.Timedelta(days=k), 1800 if k % 2 == 0 else 84600, ["AP"])
    return t.frame()


def _short_table() -> pd.DataFrame:
    """Every patient has fewer than L usable studies."""
    t = _Table(43)
    day = pd.Timestamp("2155-07-01")
    for p in range(3):
        for k in range(p + 1):
            t.study(10_500_000 + p, day + pd.Timedelta(days=10 * k), 9 * 3600, ["PA", "LATERAL"])
        t.study(10_500_000 + p, day + pd.Timedelta(days=50), 9 * 3600, ["LL"])  # not usable
    return t.frame()


def _describe_table(meta: pd.DataFrame) -> str:
    studies = meta.groupby("study_id").size()
    return f"{len(meta)} images of {len(studies)} studies of {meta.subject_id.nunique()} patients"


def _windows_cases() -> list[Case]:
    cases = []
    for seed, (patients, length, gap) in enumerate([(8, 4, None), (10, 3, None), (12, 2, 60), (10, 4, 100)]):
        meta = _random_table(seed, patients)
        label = f"a random metadata table (seed {seed}): {_describe_table(meta)}, rows shuffled"
        cases.append(CopyCase(label, (meta,), {"length": length, "max_gap_days": gap}))
    specials = [
        ("same-day studies out of study-id order, a lateral-only study", _same_day_table(), 2, None),
        ("gaps of exactly 30 days (kept) and 30 days + 1 s (cut); studies 47 h apart", _gap_table(), 2, 30),
        ("studies 47 h apart on consecutive calendar days", _gap_table(), 2, 1),
        ("every patient has fewer than L usable studies", _short_table(), 4, None),
        ("length 1: every usable study is a window", _same_day_table(), 1, None),
    ]
    for text, meta, length, gap in specials:
        cases.append(CopyCase(f"{text}: {_describe_table(meta)}", (meta,), {"length": length, "max_gap_days": gap}))
    return cases


def check_sequence_windows(fn: Callable) -> CheckResult:
    """Grade exercise 1.2: ``fn(meta, length=4, max_gap_days=None)`` must return the study ids of every sequence
    window [n, length] that medst's rule gives for the metadata table ``meta``, with runs cut at long gaps."""

    def variant(**options):
        return lambda meta, length=4, max_gap_days=None: _windows_variant(meta, length, max_gap_days, **options)

    return run_check(
        Check(
            "1.2",
            "sequence windows from the metadata table",
            "sequence_windows",
            _windows_cases(),
            _windows_reference,
            forbidden=(sliding_windows, select_views, _study_datetime, read_metadata, select_studies, prepare),
            hint="group the images by study; a study's time is its earliest image's StudyDate + StudyTime; leave "
            "out studies without a PA or AP image; sort a patient's studies by time (study id breaks ties); a new "
            "patient or a gap longer than max_gap_days starts a new run; take every window of `length` "
            "consecutive studies of a run; rows ordered by subject, then time.",
            mistakes=[
                (
                    "the studies are ordered by study id; MIMIC's study ids are random, not in time order: sort by "
                    "StudyDate and StudyTime",
                    variant(order="study_id"),
                ),
                (
                    "the studies are ordered by StudyDate only: two studies on the same day must be ordered by "
                    "StudyTime",
                    variant(order="date"),
                ),
                (
                    "studies without a frontal (PA or AP) image are kept; medst prepare leaves them out, so a "
                    "sequence closes over them",
                    variant(keep_lateral_only=True),
                ),
                (
                    "the gap is measured between calendar dates; measure it between the studies' times "
                    "(StudyDate + StudyTime)",
                    variant(gap="date"),
                ),
                (
                    "a gap of exactly max_gap_days is cut; only a gap longer than max_gap_days starts a new run",
                    variant(gap_ge=True),
                ),
                argument_ignored(_windows_reference, "max_gap_days", None),
            ],
        ),
        tensor_answer(fn),
    )


# ----------------------------------------------------------------------------------------------------
# The exercise texts; the solutions are solutions/ch01_dicom_grey.py, ch01_sequence_windows.py
# ----------------------------------------------------------------------------------------------------
DICOM_GREY = r"""
`medst.data.dicom.read_dicom` turns a DICOM radiograph into grey levels in $[0, 1]$, 1 = white, whatever the
file stores (section *DICOM* above). Write its pixel pipeline for an uncompressed grey image with torch:
`dicom_grey(stored, bits_stored, slope=1.0, intercept=0.0, center=None, width=None, monochrome1=False)`,
with `stored` the stored values `[H, W]` (unsigned integers of `bits_stored` bits).

1. **Modality LUT**: $x = \text{stored} \cdot \text{slope} + \text{intercept}$ (e.g. Hounsfield units).
2. **VOI LUT**, when a window is given: DICOM's LINEAR window (PS3.3 C.11.2.1.2) with $c$ = `center`,
   $w$ = `width`: $y = \frac{x - (c - 0.5)}{w - 1} + 0.5$, clipped to $[0, 1]$. Without a window, scale $x$ by
   the range its file can hold: the values of stored $0$ and $2^{\text{bits}} - 1$ after step 1.
3. **Photometric interpretation**: a `MONOCHROME1` image shows *low* values white.

Before you run the check, predict: a MONOCHROME1 file stores 12 bits with slope 1, intercept $-1024$ and a
window of center 40, width 400; which stored values are shown pure white, which pure black?
The check compares your function with `read_dicom`'s pipeline on datasets built in memory (8 to 16 bits,
rescaled or not, with and without a window, values exactly on the window's edges).
"""

SEQUENCE_WINDOWS = r"""
`medst prepare` cuts each patient's studies into sequences: every window of $L$ consecutive usable studies
(Method §1; `medst.data.mimic.sliding_windows` does the last step). A patient whose studies are years apart
still gives sequences, although "interval change" then spans years. Build the sequences from the raw metadata
table yourself, with one rule more: **a sequence may not span a gap longer than `max_gap_days`**.

Write `sequence_windows(meta, length=4, max_gap_days=None)`. `meta` is a MIMIC-CXR metadata table
(`pandas.DataFrame`, one row per *image*, rows in no particular order) with the columns `dicom_id`,
`subject_id`, `study_id`, `ViewPosition`, `StudyDate` (YYYYMMDD) and `StudyTime` (HHMMSS.fff as a number:
`93512.5` is 09:35:12.5). Follow the rule of `medst prepare`:

- a study's time is the earliest date and time of its images;
- a study without a frontal image (`ViewPosition` PA or AP) is not usable: leave it out;
- a patient's usable studies are in time order; equal times are ordered by study id (MIMIC's study ids are
  random, not chronological);
- a new patient, or two consecutive studies more than `max_gap_days` days apart (exactly `max_gap_days` is
  allowed; `None`: no limit), starts a new run; every window of `length` consecutive studies of a run is a
  sequence, and a run shorter than `length` gives none.

Return the study ids as a `torch.long` tensor `[n_windows, length]`, rows ordered by patient, then time
(`[0, length]` when there is none). The check compares with medst's own rule on shuffled tables with same-day
studies, lateral-only studies, gaps exactly on the limit and patients with fewer than $L$ studies.
"""

CHAPTER = "01_data"
EXERCISES = [
    Exercise(
        key="dicom-grey",
        chapter=CHAPTER,
        number="1.1",
        title="DICOM grey levels",
        function="dicom_grey",
        prompt=DICOM_GREY,
        solution="ch01_dicom_grey",
        checker=check_dicom_grey,
        level="easy",
    ),
    Exercise(
        key="sequence-windows",
        chapter=CHAPTER,
        number="1.2",
        title="sequence windows from the metadata table",
        function="sequence_windows",
        prompt=SEQUENCE_WINDOWS,
        solution="ch01_sequence_windows",
        checker=check_sequence_windows,
        level="hard",
    ),
]
