"""``medst prepare``: a MIMIC-CXR-JPG root (real or phantom) -> the pre-training index of Method §1.

Input (the MIMIC-CXR-JPG v2 layout)::

    MIMIC_ROOT/files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg
    MIMIC_ROOT/mimic-cxr-2.0.0-metadata.csv[.gz]   dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime
    MIMIC_ROOT/mimic-cxr-2.0.0-split.csv[.gz]      dicom_id, study_id, subject_id, split
    REPORTS/files/pXX/pSUBJECT/sSTUDY.txt          free-text reports (MIMIC-CXR), or
    REPORTS = mimic_cxr_sectioned.csv[.gz]         study ("s5..."), impression, findings[, last_paragraph]

Output (``out_dir``)::

    studies.csv      one row per usable study, ordered by split, subject, time
    sequences.csv    every window of L consecutive usable studies of a patient (stride 1), per split
    images_{S}.npy   uint8 [n_images, S, S] resize-and-pad cache, one row per image studies.csv uses
                     (its frontal_cache / lateral_cache columns); not written when cache_size is 0/None
    skipped.csv      every image, study and patient left out, with the reason
    summary.json     the counts of :class:`PrepareSummary`
    prepare.json     the arguments (absolute MIMIC root), so a Dataset can find the original images

What is a usable study (Method §1): its report text (impression + findings) has >= ``min_words`` word tokens,
and it has a readable frontal image (PA preferred over AP, then the smallest dicom_id). Its lateral is the
first readable of LATERAL then LL images (smallest dicom_id first), or none. Nothing is dropped silently:
every left-out item gets a row in ``skipped.csv``, a warning naming the file and a count in the summary.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medst.data.images import ImageReadError, read_image, resize_pad
from medst.data.reports import join_sections, report_text, word_tokens

log = logging.getLogger(__name__)

FRONTAL_VIEWS = ("PA", "AP")          # in order of preference
LATERAL_VIEWS = ("LATERAL", "LL")     # in order of preference
SPLIT_ORDER = ("train", "validate", "test")
METADATA_NAME = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_NAME = "mimic-cxr-2.0.0-split.csv"
SECTIONED_NAME = "mimic_cxr_sectioned.csv"
FORMAT_VERSION = 1
WARN_PER_REASON = 20                  # warnings printed per reason; the rest go to skipped.csv only

# Reasons, as written in skipped.csv and counted in the summary.
NO_SPLIT = "no split"
NO_DATE = "no study date"
NO_FRONTAL = "no frontal image"
NO_REPORT = "no report"
SHORT_REPORT = "short report"
UNREADABLE_FRONTAL = "unreadable frontal image"
MISSING_FILE = "missing file"
CORRUPT_IMAGE = "corrupt image"
OTHER_VIEW = "view not used"
EXTRA_VIEW = "extra view"
STUDY_SKIPPED = "study skipped"
SHORT_PATIENT = "fewer than L usable studies"  # L = sequence_length


# ---------------------------------------------------------------------------------------------------------
# Small helpers shared with the Dataset
# ---------------------------------------------------------------------------------------------------------
def image_relpath(subject_id: int, study_id: int, dicom_id: str) -> str:
    """``files/pXX/pSUBJECT/sSTUDY/DICOM_ID.jpg`` relative to the MIMIC-CXR-JPG root."""
    s = str(subject_id)
    return f"files/p{s[:2]}/p{s}/s{study_id}/{dicom_id}.jpg"


def report_relpath(subject_id: int, study_id: int) -> str:
    """``pXX/pSUBJECT/sSTUDY.txt`` relative to the reports' ``files`` folder."""
    s = str(subject_id)
    return f"p{s[:2]}/p{s}/s{study_id}.txt"


def sliding_windows(groups: Sequence[Any], length: int) -> list[tuple[int, ...]]:
    """Every window of ``length`` consecutive positions (stride 1) inside runs of equal ``groups`` values.

    ``groups`` is e.g. the subject id of each row of a time-ordered study table: rows of one patient must be
    contiguous and in time order. Returns tuples of row positions, in row order.
    """
    if length < 1:
        raise ValueError(f"sequence length must be >= 1, got {length}")
    windows: list[tuple[int, ...]] = []
    start = 0
    n = len(groups)
    for end in range(1, n + 1):
        if end == n or groups[end] != groups[start]:
            windows.extend(tuple(range(i, i + length)) for i in range(start, end - length + 1))
            start = end
    return windows


def _split_rank(split: str) -> tuple[int, str]:
    return (SPLIT_ORDER.index(split), split) if split in SPLIT_ORDER else (len(SPLIT_ORDER), split)


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
# Summary and problem log
# ---------------------------------------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    """What ``prepare`` kept and what it left out, and why. Counts add up:

    ``studies_seen == studies_usable + sum(skipped_studies.values())`` and
    ``images_seen == images_used + sum(skipped_images.values())``.
    """

    out_dir: str
    studies_seen: int = 0
    studies_usable: int = 0
    studies_with_lateral: int = 0
    images_seen: int = 0
    images_used: int = 0
    cache_file: str | None = None
    studies_per_split: dict[str, int] = field(default_factory=dict)
    patients_per_split: dict[str, int] = field(default_factory=dict)
    patients_without_sequence: dict[str, int] = field(default_factory=dict)
    sequences_per_split: dict[str, int] = field(default_factory=dict)
    skipped_studies: dict[str, int] = field(default_factory=dict)
    skipped_images: dict[str, int] = field(default_factory=dict)
    sequence_length: int = 4
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """A short table for the terminal."""
        rows = [("studies seen", self.studies_seen), ("usable studies", self.studies_usable),
                ("  with a lateral view", self.studies_with_lateral)]
        rows += [(f"  {split}", n) for split, n in self.studies_per_split.items()]
        rows += [(f"sequences (L={self.sequence_length}) {split}", n) for split, n in self.sequences_per_split.items()]
        rows += [(f"patients {split} (no sequence: singles only)",
                  f"{self.patients_per_split.get(split, 0)} ({self.patients_without_sequence.get(split, 0)})")
                 for split in self.patients_per_split]
        rows += [(f"skipped study: {reason}", n) for reason, n in self.skipped_studies.items()]
        rows += [("images seen", self.images_seen), ("images used", self.images_used)]
        rows += [(f"image not used: {reason}", n) for reason, n in self.skipped_images.items()]
        width = max(len(name) for name, _ in rows)
        lines = [f"medst prepare -> {self.out_dir} ({self.seconds:.1f} s)"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.skipped_studies or self.skipped_images:
            lines.append(f"  every left-out item is listed with its reason in {Path(self.out_dir) / 'skipped.csv'}")
        return "\n".join(lines)


class _Problems:
    """Collects left-out items for skipped.csv and warns (the first few per reason) naming the file.

    Warnings are queued and printed by :meth:`emit` between progress bars, so the two do not interleave.
    """

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []
        self.per_reason: Counter[tuple[str, str]] = Counter()
        self.warned: Counter[tuple[str, str]] = Counter()
        self.queue: list[tuple[int, str]] = []

    def add(self, kind: str, item: str, reason: str, detail: str = "", warn: bool = True) -> None:
        self.rows.append({"kind": kind, "item": item, "reason": reason, "detail": detail})
        key = (kind, reason)
        self.per_reason[key] += 1
        if not warn:
            return
        message = f"{item}: {kind} skipped: {reason}" + (f" ({detail})" if detail else "")
        self.warned[key] += 1
        self.queue.append((logging.WARNING if self.warned[key] <= WARN_PER_REASON else logging.DEBUG, message))

    def emit(self) -> None:
        for level, message in self.queue:
            log.log(level, message)
        self.queue.clear()

    def flush_note(self) -> None:
        self.emit()
        for (kind, reason), n in sorted(self.warned.items()):
            if n > WARN_PER_REASON:
                log.warning("... and %d more %s(s) skipped for %r (see skipped.csv)", n - WARN_PER_REASON, kind, reason)


# ---------------------------------------------------------------------------------------------------------
# Parallel work: reports and images
# ---------------------------------------------------------------------------------------------------------
def _default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 16))


def _parallel_map(fn: Callable[[Any], Any], items: list[Any], workers: int, desc: str, progress: bool,
                  unit: str) -> Iterator[Any]:
    """``map(fn, items)`` in order, with ``workers`` processes and a progress bar."""
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True)
    try:
        if workers <= 1 or len(items) < 4 * workers:
            for item in items:
                yield fn(item)
                bar.update()
            return
        chunk = max(1, min(64, len(items) // (8 * workers)))
        with multiprocessing.get_context().Pool(workers) as pool:
            for result in pool.imap(fn, items, chunksize=chunk):
                yield result
                bar.update()
    finally:
        bar.close()


def _read_report_file(path: str) -> tuple[str | None, str]:
    """(report text or None if the file is missing, error detail)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return report_text(f.read()), ""
    except FileNotFoundError:
        return None, "file not found"
    except OSError as exc:
        return None, f"cannot read ({exc})"


def _decode_for_cache(task: tuple[str, int]) -> tuple[np.ndarray | None, str, str]:
    """(resized uint8 [side, side] or None, problem reason, detail). ``side`` 0 only checks the file decodes."""
    path, side = task
    try:
        img = read_image(path, reduce_to=side if side > 0 else 64)
    except ImageReadError as exc:
        return None, (MISSING_FILE if exc.missing else CORRUPT_IMAGE), exc.reason
    return (resize_pad(img, side) if side > 0 else None), "", ""


class _CacheWriter:
    """Appends uint8 [side, side] images to ``images_{side}.npy`` in order; trims the unused capacity at the end."""

    def __init__(self, path: Path, capacity: int, side: int):
        self.path, self.side, self.count = path, side, 0
        self.partial = path.with_name(path.name + ".partial")
        self.array = np.lib.format.open_memmap(self.partial, mode="w+", dtype=np.uint8,
                                               shape=(max(capacity, 1), side, side))
        self.offset = self.array.offset

    def append(self, img: np.ndarray) -> int:
        self.array[self.count] = img
        self.count += 1
        return self.count - 1

    def abort(self) -> None:
        """Remove the partial file (an interrupted run must not leave a cache that looks complete)."""
        del self.array
        self.partial.unlink(missing_ok=True)

    def close(self) -> None:
        self.array.flush()
        del self.array
        header = _npy_header((self.count, self.side, self.side))
        if len(header) == self.offset:  # rewrite the header in place and cut the unused tail
            with open(self.partial, "r+b") as f:
                f.write(header)
                f.truncate(self.offset + self.count * self.side * self.side)
        else:  # pragma: no cover - header length changed (never for realistic counts): copy
            src = np.load(self.partial, mmap_mode="r")[: self.count]
            np.save(self.path.with_name(self.path.name + ".tmp.npy"), src)
            del src
            os.replace(self.path.with_name(self.path.name + ".tmp.npy"), self.partial)
        os.replace(self.partial, self.path)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------------------
@dataclass
class _Study:
    subject_id: int
    study_id: int
    split: str
    when: datetime | None
    frontal: list[tuple[str, str]]       # (dicom_id, view), preference order
    lateral: list[tuple[str, str]]
    other: list[str]                     # dicom ids of views Med-ST does not use
    text: str = ""
    frontal_pick: tuple[str, str, int] | None = None   # (dicom_id, view, cache row)
    lateral_pick: tuple[str, str, int] | None = None
    next_frontal: int = 0
    next_lateral: int = 0


def _load_metadata(root: Path) -> tuple[list[_Study], int]:
    """metadata + split CSVs -> studies (views sorted by preference) and the number of image rows."""
    meta_path = _find(root, METADATA_NAME)
    split_path = _find(root, SPLIT_NAME)
    if meta_path is None or split_path is None:
        missing = METADATA_NAME if meta_path is None else SPLIT_NAME
        raise FileNotFoundError(f"{root / missing}: not found (nor .gz); expected a MIMIC-CXR-JPG root with "
                                f"files/, {METADATA_NAME} and {SPLIT_NAME}")
    meta = _read_csv(meta_path, ("dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"),
                     dtype={"dicom_id": str, "ViewPosition": str})
    split = _read_csv(split_path, ("dicom_id", "split"), dtype={"dicom_id": str, "split": str})
    split = split.drop_duplicates("dicom_id")
    meta = meta.merge(split[["dicom_id", "split"]], on="dicom_id", how="left")
    meta["ViewPosition"] = meta["ViewPosition"].fillna("").str.strip().str.upper()
    meta["split"] = meta["split"].fillna("").str.strip()
    meta = meta.sort_values(["subject_id", "study_id", "dicom_id"], kind="stable")

    frontal_rank = {v: i for i, v in enumerate(FRONTAL_VIEWS)}
    lateral_rank = {v: i for i, v in enumerate(LATERAL_VIEWS)}
    columns = [meta[c].tolist() for c in ("subject_id", "study_id", "dicom_id", "ViewPosition", "split",
                                           "StudyDate", "StudyTime")]
    studies: list[_Study] = []
    for (subject, study), rows in itertools.groupby(zip(*columns), key=lambda r: (r[0], r[1])):
        rows = list(rows)
        frontal = sorted([(r[2], r[3]) for r in rows if r[3] in frontal_rank],
                         key=lambda dv: (frontal_rank[dv[1]], dv[0]))
        lateral = sorted([(r[2], r[3]) for r in rows if r[3] in lateral_rank],
                         key=lambda dv: (lateral_rank[dv[1]], dv[0]))
        other = [r[2] for r in rows if r[3] not in frontal_rank and r[3] not in lateral_rank]
        splits = [r[4] for r in rows if r[4]]
        whens = [w for w in (_study_datetime(r[5], r[6]) for r in rows) if w is not None]
        studies.append(_Study(int(subject), int(study), splits[0] if splits else "", min(whens, default=None),
                              frontal, lateral, other))
    return studies, len(meta)


def _report_source(root: Path, reports_dir: str | os.PathLike | None) -> tuple[str, Path]:
    """('files', folder with pXX/...) or ('csv', sectioned CSV path)."""
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
    raise FileNotFoundError(f"{path}: no reports found; expected a folder with files/pXX/pSUBJECT/sSTUDY.txt "
                            f"or a sectioned CSV ({SECTIONED_NAME}: study, impression, findings)")


def _sectioned_texts(path: Path) -> dict[int, str]:
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


def prepare(mimic_root: str | os.PathLike, out_dir: str | os.PathLike, reports_dir: str | os.PathLike | None = None,
            cache_size: int | None = 256, sequence_length: int = 4, min_words: int = 3,
            workers: int | None = None, progress: bool = True) -> PrepareSummary:
    """Index a MIMIC-CXR-JPG root for Med-ST pre-training (Method §1); see the module docstring for the files.

    Args:
        mimic_root: folder with ``files/`` and the metadata and split CSVs.
        out_dir: output folder (created; files in it are overwritten).
        reports_dir: reports folder (``files/pXX/...txt``) or sectioned CSV; default ``mimic_root/mimic-cxr-reports``.
        cache_size: side of the resize-and-pad image cache (256 for 224 crops); 0 or None: no cache (images
            are still decoded once, to find corrupt files).
        sequence_length: L, studies per temporal sequence.
        min_words: a report needs at least this many word tokens.
        workers: processes for reading reports and decoding images (default: the available cores, at most 16).
        progress: show progress bars.
    """
    start = time.perf_counter()
    root = Path(mimic_root).expanduser().resolve()
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: MIMIC-CXR-JPG root not found")
    if sequence_length < 1 or min_words < 0:
        raise ValueError(f"prepare: need sequence_length >= 1 and min_words >= 0, got {sequence_length}, {min_words}")
    side = int(cache_size or 0)
    workers = _default_workers() if workers is None else max(1, int(workers))
    problems = _Problems()
    root_prefix = str(root) + os.sep

    def under(relpath: str) -> str:  # str(root / relpath), without pathlib's cost for 10^5 paths
        return root_prefix + relpath

    studies, images_seen = _load_metadata(root)
    summary = PrepareSummary(out_dir=str(out), studies_seen=len(studies), images_seen=images_seen,
                             sequence_length=sequence_length)
    skipped_studies: Counter[str] = Counter()
    skipped_images: Counter[str] = Counter()

    def skip_study(st: _Study, reason: str, detail: str = "", item: str | None = None) -> None:
        skipped_studies[reason] += 1
        problems.add("study", item or under(f"files/p{str(st.subject_id)[:2]}/p{st.subject_id}/s{st.study_id}"),
                     reason, detail)
        unused = [d for d, _ in st.frontal[st.next_frontal:]] + [d for d, _ in st.lateral[st.next_lateral:]]
        for dicom in unused + st.other:
            skipped_images[STUDY_SKIPPED] += 1
            problems.add("image", under(image_relpath(st.subject_id, st.study_id, dicom)), STUDY_SKIPPED, reason,
                         warn=False)

    # 1. Studies without split, date or frontal view: known from the metadata alone.
    candidates: list[_Study] = []
    for st in studies:
        if not st.split:
            skip_study(st, NO_SPLIT, "no row in the split CSV")
        elif st.when is None:
            skip_study(st, NO_DATE, "StudyDate missing or invalid")
        elif not st.frontal:
            views = sorted({v for _, v in st.lateral}) or ["none"]
            skip_study(st, NO_FRONTAL, f"views present: {', '.join(views)} (+{len(st.other)} other)")
        else:
            candidates.append(st)

    problems.emit()

    # 2. Reports: impression + findings with >= min_words word tokens.
    kind, source = _report_source(root, reports_dir)
    if kind == "csv":
        sectioned = _sectioned_texts(source)
        texts: list[tuple[str | None, str]] = [
            (sectioned[st.study_id], "") if st.study_id in sectioned else (None, f"study not in {source.name}")
            for st in candidates]
        report_item = [f"{source}:s{st.study_id}" for st in candidates]
    else:
        paths = [str(source) + os.sep + report_relpath(st.subject_id, st.study_id) for st in candidates]
        texts = list(_parallel_map(_read_report_file, paths, workers, "read reports", progress, "report"))
        report_item = paths
    with_report: list[_Study] = []
    for st, (text, detail), item in zip(candidates, texts, report_item):
        if text is None:
            skip_study(st, NO_REPORT, detail, item=item)
        elif len(word_tokens(text)) < min_words:
            skip_study(st, SHORT_REPORT, f"{len(word_tokens(text))} word(s) < {min_words}: {text[:60]!r}", item=item)
        else:
            st.text = text
            with_report.append(st)
    problems.emit()

    # Output order: split, subject, time (study id breaks ties) -- also the cache order of the first round.
    with_report.sort(key=lambda s: (_split_rank(s.split), s.subject_id, s.when, s.study_id))

    # 3. Images, in rounds: the preferred frontal of every study; then the preferred lateral of the studies
    #    with a readable frontal and the next frontal candidate where the file was missing or corrupt; and so
    #    on, until every view has a readable image or no candidates left. Cache rows are in decoding order.
    capacity = sum(1 for st in with_report) + sum(1 for st in with_report if st.lateral)
    cache_name = f"images_{side}.npy" if side > 0 else None
    writer = _CacheWriter(out / cache_name, capacity, side) if cache_name else None
    used = 0
    round_no = 0
    try:
        while True:
            round_no += 1
            tasks: list[tuple[_Study, str]] = []
            for st in with_report:
                if st.frontal_pick is None and st.next_frontal < len(st.frontal):
                    tasks.append((st, "frontal"))
                if st.frontal_pick is not None and st.lateral_pick is None and st.next_lateral < len(st.lateral):
                    tasks.append((st, "lateral"))  # only for studies whose frontal is readable
            if not tasks:
                break
            jobs = []
            for st, view in tasks:
                dicom = (st.frontal[st.next_frontal] if view == "frontal" else st.lateral[st.next_lateral])[0]
                jobs.append((under(image_relpath(st.subject_id, st.study_id, dicom)), side))
            desc = {1: "decode frontal images", 2: "decode lateral images"}.get(round_no, f"decode (round {round_no})")
            results = _parallel_map(_decode_for_cache, jobs, workers, desc, progress, "img")
            for (img, reason, detail), (st, view), (path, _) in zip(results, tasks, jobs):  # results first: the
                # generator must run to its end to close its pool and progress bar
                if view == "frontal":
                    dicom, vp = st.frontal[st.next_frontal]
                    st.next_frontal += 1
                else:
                    dicom, vp = st.lateral[st.next_lateral]
                    st.next_lateral += 1
                if reason:
                    skipped_images[reason] += 1
                    problems.add("image", path, reason, detail)
                    continue
                row = writer.append(img) if writer is not None else -1
                used += 1
                if view == "frontal":
                    st.frontal_pick = (dicom, vp, row)
                else:
                    st.lateral_pick = (dicom, vp, row)
            problems.emit()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()

    usable: list[_Study] = []
    for st in with_report:
        if st.frontal_pick is None:
            skip_study(st, UNREADABLE_FRONTAL, f"all {len(st.frontal)} frontal image(s) missing or corrupt")
            continue
        extra = [d for d, _ in st.frontal[st.next_frontal:]] + [d for d, _ in st.lateral[st.next_lateral:]]
        for dicom in extra:
            skipped_images[EXTRA_VIEW] += 1
            problems.add("image", under(image_relpath(st.subject_id, st.study_id, dicom)), EXTRA_VIEW,
                         "another image of this view was used", warn=False)
        for dicom in st.other:
            skipped_images[OTHER_VIEW] += 1
            problems.add("image", under(image_relpath(st.subject_id, st.study_id, dicom)), OTHER_VIEW,
                         "ViewPosition is not PA, AP, LATERAL or LL", warn=False)
        usable.append(st)

    # 4. Tables.
    table = pd.DataFrame({
        "split": [st.split for st in usable],
        "subject_id": [st.subject_id for st in usable],
        "study_id": [st.study_id for st in usable],
        "study_datetime": [st.when.isoformat(timespec="milliseconds") for st in usable],
        "frontal": [image_relpath(st.subject_id, st.study_id, st.frontal_pick[0]) for st in usable],
        "frontal_view": [st.frontal_pick[1] for st in usable],
        "lateral": [image_relpath(st.subject_id, st.study_id, st.lateral_pick[0]) if st.lateral_pick else ""
                    for st in usable],
        "lateral_view": [st.lateral_pick[1] if st.lateral_pick else "" for st in usable],
        "frontal_cache": [st.frontal_pick[2] for st in usable],
        "lateral_cache": [st.lateral_pick[2] if st.lateral_pick else -1 for st in usable],
        "text": [st.text for st in usable],
    })
    table.to_csv(out / "studies.csv", index=False)

    groups = list(zip(table["split"], table["subject_id"]))
    windows = sliding_windows(groups, sequence_length)
    per_subject: Counter[tuple[str, int]] = Counter()
    seq_rows = []
    study_ids = [st.study_id for st in usable]
    for w in windows:
        key = groups[w[0]]
        seq_rows.append({"split": key[0], "subject_id": key[1], "sequence_index": per_subject[key],
                         "study_ids": ";".join(str(study_ids[i]) for i in w)})
        per_subject[key] += 1
    pd.DataFrame(seq_rows, columns=["split", "subject_id", "sequence_index", "study_ids"]).to_csv(
        out / "sequences.csv", index=False)

    patients = Counter(split for split, _ in dict.fromkeys(groups))
    study_counts = Counter(groups)
    short = Counter()
    for (split, subject), n in study_counts.items():
        if n < sequence_length:
            short[split] += 1
            problems.add("patient", f"p{subject}", SHORT_PATIENT,
                         f"{n} usable stud{'y' if n == 1 else 'ies'} in {split}: used as single studies only",
                         warn=False)
    splits = sorted(patients, key=_split_rank)

    summary.studies_usable = len(usable)
    summary.studies_with_lateral = sum(1 for st in usable if st.lateral_pick is not None)
    summary.images_used = used
    summary.cache_file = cache_name
    summary.studies_per_split = {s: int((table["split"] == s).sum()) for s in splits}
    summary.patients_per_split = {s: patients[s] for s in splits}
    summary.patients_without_sequence = {s: short[s] for s in splits}
    sequences = Counter(r["split"] for r in seq_rows)
    summary.sequences_per_split = {s: sequences[s] for s in splits}
    summary.skipped_studies = dict(sorted(skipped_studies.items()))
    summary.skipped_images = dict(sorted(skipped_images.items()))

    pd.DataFrame(problems.rows, columns=["kind", "item", "reason", "detail"]).to_csv(out / "skipped.csv", index=False)
    problems.flush_note()
    if short:
        log.info("%d patient(s) have fewer than %d usable studies: their studies are used as single studies "
                 "(listed in skipped.csv as kind=patient)", sum(short.values()), sequence_length)
    summary.seconds = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    (out / "prepare.json").write_text(json.dumps({
        "format_version": FORMAT_VERSION, "mimic_root": str(root), "reports": str(source),
        "cache_size": side or None, "cache_file": cache_name, "sequence_length": sequence_length,
        "min_words": min_words}, indent=2))
    assert summary.studies_seen == summary.studies_usable + sum(summary.skipped_studies.values())
    assert summary.images_seen == summary.images_used + sum(summary.skipped_images.values())
    return summary
