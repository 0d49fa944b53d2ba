"""The MIMIC-CXR-JPG layout and the rule that picks the usable studies of Method §1.

Input (the MIMIC-CXR-JPG v2 layout; :func:`image_relpath`, :func:`report_relpath`, :data:`METADATA_NAME`, ...)::

    MIMIC_ROOT/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg
    MIMIC_ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime
    MIMIC_ROOT/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
    REPORTS/files/pXX/pSUBJECT/sSTUDY.txt          free-text reports (MIMIC-CXR), or
    REPORTS = mimic_cxr_sectioned.csv[.gz]         study ("s5..."), impression, findings[, last_paragraph]

What is a usable study (Method §1): its report text (impression + findings) has >= ``min_words`` word tokens,
and it has a readable frontal image (PA preferred over AP, then the smallest dicom_id). Its lateral is the
first readable of LATERAL then LL images (smallest dicom_id first), or none. Nothing is dropped silently:
every left-out item is recorded in a :class:`Ledger` (a row of ``skipped.csv``, a warning naming the file and a
count in the summary of ``medst prepare``).

The rule is written once, as phases that :func:`medst.data.mimic.prepare` runs in order and that
:func:`select_studies` (the same choice without writing anything, used by evaluation) shares:
:func:`read_metadata` -> :func:`screen_studies` (split, date, frontal view) -> :func:`read_reports` ->
:func:`choose_images` (:class:`ViewChoice`: the first readable image of each view) -> :func:`keep_readable`.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from medst.data.cache import CacheWriter, decode_for_cache, parallel_map
from medst.data.reports import join_sections, report_text, word_tokens

log = logging.getLogger(__name__)

FRONTAL_VIEWS = ("PA", "AP")  # in order of preference
LATERAL_VIEWS = ("LATERAL", "LL")  # in order of preference
SPLIT_ORDER = ("train", "validate", "test")
METADATA_NAME = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_NAME = "mimic-cxr-2.0.0-split.csv"
SECTIONED_NAME = "mimic_cxr_sectioned.csv"
WARN_PER_REASON = 20  # warnings printed per reason; the rest go to skipped.csv only

# Reasons, as written in skipped.csv and counted in the summary (unreadable images: medst.data.cache; patients:
# medst.data.mimic).
NO_SPLIT = "no split"
NO_DATE = "no study date"
NO_FRONTAL = "no frontal image"
NO_REPORT = "no report"
SHORT_REPORT = "short report"
UNREADABLE_FRONTAL = "unreadable frontal image"
OTHER_VIEW = "view not used"
EXTRA_VIEW = "extra view"
STUDY_SKIPPED = "study skipped"


# ---------------------------------------------------------------------------------------------------------
# The layout: where an image and a report live, how the CSVs are read
# ---------------------------------------------------------------------------------------------------------
def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` relative to the MIMIC-CXR-JPG root."""
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


def report_relpath(subject_id: int, study_id: int) -> str:
    """``pXX/pSUBJECT/sSTUDY.txt`` relative to the reports' ``files`` folder."""
    s = str(subject_id)
    return f"p{s[:2]}/p{s}/s{study_id}.txt"


def _study_datetime(date: Any, tod: Any) -> datetime | None:
    """MIMIC StudyDate (YYYYMMDD) and StudyTime (HHMMSS.fff, possibly without leading zeros) -> datetime."""
    try:
        if date is None or (isinstance(date, float) and math.isnan(date)):
            return None
        d = int(float(date))
        day = datetime(d // 10000, d // 100 % 100, d % 100)
    except (TypeError, ValueError):
        return None
    try:
        t = float(tod)
        if math.isnan(t):
            t = 0.0
    except (TypeError, ValueError):
        t = 0.0
    hours, minutes, seconds = int(t // 10000), int(t // 100 % 100), t % 100
    return day + timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_csv(path: Path, required: Iterable[str], dtype: Any = None) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=dtype, keep_default_na=True)
    except Exception as exc:
        raise ValueError(f"{path}: cannot read CSV ({type(exc).__name__}: {exc})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


# ---------------------------------------------------------------------------------------------------------
# The rule: which images and which report make a study (Method §1)
# ---------------------------------------------------------------------------------------------------------
_FRONTAL_RANK = {v: i for i, v in enumerate(FRONTAL_VIEWS)}
_LATERAL_RANK = {v: i for i, v in enumerate(LATERAL_VIEWS)}


@dataclass
class ViewChoice:
    """Which image of a study is its frontal view and which its lateral view (Method §1).

    ``frontal_candidates`` / ``lateral_candidates``: (dicom_id, ViewPosition) in order of preference (the view's
    place in :data:`FRONTAL_VIEWS` / :data:`LATERAL_VIEWS`, then the smallest dicom_id); ``other``: dicom ids of
    views Med-ST does not use. The image of a view is its first *readable* candidate: a missing or corrupt file
    passes the turn to the next one. The lateral is looked at only once a frontal is found. :meth:`next` names
    the image to try, :meth:`record` says whether it could be read; ``frontal`` / ``lateral`` are the picks
    (None: none readable, or no candidate), ``extra`` the candidates never tried.
    """

    frontal_candidates: tuple[tuple[str, str], ...]
    lateral_candidates: tuple[tuple[str, str], ...]
    other: tuple[str, ...] = ()
    frontal: tuple[str, str] | None = None
    lateral: tuple[str, str] | None = None
    tried_frontal: int = 0
    tried_lateral: int = 0

    def next(self) -> tuple[str, str, str] | None:
        """(role "frontal" or "lateral", dicom_id, ViewPosition) of the image to try next; None when decided."""
        if self.frontal is None:
            if self.tried_frontal < len(self.frontal_candidates):
                return ("frontal", *self.frontal_candidates[self.tried_frontal])
            return None
        if self.lateral is None and self.tried_lateral < len(self.lateral_candidates):
            return ("lateral", *self.lateral_candidates[self.tried_lateral])
        return None

    def record(self, readable: bool) -> tuple[str, str, str]:
        """Mark the image :meth:`next` names as tried; a readable one becomes its view's pick. Returns it."""
        todo = self.next()
        if todo is None:
            raise RuntimeError("ViewChoice.record: the choice is already made")
        role, dicom, view = todo
        if role == "frontal":
            self.tried_frontal += 1
            self.frontal = (dicom, view) if readable else None
        else:
            self.tried_lateral += 1
            self.lateral = (dicom, view) if readable else None
        return todo

    @property
    def extra(self) -> list[str]:
        """dicom ids of the frontal, then lateral, candidates never tried (another image of the view was used)."""
        return [d for d, _ in self.frontal_candidates[self.tried_frontal :]] + [
            d for d, _ in self.lateral_candidates[self.tried_lateral :]
        ]


def select_views(rows: Iterable[tuple[str, Any]]) -> ViewChoice:
    """The (dicom_id, ViewPosition) rows of one study -> its :class:`ViewChoice`, nothing tried yet.

    ViewPosition is compared stripped and upper-case; a missing one (NaN) is a view Med-ST does not use.
    ``other`` keeps the order of ``rows``.
    """
    frontal, lateral, other = [], [], []
    for dicom, view in rows:
        view = view.strip().upper() if isinstance(view, str) else ""
        if view in _FRONTAL_RANK:
            frontal.append((dicom, view))
        elif view in _LATERAL_RANK:
            lateral.append((dicom, view))
        else:
            other.append(dicom)
    return ViewChoice(
        tuple(sorted(frontal, key=lambda dv: (_FRONTAL_RANK[dv[1]], dv[0]))),
        tuple(sorted(lateral, key=lambda dv: (_LATERAL_RANK[dv[1]], dv[0]))),
        tuple(other),
    )


@dataclass
class Study:
    """One study of the metadata: who, when, its split, its images (:class:`ViewChoice`), its report text and,
    once its images are chosen, their rows in the image cache (-1: none, or no cache)."""

    subject_id: int
    study_id: int
    split: str
    when: datetime | None
    views: ViewChoice
    text: str = ""
    frontal_cache: int = -1
    lateral_cache: int = -1


# ---------------------------------------------------------------------------------------------------------
# What was left out, and why
# ---------------------------------------------------------------------------------------------------------
class Ledger:
    """What was left out and why: rows for skipped.csv, counts per (kind, reason), warnings naming the files.

    Warnings (the first :data:`WARN_PER_REASON` of each reason, the rest at debug level) are queued and printed
    by :meth:`emit` between progress bars, so the two do not interleave. ``root``: the MIMIC-CXR-JPG root the
    image paths are named under.
    """

    def __init__(self, root: Path) -> None:
        self.rows: list[dict[str, str]] = []
        self.per_reason: Counter[tuple[str, str]] = Counter()
        self.warned: Counter[tuple[str, str]] = Counter()
        self.queue: list[tuple[int, str]] = []
        self.prefix = str(root) + os.sep

    def under(self, relpath: str) -> str:
        """``str(root / relpath)``, without pathlib's cost for 10^5 paths."""
        return self.prefix + relpath

    def image_path(self, st: Study, dicom_id: str) -> str:
        """The file of one image of ``st``."""
        return self.under(image_relpath(st.subject_id, st.study_id, dicom_id))

    def add(self, kind: str, item: str, reason: str, detail: str = "", warn: bool = True) -> None:
        """One left-out item (kind "study", "image", "patient" or "volume", a CT volume: medst.data.ct)."""
        self.rows.append({"kind": kind, "item": item, "reason": reason, "detail": detail})
        key = (kind, reason)
        self.per_reason[key] += 1
        if not warn:
            return
        message = f"{item}: {kind} skipped: {reason}" + (f" ({detail})" if detail else "")
        self.warned[key] += 1
        self.queue.append((logging.WARNING if self.warned[key] <= WARN_PER_REASON else logging.DEBUG, message))

    def skip_study(self, st: Study, reason: str, detail: str = "", item: str | None = None) -> None:
        """Leave out a study; its images not tried yet are left out with it (reason :data:`STUDY_SKIPPED`)."""
        self.add(
            "study",
            item or self.under(f"files/p{str(st.subject_id)[:2]}/p{st.subject_id}/s{st.study_id}"),
            reason,
            detail,
        )
        for dicom in st.views.extra + list(st.views.other):
            self.add("image", self.image_path(st, dicom), STUDY_SKIPPED, reason, warn=False)

    def counts(self, kind: str) -> dict[str, int]:
        """{reason: number of items of ``kind`` left out}, by reason."""
        return dict(sorted((reason, n) for (k, reason), n in self.per_reason.items() if k == kind))

    def emit(self) -> None:
        """Print the queued warnings."""
        for level, message in self.queue:
            log.log(level, message)
        self.queue.clear()

    def flush_note(self) -> None:
        """Print the queued warnings and, per reason, how many more went to skipped.csv only."""
        self.emit()
        for (kind, reason), n in sorted(self.warned.items()):
            if n > WARN_PER_REASON:
                log.warning("... and %d more %s(s) skipped for %r (see skipped.csv)", n - WARN_PER_REASON, kind, reason)


# ---------------------------------------------------------------------------------------------------------
# The phases
# ---------------------------------------------------------------------------------------------------------
def read_metadata(root: Path) -> tuple[list[Study], int]:
    """Phase 1: the metadata and split CSVs -> one :class:`Study` per (subject, study), in subject and study
    order, with its split (the first of its images'), date and time (the earliest of its images') and views;
    and the number of image rows."""
    meta_path = _find(root, METADATA_NAME)
    split_path = _find(root, SPLIT_NAME)
    if meta_path is None or split_path is None:
        missing = METADATA_NAME if meta_path is None else SPLIT_NAME
        raise FileNotFoundError(
            f"{root / missing}: not found (nor .gz); expected a MIMIC-CXR-JPG root with "
            f"files/, {METADATA_NAME} and {SPLIT_NAME}"
        )
    meta = _read_csv(
        meta_path,
        ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"),
        dtype={"dicom_id": str, "ViewPosition": str},
    )
    split = _read_csv(split_path, ("dicom_id", "split"), dtype={"dicom_id": str, "split": str})
    split = split.drop_duplicates("dicom_id")
    meta = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    meta["split"] = meta["split"].fillna("").str.strip()
    meta = meta.sort_values(["subject_id", "study_id", "dicom_id"], kind="stable")

    columns = [
        meta[c].tolist()
        for c in ("subject_id", "study_id", "dicom_id", "ViewPosition", "split", "StudyDate", "StudyTime")
    ]
    studies: list[Study] = []
    for (subject, study), rows in itertools.groupby(zip(*columns), key=lambda r: (r[0], r[1])):
        rows = list(rows)
        splits = [r[4] for r in rows if r[4]]
        whens = [w for w in (_study_datetime(r[5], r[6]) for r in rows) if w is not None]
        studies.append(
            Study(
                int(subject),
                int(study),
                splits[0] if splits else "",
                min(whens, default=None),
                select_views((r[2], r[3]) for r in rows),
            )
        )
    return studies, len(meta)


def screen_studies(studies: list[Study], ledger: Ledger) -> list[Study]:
    """Phase 2: leave out what the metadata alone rules out: a study without split, without date, or without
    a frontal view. Returns the others, in order."""
    kept: list[Study] = []
    for st in studies:
        if not st.split:
            ledger.skip_study(st, NO_SPLIT, "no row in the split CSV")
        elif st.when is None:
            ledger.skip_study(st, NO_DATE, "StudyDate missing or invalid")
        elif not st.views.frontal_candidates:
            views = sorted({v for _, v in st.views.lateral_candidates}) or ["none"]
            ledger.skip_study(st, NO_FRONTAL, f"views present: {', '.join(views)} (+{len(st.views.other)} other)")
        else:
            kept.append(st)
    ledger.emit()
    return kept


def report_source(root: Path, reports_dir: str | os.PathLike | None) -> tuple[str, Path]:
    """Where the reports are: ('files', folder with pXX/...) or ('csv', sectioned CSV path); default
    ``root/mimic-cxr-reports``."""
    path = Path(reports_dir) if reports_dir is not None else root / "mimic-cxr-reports"
    if path.is_file():
        return "csv", path
    if path.is_dir():
        if (path / "files").is_dir():
            return "files", path / "files"
        csv = _find(path, SECTIONED_NAME)
        if csv is not None:
            return "csv", csv
        if any(p.name.startswith("p") and p.is_dir() for p in path.iterdir()):
            return "files", path
    raise FileNotFoundError(
        f"{path}: no reports found; expected a folder with files/pXX/pSUBJECT/sSTUDY.txt "
        f"or a sectioned CSV ({SECTIONED_NAME}: study, impression, findings)"
    )


def _sectioned_texts(path: Path) -> dict[int, str]:
    """A sectioned-report CSV -> {study_id: impression + findings (or the last paragraph when both are empty)}."""
    df = _read_csv(path, ("study", "impression", "findings"), dtype=str)
    has_last = "last_paragraph" in df.columns
    for column in ("impression", "findings") + (("last_paragraph",) if has_last else ()):
        df[column] = df[column].fillna("").astype(str)
    texts: dict[int, str] = {}
    for row in df.itertuples(index=False):
        key = str(row.study).strip().lstrip("s")
        if not key.isdigit():
            continue
        text = join_sections(str(row.impression), str(row.findings))
        if not text and has_last:
            text = join_sections(str(row.last_paragraph), "")
        texts[int(key)] = text
    return texts


def _read_report_file(path: str) -> tuple[str | None, str]:
    """(report text or None if the file is missing, error detail)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return report_text(f.read()), ""
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read ({exc})"


def read_reports(
    studies: list[Study],
    source: tuple[str, Path],
    min_words: int,
    ledger: Ledger,
    *,
    workers: int = 1,
    progress: bool = False,
) -> list[Study]:
    """Phase 3: the report text (impression + findings) of every study, from ``source`` (:func:`report_source`);
    a study without a report, or with fewer than ``min_words`` word tokens, is left out. Returns the others, in
    order, with their ``text``."""
    kind, path = source
    if kind == "csv":
        sectioned = _sectioned_texts(path)
        texts: list[tuple[str | None, str]] = [
            (sectioned[st.study_id], "") if st.study_id in sectioned else (None, f"study not in {path.name}")
            for st in studies
        ]
        items = [f"{path}:s{st.study_id}" for st in studies]
    else:
        items = [str(path) + os.sep + report_relpath(st.subject_id, st.study_id) for st in studies]
        texts = list(parallel_map(_read_report_file, items, workers, "read reports", progress, "report"))
    kept: list[Study] = []
    for st, (text, detail), item in zip(studies, texts, items):
        if text is None:
            ledger.skip_study(st, NO_REPORT, detail, item=item)
            continue
        words = len(word_tokens(text))
        if words < min_words:
            ledger.skip_study(st, SHORT_REPORT, f"{words} word(s) < {min_words}: {text[:60]!r}", item=item)
        else:
            st.text = text
            kept.append(st)
    ledger.emit()
    return kept


def choose_images(
    studies: list[Study],
    ledger: Ledger,
    *,
    side: int = 0,
    writer: CacheWriter | None = None,
    workers: int = 1,
    progress: bool = False,
) -> int:
    """Phase 4: decode images until every view of every study has its readable image (:class:`ViewChoice`).

    In rounds: the preferred frontal of every study; then the preferred lateral of the studies with a readable
    frontal and the next frontal candidate where the file was missing or corrupt; and so on, until no candidate
    is left to try. Images are decoded to ``side`` (0: only checked) and, with a ``writer``, appended to the
    cache in decoding order (``Study.frontal_cache`` / ``lateral_cache``). Unreadable files are named in the
    ledger. Returns the number of images used.
    """
    used = 0
    round_no = 0
    while True:
        round_no += 1
        tasks = [(st, todo) for st in studies for todo in (st.views.next(),) if todo is not None]
        if not tasks:
            return used
        jobs = [(ledger.image_path(st, dicom), side) for st, (_, dicom, _) in tasks]
        desc = {1: "decode frontal images", 2: "decode lateral images"}.get(round_no, f"decode (round {round_no})")
        results = parallel_map(decode_for_cache, jobs, workers, desc, progress, "img")
        for (img, reason, detail), (st, (role, _, _)), (path, _) in zip(results, tasks, jobs):  # results first:
            # the generator must run to its end to close its pool and progress bar
            st.views.record(readable=not reason)
            if reason:
                ledger.add("image", path, reason, detail)
                continue
            row = writer.append(img) if writer is not None else -1
            used += 1
            if role == "frontal":
                st.frontal_cache = row
            else:
                st.lateral_cache = row
        ledger.emit()


def keep_readable(studies: list[Study], ledger: Ledger) -> list[Study]:
    """Phase 5: leave out the studies without a readable frontal image; the images a kept study does not use
    (another image of the view was used, or a view Med-ST does not use) are listed. Returns the kept ones."""
    usable: list[Study] = []
    for st in studies:
        if st.views.frontal is None:
            ledger.skip_study(
                st, UNREADABLE_FRONTAL, f"all {len(st.views.frontal_candidates)} frontal image(s) missing or corrupt"
            )
            continue
        for dicom in st.views.extra:
            ledger.add(
                "image", ledger.image_path(st, dicom), EXTRA_VIEW, "another image of this view was used", warn=False
            )
        for dicom in st.views.other:
            ledger.add(
                "image",
                ledger.image_path(st, dicom),
                OTHER_VIEW,
                "ViewPosition is not PA, AP, LATERAL or LL",
                warn=False,
            )
        usable.append(st)
    return usable


def select_studies(
    mimic_root: str | os.PathLike,
    splits: Sequence[str] | None = None,
    reports_dir: str | os.PathLike | None = None,
    min_words: int = 3,
    *,
    workers: int = 1,
    progress: bool = False,
) -> tuple[list[Study], Ledger]:
    """The usable studies of ``splits`` (None: all), chosen as ``medst prepare`` chooses them, writing nothing.

    Phases 1 to 5 without the image cache: images are only checked to decode. Returns the studies in subject and
    study order (their ``views.frontal`` / ``views.lateral`` and ``text``) and the :class:`Ledger` of what was
    left out (its warnings already printed; ``ledger.counts("study")``: studies left out per reason).
    """
    root = Path(mimic_root)
    ledger = Ledger(root)
    studies, _ = read_metadata(root)
    if splits is not None:
        studies = [st for st in studies if st.split in set(splits)]
    studies = screen_studies(studies, ledger)
    studies = read_reports(
        studies, report_source(root, reports_dir), min_words, ledger, workers=workers, progress=progress
    )
    choose_images(studies, ledger, workers=workers, progress=progress)
    studies = keep_readable(studies, ledger)
    ledger.flush_note()
    return studies, ledger
