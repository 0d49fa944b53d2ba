"""Report text, image reading and ``medst prepare`` on a hand-made MIMIC-CXR-JPG tree (Method §1).

The tree below is written by :func:`build_fixture` in the real formats (JPEG files in files/pXX/..., the
metadata and split CSVs, free-text reports). Its expected outcome is written out by hand, study by study,
and the bad inputs (corrupt and truncated JPEGs, a metadata row without a file, a study without report, a
study with a too-short report, a lateral-only study) are part of it.
"""

from __future__ import annotations

import io
import json
import logging
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medst.data.images import ImageReadError, load_resized, read_image, resize_pad
from medst.data.mimic import prepare, sliding_windows
from medst.data.reports import extract_sections, report_text, word_tokens
from medst.data.studies import select_views

# ---------------------------------------------------------------------------------------------------------
# The fixture: a small MIMIC-CXR-JPG tree
# ---------------------------------------------------------------------------------------------------------
MIMIC_REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___ year old man with cough  // eval for pneumonia

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  ___

 FINDINGS:

 {findings}

 IMPRESSION:

 {impression}
"""


@dataclass
class Img:
    dicom_id: str
    view: str
    kind: str = "ok"  # ok | truncated | garbage | missing
    size: tuple[int, int] = (48, 40)  # (rows, columns)


@dataclass
class St:
    study_id: int
    date: object  # YYYYMMDD int, or "" for a missing date
    time: float
    images: list[Img]
    report: str | None = "default"  # "default" -> MIMIC_REPORT with study-specific text; None -> no file
    findings: str = ""
    impression: str = ""


@dataclass
class Patient:
    subject_id: int
    split: str
    studies: list[St] = field(default_factory=list)
    in_split_csv: bool = True


def _study(study_id, date, time, images, report="default"):
    return St(
        study_id,
        date,
        time,
        images,
        report,
        findings=f"Heart size is normal. Finding text for study {study_id} with a small effusion.",
        impression=f"Impression for study {study_id}: mild change.",
    )


PATIENTS = [
    # A: 5 usable studies, study ids NOT in time order; view preference cases.
    Patient(
        10000001,
        "train",
        [
            _study(50000011, 21800301, 101500.0, [Img("a11-2", "PA", size=(400, 320)), Img("a11-1", "LATERAL")]),
            _study(
                50000012,
                21800105,
                93000.0,
                [Img("a12-0", "AP"), Img("a12-1", "PA"), Img("a12-2", "LL"), Img("a12-3", "LATERAL")],
            ),
            _study(50000013, 21791120, 120000.0, [Img("a13-5", "PA"), Img("a13-4", "PA")]),
            _study(50000014, 21800520, 80000.5, [Img("a14-0", "AP"), Img("a14-1", "LL")]),
            _study(50000015, 21800610, 235959.0, [Img("a15-0", "PA"), Img("a15-1", "LATERAL")]),
        ],
    ),
    # B: 4 studies, two on one day: 09:15 must come before 10:15 (91500 < 101500 as numbers, not strings).
    Patient(
        10000002,
        "validate",
        [
            _study(50000021, 21900101, 101500.0, [Img("b21-0", "PA"), Img("b21-1", "LATERAL")]),
            _study(50000022, 21900101, 91500.0, [Img("b22-0", "PA")]),
            _study(50000023, 21900301, 0.0, [Img("b23-0", "AP"), Img("b23-1", "LATERAL")]),
            _study(50000024, 21900401, 120000.0, [Img("b24-0", "PA"), Img("b24-1", "LATERAL")]),
        ],
    ),
    # C: 2 studies in test -> a patient without sequence.
    Patient(
        11000003,
        "test",
        [
            _study(50000031, 21850101, 120000.0, [Img("c31-0", "PA"), Img("c31-1", "LATERAL")]),
            _study(50000032, 21850201, 120000.0, [Img("c32-0", "AP")]),
        ],
    ),
    # D: the bad inputs; 4 usable studies remain (s41, s46, s47, s48).
    Patient(
        12000004,
        "train",
        [
            _study(50000041, 21700101, 100000.0, [Img("d41-0", "PA"), Img("d41-1", "LATERAL")]),
            _study(50000042, 21700201, 100000.0, [Img("d42-0", "PA"), Img("d42-1", "LATERAL")], report=None),
            _study(
                50000043, 21700301, 100000.0, [Img("d43-0", "PA")], report=" FINAL REPORT\n IMPRESSION:  No change.\n"
            ),
            _study(50000044, 21700401, 100000.0, [Img("d44-0", "LATERAL")]),
            _study(50000045, 21700501, 100000.0, [Img("d45-0", "PA", "truncated")]),
            _study(
                50000046,
                21700601,
                100000.0,
                [Img("d46-0", "PA", "missing"), Img("d46-1", "AP"), Img("d46-2", "LATERAL")],
            ),
            _study(50000047, 21700701, 100000.0, [Img("d47-0", "PA"), Img("d47-1", "LATERAL", "garbage")]),
            _study(
                50000048,
                21700801,
                100000.0,
                [Img("d48-0", "PA"), Img("d48-1", "")],
                report=" FINAL REPORT\n\n PA and lateral views of the chest.\n\n The lungs are clear.  "
                "No pleural effusion.\n",
            ),
        ],
    ),
    # E: 3 train studies -> singles only; F: one study plus one without a date.
    Patient(
        10000005,
        "train",
        [
            _study(50000051, 21600101, 100000.0, [Img("e51-0", "PA")]),
            _study(50000052, 21600201, 100000.0, [Img("e52-0", "PA"), Img("e52-1", "LATERAL")]),
            _study(50000053, 21600301, 100000.0, [Img("e53-0", "AP")]),
        ],
    ),
    Patient(
        10000006,
        "train",
        [
            _study(50000061, 21650101, 100000.0, [Img("f61-0", "PA")]),
            _study(50000062, "", 100000.0, [Img("f62-0", "PA")]),
        ],
    ),
    # G: its images are missing from the split CSV.
    Patient(10000007, "train", [_study(50000071, 21650101, 100000.0, [Img("g71-0", "PA")])], in_split_csv=False),
]

# Expected outcome, written by hand from the table above.
EXPECTED_PAIRS = {  # study -> (frontal dicom, frontal view, lateral dicom, lateral view)
    50000011: ("a11-2", "PA", "a11-1", "LATERAL"),
    50000012: ("a12-1", "PA", "a12-3", "LATERAL"),  # PA over AP; LATERAL over LL
    50000013: ("a13-4", "PA", "", ""),  # two PA: smallest dicom id
    50000014: ("a14-0", "AP", "a14-1", "LL"),
    50000015: ("a15-0", "PA", "a15-1", "LATERAL"),
    50000021: ("b21-0", "PA", "b21-1", "LATERAL"),
    50000022: ("b22-0", "PA", "", ""),
    50000023: ("b23-0", "AP", "b23-1", "LATERAL"),
    50000024: ("b24-0", "PA", "b24-1", "LATERAL"),
    50000031: ("c31-0", "PA", "c31-1", "LATERAL"),
    50000032: ("c32-0", "AP", "", ""),
    50000041: ("d41-0", "PA", "d41-1", "LATERAL"),
    50000046: ("d46-1", "AP", "d46-2", "LATERAL"),  # the PA file is missing: fall back to AP
    50000047: ("d47-0", "PA", "", ""),  # the lateral is corrupt: no lateral
    50000048: ("d48-0", "PA", "", ""),
    50000051: ("e51-0", "PA", "", ""),
    50000052: ("e52-0", "PA", "e52-1", "LATERAL"),
    50000053: ("e53-0", "AP", "", ""),
    50000061: ("f61-0", "PA", "", ""),
}
EXPECTED_STUDY_SKIPS = {
    50000042: "no report",
    50000043: "short report",
    50000044: "no frontal image",
    50000045: "unreadable frontal image",
    50000062: "no study date",
    50000071: "no split",
}
EXPECTED_IMAGE_SKIPS = {
    "missing file": ["d46-0"],
    "corrupt image": ["d45-0", "d47-1"],
    "view not used": ["d48-1"],
    "extra view": ["a12-0", "a12-2", "a13-5"],
    "study skipped": ["d42-0", "d42-1", "d43-0", "d44-0", "f62-0", "g71-0"],
}
EXPECTED_ORDER = {  # split -> study ids in output order (subject, then time)
    "train": [
        50000013,
        50000012,
        50000011,
        50000014,
        50000015,
        50000051,
        50000052,
        50000053,
        50000061,
        50000041,
        50000046,
        50000047,
        50000048,
    ],
    "validate": [50000022, 50000021, 50000023, 50000024],
    "test": [50000031, 50000032],
}
EXPECTED_SEQUENCES = [  # (split, subject, sequence_index, study ids)
    ("train", 10000001, 0, [50000013, 50000012, 50000011, 50000014]),
    ("train", 10000001, 1, [50000012, 50000011, 50000014, 50000015]),
    ("train", 12000004, 0, [50000041, 50000046, 50000047, 50000048]),
    ("validate", 10000002, 0, [50000022, 50000021, 50000023, 50000024]),
]
EXPECTED_TEXT_OVERRIDES = {50000048: "The lungs are clear. No pleural effusion."}


def _jpeg_bytes(img: Img) -> bytes:
    rows, cols = img.size
    rng = np.random.default_rng(zlib.crc32(img.dicom_id.encode()))
    yy, xx = np.mgrid[0:rows, 0:cols]
    arr = 80 + 100 * np.sin(xx / max(cols, 1) * 3) * np.cos(yy / max(rows, 1) * 2) + rng.normal(0, 20, (rows, cols))
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L").save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def build_fixture(root: Path) -> Path:
    """Write the PATIENTS table as a MIMIC-CXR-JPG tree under ``root``; returns the MIMIC root."""
    mimic = root / "mimic-cxr-jpg"
    meta, split_rows = [], []
    for patient in PATIENTS:
        s = str(patient.subject_id)
        for st in patient.studies:
            folder = mimic / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st.study_id}"
            folder.mkdir(parents=True, exist_ok=True)
            for img in st.images:
                data = _jpeg_bytes(img)
                if img.kind == "truncated":
                    data = data[: len(data) // 2]
                elif img.kind == "garbage":
                    data = b"this is not a JPEG file" * 10
                if img.kind != "missing":
                    (folder / f"{img.dicom_id}.jpg").write_bytes(data)
                meta.append(
                    {
                        "dicom_id": img.dicom_id,
                        "subject_id": patient.subject_id,
                        "study_id": st.study_id,
                        "PerformedProcedureStepDescription": "CHEST (PA AND LAT)",
                        "ViewPosition": img.view,
                        "Rows": img.size[0],
                        "Columns": img.size[1],
                        "StudyDate": st.date,
                        "StudyTime": st.time,
                    }
                )
                if patient.in_split_csv:
                    split_rows.append(
                        {
                            "dicom_id": img.dicom_id,
                            "study_id": st.study_id,
                            "subject_id": patient.subject_id,
                            "split": patient.split,
                        }
                    )
            report_dir = mimic / "mimic-cxr-reports" / "files" / f"p{s[:2]}" / f"p{s}"
            report_dir.mkdir(parents=True, exist_ok=True)
            if st.report is not None:
                text = (
                    MIMIC_REPORT.format(findings=st.findings, impression=st.impression)
                    if st.report == "default"
                    else st.report
                )
                (report_dir / f"s{st.study_id}.txt").write_text(text)
    pd.DataFrame(meta).to_csv(mimic / "mimic-cxr-2.0.0-metadata.csv", index=False)
    pd.DataFrame(split_rows).to_csv(mimic / "mimic-cxr-2.0.0-split.csv", index=False)
    return mimic


def expected_text(study_id: int) -> str:
    if study_id in EXPECTED_TEXT_OVERRIDES:
        return EXPECTED_TEXT_OVERRIDES[study_id]
    return (
        f"Impression for study {study_id}: mild change. Heart size is normal. "
        f"Finding text for study {study_id} with a small effusion."
    )


@pytest.fixture(scope="module")
def mimic_root(tmp_path_factory) -> Path:
    return build_fixture(tmp_path_factory.mktemp("fixture"))


@pytest.fixture(scope="module")
def prepared(mimic_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    summary = prepare(mimic_root, out, cache_size=32, workers=1, progress=False)
    return out, summary


# ---------------------------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------------------------
def test_extract_sections_mimic_report():
    raw = MIMIC_REPORT.format(
        findings="No focal consolidation.\n Heart size is  normal.", impression="No acute cardiopulmonary process."
    )
    sections = extract_sections(raw)
    assert list(sections) == ["examination", "indication", "technique", "comparison", "findings", "impression"]
    assert sections["examination"] == "CHEST (PA AND LAT)"
    assert sections["indication"] == "___ year old man with cough // eval for pneumonia"
    assert sections["findings"] == "No focal consolidation. Heart size is normal."
    assert sections["impression"] == "No acute cardiopulmonary process."
    assert report_text(raw) == "No acute cardiopulmonary process. No focal consolidation. Heart size is normal."


@pytest.mark.parametrize(
    "raw, expected",
    [
        (" FINAL REPORT\n INDICATION: cough\n\n IMPRESSION:  Small left effusion.\n", "Small left effusion."),
        (" FINAL REPORT\n FINDINGS:\n\n Lungs are clear.\n Heart normal.\n", "Lungs are clear. Heart normal."),
        (" FINAL REPORT\n\n PA and lateral views.\n\n The lungs are clear.\n", "The lungs are clear."),
        ("INDICATION: fever\n\nCOMPARISON: none\n\nNo acute process, lungs clear.\n", "No acute process, lungs clear."),
        ("FINDINGS AND IMPRESSION: Stable cardiomegaly.\n", "Stable cardiomegaly."),
        ("IMPRESSION: One.\nNOTIFICATION: called Dr. ___.\nFINDINGS: Two.", "One. Two."),
        ("", ""),
    ],
)
def test_report_text_fallbacks(raw, expected):
    assert report_text(raw) == expected


def test_word_tokens():
    assert word_tokens("No acute  cardio-pulmonary process.") == ["no", "acute", "cardio", "pulmonary", "process"]
    assert word_tokens("Unchanged.") == ["unchanged"]
    assert word_tokens("  ... ") == []


# ---------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------
def test_resize_pad_geometry():
    img = np.full((30, 60), 200, dtype=np.uint8)  # wide: rows padded
    out = resize_pad(img, 20)
    assert out.shape == (20, 20) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[5:15], 200)  # 10 rows of image, centred
    np.testing.assert_array_equal(out[:5], 0)
    np.testing.assert_array_equal(out[15:], 0)
    tall = resize_pad(np.full((61, 30), 9, dtype=np.uint8), 20)  # 61x30 -> 20x10 (9.8 rounds to 10)
    np.testing.assert_array_equal(tall[:, 5:15], 9)
    np.testing.assert_array_equal(tall[:, :5], 0)
    np.testing.assert_array_equal(tall[:, 15:], 0)
    same = np.arange(16 * 16, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(resize_pad(same, 16), same)  # nothing to do


def test_read_image_modes_and_reduced_decode(tmp_path):
    big = Img("big", "PA", size=(480, 400))
    (tmp_path / "big.jpg").write_bytes(_jpeg_bytes(big))
    full = read_image(tmp_path / "big.jpg")
    assert full.shape == (480, 400) and full.dtype == np.uint8
    reduced = read_image(tmp_path / "big.jpg", reduce_to=64)
    assert max(reduced.shape) >= 64 and max(reduced.shape) < 480  # DCT-scaled decode
    diff = np.abs(resize_pad(reduced, 64).astype(int) - resize_pad(full, 64).astype(int))
    assert diff.mean() < 3.0
    # 16-bit PNG is scaled to 8 bits; RGB is converted to grey.
    arr16 = np.arange(20 * 10, dtype=np.uint16).reshape(20, 10) * 300
    Image.fromarray(arr16).save(tmp_path / "x16.png")
    np.testing.assert_array_equal(read_image(tmp_path / "x16.png"), np.round(arr16 / 257.0).astype(np.uint8))
    Image.new("RGB", (7, 5), (10, 200, 30)).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png").shape == (5, 7)


@pytest.mark.parametrize("kind", ["missing", "truncated", "garbage"])
def test_read_image_errors_name_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.jpg"
    if kind == "truncated":
        path.write_bytes(_jpeg_bytes(Img("t", "PA", size=(200, 160)))[:700])
    elif kind == "garbage":
        path.write_bytes(b"\x00\x01 not an image")
    with pytest.raises(ImageReadError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert err.value.missing == (kind == "missing")


# ---------------------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------------------
def test_sliding_windows():
    assert sliding_windows(["a", "a", "a", "b", "b", "b", "b", "b"], 4) == [(3, 4, 5, 6), (4, 5, 6, 7)]
    assert sliding_windows([1, 1, 2, 2], 2) == [(0, 1), (2, 3)]
    assert sliding_windows([], 4) == []


def test_prepare_pairing_order_and_text(prepared):
    out, _ = prepared
    studies = pd.read_csv(out / "studies.csv", keep_default_na=False)
    assert list(studies.columns) == [
        "split",
        "subject_id",
        "study_id",
        "study_datetime",
        "frontal",
        "frontal_view",
        "lateral",
        "lateral_view",
        "frontal_cache",
        "lateral_cache",
        "text",
    ]
    for split, order in EXPECTED_ORDER.items():
        assert studies.loc[studies["split"] == split, "study_id"].tolist() == order
    assert list(dict.fromkeys(studies["split"])) == ["train", "validate", "test"]
    assert set(studies["study_id"]) == set(EXPECTED_PAIRS)
    for row in studies.itertuples():
        frontal, fview, lateral, lview = EXPECTED_PAIRS[row.study_id]
        s = str(row.subject_id)
        assert row.frontal == f"files/p{s[:2]}/p{s}/s{row.study_id}/{frontal}.jpg"
        assert (row.frontal_view, row.lateral_view) == (fview, lview)
        assert row.lateral == (f"files/p{s[:2]}/p{s}/s{row.study_id}/{lateral}.jpg" if lateral else "")
        assert (row.lateral_cache >= 0) == bool(lateral)
        assert row.text == expected_text(row.study_id)
    # time stamps: 09:15 before 10:15 on the same day; seconds with fractions kept
    b = studies[studies["subject_id"] == 10000002]
    assert b["study_datetime"].tolist()[:2] == ["2190-01-01T09:15:00.000", "2190-01-01T10:15:00.000"]
    assert "2180-05-20T08:00:00.500" in studies["study_datetime"].tolist()


def test_prepare_sequences(prepared):
    out, summary = prepared
    seqs = pd.read_csv(out / "sequences.csv")
    got = [
        (r.split, r.subject_id, r.sequence_index, [int(x) for x in r.study_ids.split(";")]) for r in seqs.itertuples()
    ]
    assert got == EXPECTED_SEQUENCES
    assert summary.sequences_per_split == {"train": 3, "validate": 1, "test": 0}
    assert summary.patients_per_split == {"train": 4, "validate": 1, "test": 1}
    assert summary.patients_without_sequence == {"train": 2, "validate": 0, "test": 1}  # E, F; C


def test_prepare_cache_matches_resize_pad(prepared, mimic_root):
    out, summary = prepared
    studies = pd.read_csv(out / "studies.csv", keep_default_na=False)
    cache = np.load(out / "images_32.npy", mmap_mode="r")
    assert cache.dtype == np.uint8 and cache.shape[1:] == (32, 32)
    assert cache.shape[0] == summary.images_used == len(studies) + (studies["lateral"] != "").sum()
    for row in studies.itertuples():
        np.testing.assert_array_equal(cache[row.frontal_cache], load_resized(mimic_root / row.frontal, 32))
        if row.lateral:
            np.testing.assert_array_equal(cache[row.lateral_cache], load_resized(mimic_root / row.lateral, 32))
    # the 400x320 image went through the reduced decode; it is still close to a full decode + resize
    big = studies.loc[studies["study_id"] == 50000011, "frontal_cache"].item()
    full = resize_pad(read_image(mimic_root / "files/p10/p10000001/s50000011/a11-2.jpg"), 32)
    assert np.abs(cache[big].astype(int) - full.astype(int)).mean() < 3.0
    info = json.loads((out / "prepare.json").read_text())
    assert info["mimic_root"] == str(mimic_root.resolve()) and info["cache_file"] == "images_32.npy"


def test_prepare_counts_every_bad_input(prepared):
    out, summary = prepared
    assert summary.skipped_studies == dict(
        sorted(
            {
                reason: list(EXPECTED_STUDY_SKIPS.values()).count(reason)
                for reason in set(EXPECTED_STUDY_SKIPS.values())
            }.items()
        )
    )
    assert summary.skipped_images == dict(sorted({k: len(v) for k, v in EXPECTED_IMAGE_SKIPS.items()}.items()))
    n_studies = sum(len(p.studies) for p in PATIENTS)
    n_images = sum(len(st.images) for p in PATIENTS for st in p.studies)
    assert summary.studies_seen == n_studies == summary.studies_usable + sum(summary.skipped_studies.values())
    assert summary.images_seen == n_images == summary.images_used + sum(summary.skipped_images.values())
    assert summary.studies_usable == len(EXPECTED_PAIRS)
    assert summary.studies_with_lateral == sum(1 for v in EXPECTED_PAIRS.values() if v[2])

    skipped = pd.read_csv(out / "skipped.csv", keep_default_na=False)
    studies = skipped[skipped["kind"] == "study"]
    for study_id, reason in EXPECTED_STUDY_SKIPS.items():
        rows = studies[studies["item"].str.contains(f"s{study_id}")]
        assert rows["reason"].tolist() == [reason]
    images = skipped[skipped["kind"] == "image"]
    for reason, dicoms in EXPECTED_IMAGE_SKIPS.items():
        names = sorted(Path(p).stem for p in images.loc[images["reason"] == reason, "item"])
        assert names == sorted(dicoms), reason
    patients = skipped[skipped["kind"] == "patient"]
    assert sorted(patients["item"]) == ["p10000005", "p10000006", "p11000003"]
    assert json.loads((out / "summary.json").read_text())["skipped_studies"] == summary.skipped_studies
    text = summary.format()
    for reason in list(EXPECTED_STUDY_SKIPS.values()) + list(EXPECTED_IMAGE_SKIPS):
        assert reason in text


def test_prepare_warnings_name_the_files(mimic_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="medst.data.studies"):
        prepare(mimic_root, tmp_path / "p", cache_size=0, workers=1, progress=False)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    d = mimic_root.resolve() / "files/p12/p12000004"
    reports = mimic_root.resolve() / "mimic-cxr-reports/files/p12/p12000004"
    for fragment in [
        f"{d}/s50000045/d45-0.jpg: image skipped: corrupt image",  # truncated JPEG
        f"{d}/s50000047/d47-1.jpg: image skipped: corrupt image",  # not a JPEG at all
        f"{d}/s50000046/d46-0.jpg: image skipped: missing file",  # metadata row, no file
        f"{reports}/s50000042.txt: study skipped: no report",
        f"{reports}/s50000043.txt: study skipped: short report",
        f"{d}/s50000044: study skipped: no frontal image",  # lateral only
        f"{d}/s50000045: study skipped: unreadable frontal image",
    ]:
        assert fragment in messages, fragment


def test_prepare_without_cache_and_with_workers_is_identical(prepared, mimic_root, tmp_path):
    out, _ = prepared
    prepare(mimic_root, tmp_path / "nocache", cache_size=None, workers=1, progress=False)
    prepare(mimic_root, tmp_path / "pool", cache_size=32, workers=2, progress=False)
    a = pd.read_csv(out / "studies.csv", keep_default_na=False)
    b = pd.read_csv(tmp_path / "nocache" / "studies.csv", keep_default_na=False)
    c = pd.read_csv(tmp_path / "pool" / "studies.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(a, c)
    pd.testing.assert_frame_equal(
        a.drop(columns=["frontal_cache", "lateral_cache"]), b.drop(columns=["frontal_cache", "lateral_cache"])
    )
    assert (b["frontal_cache"] == -1).all() and not (tmp_path / "nocache" / "images_32.npy").exists()
    np.testing.assert_array_equal(np.load(out / "images_32.npy"), np.load(tmp_path / "pool" / "images_32.npy"))
    assert json.loads((tmp_path / "nocache" / "prepare.json").read_text())["cache_file"] is None


def test_view_choice_prefers_and_falls_back_on_unreadable_images():
    """PA before AP and LATERAL before LL (smallest dicom id first); an unreadable image passes the turn to the
    next candidate; the lateral is tried only once a frontal is found."""
    views = select_views([("b", "ap"), ("c", " PA "), ("a", "PA"), ("l2", "LL"), ("l1", "LATERAL"), ("x", None)])
    assert views.frontal_candidates == (("a", "PA"), ("c", "PA"), ("b", "AP"))
    assert views.lateral_candidates == (("l1", "LATERAL"), ("l2", "LL")) and views.other == ("x",)
    readable = {"a": False, "c": True, "l1": False, "l2": True}
    tried = []
    while (todo := views.next()) is not None:
        tried.append(todo[1])
        views.record(readable[todo[1]])
    assert tried == ["a", "c", "l1", "l2"]
    assert views.frontal == ("c", "PA") and views.lateral == ("l2", "LL") and views.extra == ["b"]
    none = select_views([("a", "PA"), ("l1", "LATERAL")])
    none.record(False)
    assert none.next() is None and none.frontal is None and none.extra == ["l1"]  # no frontal: lateral not tried


def test_evaluation_picks_the_studies_prepare_picks(prepared, mimic_root):
    """Evaluation's study table (medst.eval.retrieval.read_mimic_studies) follows prepare's rule on the fixture,
    unreadable images included: d45-0 (truncated, the only frontal) leaves its study out, d46-0 (missing PA)
    gives way to the AP, d47-1 (corrupt lateral) leaves its study without a lateral."""
    from medst.eval.retrieval import read_mimic_studies

    out, summary = prepared
    ours = pd.read_csv(out / "studies.csv", keep_default_na=False).sort_values(["subject_id", "study_id"])
    mine = read_mimic_studies(mimic_root, None)
    table = mine.table
    assert table["study_id"].tolist() == ours["study_id"].tolist()
    assert table["frontal"].tolist() == [str(mimic_root / p) for p in ours["frontal"]]
    assert table["lateral"].tolist() == [str(mimic_root / p) if p else "" for p in ours["lateral"]]
    assert table["text"].tolist() == ours["text"].tolist()
    assert mine.skipped == summary.skipped_studies
    picked = dict(zip(table["study_id"], zip(table["frontal_dicom"], table["lateral_dicom"])))
    assert picked[50000046] == ("d46-1", "d46-2") and picked[50000047] == ("d47-0", "")
    assert 50000045 not in picked
    assert read_mimic_studies(mimic_root, "test").table["study_id"].tolist() == EXPECTED_ORDER["test"]


def test_prepare_sectioned_csv_and_bad_roots(mimic_root, tmp_path):
    rows = [
        {"study": f"s{sid}", "impression": f"Impression {sid} is here.", "findings": ""}
        for sid in [*EXPECTED_PAIRS, 50000045]
    ] + [{"study": "s50000043", "impression": "Ok.", "findings": ""}]
    pd.DataFrame(rows).to_csv(tmp_path / "mimic_cxr_sectioned.csv", index=False)
    summary = prepare(
        mimic_root,
        tmp_path / "p",
        reports_dir=tmp_path / "mimic_cxr_sectioned.csv",
        cache_size=0,
        workers=1,
        progress=False,
    )
    studies = pd.read_csv(tmp_path / "p" / "studies.csv", keep_default_na=False)
    assert dict(zip(studies["study_id"], studies["text"])) == {
        sid: f"Impression {sid} is here." for sid in EXPECTED_PAIRS
    }
    assert summary.skipped_studies == {
        "no frontal image": 1,
        "no report": 1,
        "no split": 1,
        "no study date": 1,
        "short report": 1,
        "unreadable frontal image": 1,
    }
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-metadata.csv"):
        prepare(tmp_path, tmp_path / "q", progress=False)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "mimic-cxr-2.0.0-metadata.csv").write_text("dicom_id,subject_id\nx,1\n")
    (bad / "mimic-cxr-2.0.0-split.csv").write_text("dicom_id,split\nx,train\n")
    with pytest.raises(ValueError, match=r"metadata.csv: missing column\(s\).*study_id"):
        prepare(bad, tmp_path / "r", progress=False)


# ---------------------------------------------------------------------------------------------------------
# The phantom: prepare must recover the generator's own ground truth
# ---------------------------------------------------------------------------------------------------------
def test_prepare_recovers_phantom_ground_truth(phantom_dir, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare(phantom_dir / "mimic-cxr-jpg", out, cache_size=32, workers=2, progress=False)
    truth = pd.read_csv(phantom_dir / "ground_truth" / "studies.csv", keep_default_na=False, dtype=str)
    got = pd.read_csv(out / "studies.csv", keep_default_na=False, dtype=str)

    def stem(path: str) -> str:
        return Path(path).stem if path else ""

    expected = {
        (r.split, r.subject_id, r.study_id): (r.frontal_dicom_id, r.frontal_view, r.lateral_dicom_id, r.lateral_view)
        for r in truth.itertuples()
    }
    found = {
        (r.split, r.subject_id, r.study_id): (stem(r.frontal), r.frontal_view, stem(r.lateral), r.lateral_view)
        for r in got.itertuples()
    }
    assert found == expected
    # each patient's studies in the generator's time order (study_index)
    order = truth.assign(k=truth["study_index"].astype(int)).sort_values(["subject_id", "k"])
    for subject, rows in order.groupby("subject_id"):
        assert got.loc[got["subject_id"] == subject, "study_id"].tolist() == rows["study_id"].tolist()

    key = ["split", "subject_id", "sequence_index"]
    seq_truth = pd.read_csv(phantom_dir / "ground_truth" / "sequences.csv", dtype=str).sort_values(key)
    seq_got = pd.read_csv(out / "sequences.csv", dtype=str).sort_values(key)
    pd.testing.assert_frame_equal(seq_got.reset_index(drop=True), seq_truth.reset_index(drop=True))
    assert summary.studies_usable == len(truth) and sum(summary.sequences_per_split.values()) == len(seq_truth)
    cache = np.load(out / "images_32.npy", mmap_mode="r")
    root = phantom_dir / "mimic-cxr-jpg"
    for row in got.head(5).itertuples():
        np.testing.assert_array_equal(cache[int(row.frontal_cache)], load_resized(root / row.frontal, 32))
