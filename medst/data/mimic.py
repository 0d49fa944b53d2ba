"""``medst prepare``: a MIMIC-CXR-JPG root (real or phantom) -> the pre-training index of Method §1.

The input layout and the rule that picks the usable studies (phases 1 to 5) are :mod:`medst.data.studies`;
this module runs them and writes the index (phases 6 to 8: the study table, the sequences, the counts).

Output (``out_dir``)::

    studies.csv      one row per usable study, ordered by split, subject, time
    sequences.csv    every window of L consecutive usable studies of a patient (stride 1), per split
                     (:func:`sliding_windows`)
    images_{S}.npy   uint8 [n_images, S, S] resize-and-pad cache, one row per image studies.csv uses
                     (its frontal_cache / lateral_cache columns); not written when cache_size is 0/None
    ct_volumes.csv   one row per usable CT volume when MIMIC_ROOT has a ct/ folder (:mod:`medst.data.ct`)
    skipped.csv      every image, study, patient and CT volume left out, with the reason
    summary.json     the counts of :class:`PrepareSummary`
    prepare.json     the arguments (absolute MIMIC root), so a Dataset can find the original images
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from medst.data.cache import CacheWriter, default_workers
from medst.data.ct import index_volumes
from medst.data.studies import (
    SPLIT_ORDER,
    Ledger,
    Study,
    choose_images,
    image_relpath,
    keep_readable,
    read_metadata,
    read_reports,
    report_source,
    screen_studies,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SHORT_PATIENT = "fewer than L usable studies"  # a reason in skipped.csv (kind "patient"); L = sequence_length


# ---------------------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------------------
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


# ---------------------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------------------
@dataclass
class PrepareSummary:
    """What ``prepare`` kept and what it left out, and why. Counts add up:

    ``studies_seen == studies_usable + sum(skipped_studies.values())``,
    ``images_seen == images_used + sum(skipped_images.values())`` and
    ``volumes_seen == volumes_used + sum(skipped_volumes.values())`` (CT volumes; 0 without a ct/ folder).
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
    volumes_seen: int = 0
    volumes_used: int = 0
    skipped_volumes: dict[str, int] = field(default_factory=dict)
    sequence_length: int = 4
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def format(self) -> str:
        """A short table for the terminal."""
        rows = [
            ("studies seen", self.studies_seen),
            ("usable studies", self.studies_usable),
            ("  with a lateral view", self.studies_with_lateral),
        ]
        rows += [(f"  {split}", n) for split, n in self.studies_per_split.items()]
        rows += [(f"sequences (L={self.sequence_length}) {split}", n) for split, n in self.sequences_per_split.items()]
        rows += [
            (
                f"patients {split} (no sequence: singles only)",
                f"{self.patients_per_split.get(split, 0)} ({self.patients_without_sequence.get(split, 0)})",
            )
            for split in self.patients_per_split
        ]
        rows += [(f"skipped study: {reason}", n) for reason, n in self.skipped_studies.items()]
        rows += [("images seen", self.images_seen), ("images used", self.images_used)]
        rows += [(f"image not used: {reason}", n) for reason, n in self.skipped_images.items()]
        if self.volumes_seen:
            rows += [("CT volumes seen", self.volumes_seen), ("CT volumes used", self.volumes_used)]
            rows += [(f"CT volume not used: {reason}", n) for reason, n in self.skipped_volumes.items()]
        width = max(len(name) for name, _ in rows)
        lines = [f"medst prepare -> {self.out_dir} ({self.seconds:.1f} s)"]
        lines += [f"  {name:<{width}}  {value}" for name, value in rows]
        if self.skipped_studies or self.skipped_images or self.skipped_volumes:
            lines.append(f"  every left-out item is listed with its reason in {Path(self.out_dir) / 'skipped.csv'}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------------------
def _output_order(st: Study) -> tuple:
    """Rows of studies.csv: split, subject, time (study id breaks ties); also the cache order of the first round."""
    return _split_rank(st.split), st.subject_id, st.when, st.study_id


def _decode_and_cache(
    studies: list[Study], out: Path, side: int, ledger: Ledger, workers: int, progress: bool
) -> tuple[str | None, int]:
    """Phase 4 with the cache: :func:`choose_images` into ``out/images_{side}.npy`` (none for side 0; a run cut
    short leaves no cache). Returns (cache file name or None, images used)."""
    capacity = len(studies) + sum(1 for st in studies if st.views.lateral_candidates)
    cache_name = f"images_{side}.npy" if side > 0 else None
    writer = CacheWriter(out / cache_name, capacity, side) if cache_name else None
    try:
        used = choose_images(studies, ledger, side=side, writer=writer, workers=workers, progress=progress)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if writer is not None:
        writer.close()
    return cache_name, used


def _write_studies(usable: list[Study], out: Path) -> pd.DataFrame:
    """Phase 6: ``studies.csv``, one row per usable study (images as paths under the MIMIC root, cache rows,
    report text). Returns the table."""

    def path(st: Study, pick: tuple[str, str] | None) -> str:
        return image_relpath(st.subject_id, st.study_id, pick[0]) if pick else ""

    table = pd.DataFrame(
        {
            "split": [st.split for st in usable],
            "subject_id": [st.subject_id for st in usable],
            "study_id": [st.study_id for st in usable],
            "study_datetime": [st.when.isoformat(timespec="milliseconds") for st in usable],
            "frontal": [path(st, st.views.frontal) for st in usable],
            "frontal_view": [st.views.frontal[1] for st in usable],
            "lateral": [path(st, st.views.lateral) for st in usable],
            "lateral_view": [st.views.lateral[1] if st.views.lateral else "" for st in usable],
            "frontal_cache": [st.frontal_cache for st in usable],
            "lateral_cache": [st.lateral_cache if st.views.lateral else -1 for st in usable],
            "text": [st.text for st in usable],
        }
    )
    table.to_csv(out / "studies.csv", index=False)
    return table


def _write_sequences(table: pd.DataFrame, sequence_length: int, out: Path) -> list[dict[str, Any]]:
    """Phase 7: ``sequences.csv``, every window of ``sequence_length`` consecutive studies of a patient in one
    split (:func:`sliding_windows`). Returns its rows."""
    groups = list(zip(table["split"], table["subject_id"]))
    study_ids = table["study_id"].tolist()
    per_subject: Counter[tuple[str, int]] = Counter()
    rows = []
    for w in sliding_windows(groups, sequence_length):
        key = groups[w[0]]
        rows.append(
            {
                "split": key[0],
                "subject_id": key[1],
                "sequence_index": per_subject[key],
                "study_ids": ";".join(str(study_ids[i]) for i in w),
            }
        )
        per_subject[key] += 1
    pd.DataFrame(rows, columns=["split", "subject_id", "sequence_index", "study_ids"]).to_csv(
        out / "sequences.csv", index=False
    )
    return rows


def _summarise(
    summary: PrepareSummary,
    table: pd.DataFrame,
    sequences: list[dict[str, Any]],
    used: int,
    cache_name: str | None,
    ledger: Ledger,
) -> None:
    """Phase 8: fill ``summary`` with the counts per split; patients with fewer than L usable studies go to
    the ledger (kind "patient": used as single studies only)."""
    length = summary.sequence_length
    groups = list(zip(table["split"], table["subject_id"]))
    patients = Counter(split for split, _ in dict.fromkeys(groups))
    short: Counter[str] = Counter()
    for (split, subject), n in Counter(groups).items():
        if n < length:
            short[split] += 1
            ledger.add(
                "patient",
                f"p{subject}",
                SHORT_PATIENT,
                f"{n} usable stud{'y' if n == 1 else 'ies'} in {split}: used as single studies only",
                warn=False,
            )
    splits = sorted(patients, key=_split_rank)
    summary.studies_usable = len(table)
    summary.studies_with_lateral = int((table["lateral"] != "").sum())
    summary.images_used = used
    summary.cache_file = cache_name
    summary.studies_per_split = {s: int((table["split"] == s).sum()) for s in splits}
    summary.patients_per_split = {s: patients[s] for s in splits}
    summary.patients_without_sequence = {s: short[s] for s in splits}
    per_split = Counter(r["split"] for r in sequences)
    summary.sequences_per_split = {s: per_split[s] for s in splits}
    summary.skipped_studies = ledger.counts("study")
    summary.skipped_images = ledger.counts("image")
    summary.skipped_volumes = ledger.counts("volume")
    if short:
        log.info(
            "%d patient(s) have fewer than %d usable studies: their studies are used as single studies "
            "(listed in skipped.csv as kind=patient)",
            sum(short.values()),
            length,
        )


def prepare(
    mimic_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    reports_dir: str | os.PathLike | None = None,
    cache_size: int | None = 256,
    sequence_length: int = 4,
    min_words: int = 3,
    workers: int | None = None,
    progress: bool = True,
) -> PrepareSummary:
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
    workers = default_workers() if workers is None else max(1, int(workers))
    ledger = Ledger(root)

    studies, images_seen = read_metadata(root)  # 1. metadata
    candidates = screen_studies(studies, ledger)  # 2. split, date, frontal
    source = report_source(root, reports_dir)
    with_report = read_reports(candidates, source, min_words, ledger, workers=workers, progress=progress)  # 3.
    with_report.sort(key=_output_order)
    cache_name, used = _decode_and_cache(with_report, out, side, ledger, workers, progress)  # 4. images, cache
    usable = keep_readable(with_report, ledger)  # 5. readable frontal
    table = _write_studies(usable, out)  # 6. studies.csv
    sequences = _write_sequences(table, sequence_length, out)  # 7. sequences.csv
    volumes_seen, volumes_used = index_volumes(root, table, out, ledger, workers=workers, progress=progress)  # 7b.
    summary = PrepareSummary(
        out_dir=str(out),
        studies_seen=len(studies),
        images_seen=images_seen,
        volumes_seen=volumes_seen,
        volumes_used=volumes_used,
        sequence_length=sequence_length,
    )
    _summarise(summary, table, sequences, used, cache_name, ledger)  # 8. counts
    pd.DataFrame(ledger.rows, columns=["kind", "item", "reason", "detail"]).to_csv(out / "skipped.csv", index=False)
    ledger.flush_note()
    summary.seconds = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2))
    (out / "prepare.json").write_text(
        json.dumps(
            {
                "format_version": FORMAT_VERSION,
                "mimic_root": str(root),
                "reports": str(source[1]),
                "cache_size": side or None,
                "cache_file": cache_name,
                "sequence_length": sequence_length,
                "min_words": min_words,
            },
            indent=2,
        )
    )
    assert summary.studies_seen == summary.studies_usable + sum(summary.skipped_studies.values())
    assert summary.images_seen == summary.images_used + sum(summary.skipped_images.values())
    assert summary.volumes_seen == summary.volumes_used + sum(summary.skipped_volumes.values())
    return summary
