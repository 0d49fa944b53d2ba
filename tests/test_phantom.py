"""The phantom generator (medst.phantom): formats, determinism and content.

One 60-patient cohort at 64 px is generated with two worker processes, again in-process (determinism), and a
small one with another seed. The checks read the written files back with independent code (csv, PIL,
pydicom) and re-render single images through the generator's own render function where a comparison with
and without a finding is needed.
"""

from __future__ import annotations

import collections
import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medst import phantom as P
from medst.phantom import rows as row_types
from medst.phantom.anatomy import lesions_for
from medst.phantom.geometry import VIEWS, Ellipsoid, chord, make_grid
from medst.phantom.render import VISIBLE_LEVELS
from medst.phantom.reports import sentence_pairs

SEED, N, SIZE = 3, 60, 64
HEAD_WORD = {
    "pleural_effusion": "effusion",
    "consolidation": "consolidation",
    "edema": "edema",
    "pneumothorax": "pneumothorax",
    "pneumonia": "pneumonia",
    "cardiomegaly": "cardiomegaly",
}


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    a = tmp_path_factory.mktemp("phantom_a")
    b = tmp_path_factory.mktemp("phantom_b")
    c = tmp_path_factory.mktemp("phantom_c")
    summary = P.synthesize(a, n_patients=N, image_size=SIZE, seed=SEED, workers=2, progress=False)
    P.synthesize(b, n_patients=N, image_size=SIZE, seed=SEED, workers=1, progress=False)
    P.synthesize(c, n_patients=12, image_size=SIZE, seed=SEED + 1, workers=1, progress=False, n_rsna=6, n_covidx=6)
    return {"a": a, "b": b, "c": c, "summary": summary}


@pytest.fixture(scope="module")
def gt(dirs):
    root = dirs["a"]
    mimic = root / "mimic-cxr-jpg"
    return {
        "root": root,
        "meta": read_csv(mimic / "mimic-cxr-2.0.0-metadata.csv"),
        "split": read_csv(mimic / "mimic-cxr-2.0.0-split.csv"),
        "studies": read_csv(root / "ground_truth" / "studies.csv"),
        "progression": read_csv(root / "ground_truth" / "progression.csv"),
        "boxes": read_csv(root / "ground_truth" / "boxes.csv"),
        "sequences": read_csv(root / "ground_truth" / "sequences.csv"),
        "mscxrt": read_csv(root / "ms-cxr-t" / "MS_CXR_T_temporal_image_classification_v1.0.0.csv"),
        "sentences": read_csv(root / "ms-cxr-t" / "MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv"),
        "rsna": read_csv(root / "rsna" / "stage_2_train_labels.csv"),
    }


def by_subject(rows):
    out = collections.defaultdict(list)
    for r in rows:
        out[r["subject_id"]].append(r)
    for v in out.values():
        v.sort(key=lambda r: int(r["study_index"]))
    return out


def subject_index(gt) -> dict[str, int]:
    """subject_id -> patient index (subject ids grow with the index)."""
    return {s: i for i, s in enumerate(sorted({r["subject_id"] for r in gt["studies"]}, key=int))}


def report_path(root: Path, subject: str, study: str) -> Path:
    return root / "mimic-cxr-jpg" / "mimic-cxr-reports" / "files" / f"p{subject[:2]}" / f"p{subject}" / f"s{study}.txt"


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_gives_byte_identical_files_for_any_worker_count(dirs):
    a, b = tree_hashes(dirs["a"]), tree_hashes(dirs["b"])
    assert len(a) > 400
    assert a == b


def test_different_seed_gives_different_files(dirs):
    a, c = tree_hashes(dirs["a"]), tree_hashes(dirs["c"])
    for name in (
        "ms-cxr-t/MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv",
        "covidx/train.txt",
        "rsna/stage_2_train_labels.csv",
        "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv",
    ):
        assert a[name] != c[name], name
    images_a = {v for k, v in a.items() if k.endswith(".jpg")}
    images_c = {v for k, v in c.items() if k.endswith(".jpg")}
    assert not images_a & images_c


def test_rerun_into_the_same_folder_replaces_earlier_outputs_only(tmp_path):
    small = dict(n_patients=3, image_size=48, seed=9, workers=1, progress=False, n_rsna=2, n_covidx=3)
    P.synthesize(tmp_path, **small)
    first = tree_hashes(tmp_path)
    stale = tmp_path / "mimic-cxr-jpg" / "files" / "p19" / "p19999999" / "s59999999" / "stale.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("kept")
    P.synthesize(tmp_path, **small)
    assert not stale.exists() and (tmp_path / "notes.txt").read_text() == "kept"
    second = tree_hashes(tmp_path)
    del second["notes.txt"]
    assert second == first


# ---------------------------------------------------------------------------------------------- formats


def test_every_referenced_image_exists_decodes_and_matches_its_metadata(gt):
    root, meta = gt["root"] / "mimic-cxr-jpg", gt["meta"]
    assert {r["ViewPosition"] for r in meta} == {"PA", "AP", "LATERAL", "LL"}
    non_square = 0
    for r in meta:
        s = r["subject_id"]
        assert len(s) == 8 and len(r["study_id"]) == 8
        path = root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{r['study_id']}" / f"{r['dicom_id']}.jpg"
        with Image.open(path) as im:
            assert im.format == "JPEG" and im.mode == "L"
            assert im.size == (int(r["Columns"]), int(r["Rows"]))
            assert max(im.size) == SIZE
            non_square += im.size[0] != im.size[1]
        assert 21500101 <= int(r["StudyDate"]) <= 21910101
        hhmmss = float(r["StudyTime"])
        assert 0 <= hhmmss < 240000 and re.fullmatch(r"\d+\.\d{3}", r["StudyTime"])
    assert non_square > 0.8 * len(meta)
    assert sorted(r["dicom_id"] for r in gt["split"]) == sorted(r["dicom_id"] for r in meta)
    files = list((root / "files").rglob("*.jpg"))
    assert len(files) == len(meta)


def test_studies_views_reports_and_dates(gt):
    root = gt["root"]
    meta = {r["dicom_id"]: r for r in gt["meta"]}
    subjects = by_subject(gt["studies"])
    counts = collections.Counter(len(v) for v in subjects.values())
    assert set(counts) == set(range(1, 7))
    with_lateral = sum(1 for r in gt["studies"] if r["lateral_dicom_id"])
    assert 0.4 < with_lateral / len(gt["studies"]) < 0.8
    for subject, studies in subjects.items():
        times = []
        for st in studies:
            f = meta[st["frontal_dicom_id"]]
            assert f["ViewPosition"] == st["frontal_view"] in ("PA", "AP") and f["study_id"] == st["study_id"]
            if st["lateral_dicom_id"]:
                assert meta[st["lateral_dicom_id"]]["ViewPosition"] == st["lateral_view"] in ("LATERAL", "LL")
            times.append((int(f["StudyDate"]), float(f["StudyTime"])))
            text = report_path(root, subject, st["study_id"]).read_text(encoding="utf-8")
            assert text.lstrip().startswith("FINAL REPORT")
            exam = re.search(r"EXAMINATION:\s*(.+)", text).group(1)
            assert ("AND LAT" in exam) == bool(st["lateral_dicom_id"])
            assert "IMPRESSION:" in text
            body = text.split("FINDINGS:")[-1] if "FINDINGS:" in text else text.split("IMPRESSION:")[-1]
            assert len(re.findall(r"\w+", body.replace("IMPRESSION:", ""))) >= 3
            comparison = re.search(r"COMPARISON:\s*(.+)", text).group(1)
            assert (comparison == "None.") == (st["study_index"] == "0")
        assert times == sorted(times) and len(set(d for d, _ in times)) == len(times)  # days apart


def test_report_text_describes_findings_changes_and_negations(gt):
    root = gt["root"]
    studies = {(r["subject_id"], r["study_id"]): r for r in gt["studies"]}
    no_findings_section = negated = 0
    for key, st in studies.items():
        text = report_path(root, *key).read_text(encoding="utf-8")
        no_findings_section += "FINDINGS:" not in text
        negated += bool(re.search(r"\bno\b", text, re.I))
        body = text.split("COMPARISON:")[1].lower()
        for f, word in HEAD_WORD.items():
            if float(st[f"{f}_severity"]) > 0:
                assert word in body, (key, f)
    assert 0 < no_findings_section < 0.4 * len(studies)
    assert negated > 0.5 * len(studies)
    change_words = {
        "worsening": r"increase|worse|new |progress|larger|developed",
        "improving": r"decrease|improv|resolv|resolution|smaller",
        "stable": r"unchanged|stable|no significant change",
    }
    for row in gt["progression"]:
        text = report_path(root, row["subject_id"], row["study_id"]).read_text(encoding="utf-8").lower()
        sentences = re.split(r"(?<=\.)\s+", text.split("comparison:")[1])
        for f in P.FINDINGS:
            label = row[f"{f}_progression"]
            if label:
                about = [s for s in sentences if HEAD_WORD[f] in s]
                assert any(re.search(change_words[label], s) for s in about), (row["study_id"], f, label, about)


def test_dicoms_read_back_with_pydicom_in_several_encodings(gt):
    import pydicom

    root = gt["root"] / "rsna"
    rows = gt["rsna"]
    ids = sorted({r["patientId"] for r in rows})
    assert len(ids) == len(list((root / "stage_2_train_images").glob("*.dcm"))) >= 40
    seen = collections.Counter()
    for pid in ids:
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", pid)
        ds = pydicom.dcmread(root / "stage_2_train_images" / f"{pid}.dcm")
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1")
        assert ds.PatientID == pid and ds.Modality in ("CR", "DX")
        px = ds.pixel_array
        assert px.shape == (ds.Rows, ds.Columns) == (SIZE, SIZE)
        assert int(px.max()) < 2**ds.BitsStored and px.std() > 0
        if ds.BitsStored > 8:
            assert "RescaleSlope" in ds and "WindowCenter" in ds and px.dtype == np.uint16
        seen[(ds.PhotometricInterpretation, ds.BitsStored > 8)] += 1
        # decoded for display (MONOCHROME1 inverted), the mediastinum is brighter than the right lung beside it
        shown = px.astype(float) if ds.PhotometricInterpretation == "MONOCHROME2" else -px.astype(float)
        band = slice(int(0.3 * SIZE), int(0.45 * SIZE))
        assert shown[band, SIZE // 2].mean() > shown[band, int(0.27 * SIZE)].mean()
    assert {k[0] for k in seen} == {"MONOCHROME1", "MONOCHROME2"}
    assert any(k[1] for k in seen) and any(not k[1] for k in seen)


def test_rsna_labels(gt):
    rows = gt["rsna"]
    positive = {r["patientId"] for r in rows if r["Target"] == "1"}
    assert 0.2 <= len(positive) / len({r["patientId"] for r in rows}) <= 0.5
    for r in rows:
        if r["Target"] == "0":
            assert r["x"] == r["y"] == r["width"] == r["height"] == ""
        else:
            x, y, w, h = (float(r[k]) for k in ("x", "y", "width", "height"))
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= SIZE and y + h <= SIZE


def test_covidx_lists_and_images(gt):
    root = gt["root"] / "covidx"
    labels = {}
    for split in ("train", "test"):
        lines = (root / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        labels[split] = collections.Counter()
        for line in lines:
            pid, name, label, source = line.split(" ")
            labels[split][label] += 1
            with Image.open(root / split / name) as im:
                assert im.format == "PNG" and max(im.size) == SIZE
    assert set(labels["train"]) == set(labels["test"]) == {"normal", "pneumonia", "COVID-19"}
    total = labels["train"] + labels["test"]
    assert sum(total.values()) >= 60 and max(total.values()) - min(total.values()) <= 1


def test_boxes_lie_in_their_images(gt):
    meta = {r["dicom_id"]: r for r in gt["meta"]}
    assert len(gt["boxes"]) > 100
    for b in gt["boxes"]:
        m = meta[b["dicom_id"]]
        assert b["finding"] in P.FINDINGS
        assert b["view"] == ("lateral" if m["ViewPosition"] in ("LATERAL", "LL") else "frontal")
        x0, y0, x1, y1 = (int(b[k]) for k in ("x_min", "y_min", "x_max", "y_max"))
        assert 0 <= x0 < x1 <= int(m["Columns"]) and 0 <= y0 < y1 <= int(m["Rows"])


def test_phantom_json(dirs, gt):
    import json

    summary = json.loads((gt["root"] / "phantom.json").read_text())
    assert summary == dirs["summary"]
    assert summary["findings"] == list(P.FINDINGS) and summary["seed"] == SEED and summary["image_size"] == SIZE
    c = summary["counts"]
    assert c["studies"] == len(gt["studies"]) and c["images"] == len(gt["meta"])
    assert c["sequences"] == len(gt["sequences"]) and c["boxes"] == len(gt["boxes"])


def test_table_headers_are_the_row_types_fields(gt):
    """Every CSV's header is its row type's field names; the per-finding columns follow FINDINGS (MS-CXR-T's
    follow MSCXRT_FINDINGS)."""
    root = gt["root"]
    tables = {
        "mimic-cxr-jpg/mimic-cxr-2.0.0-metadata.csv": row_types.MetadataRow,
        "mimic-cxr-jpg/mimic-cxr-2.0.0-split.csv": row_types.SplitRow,
        "ground_truth/studies.csv": row_types.StudyRow,
        "ground_truth/progression.csv": row_types.ProgressionRow,
        "ground_truth/boxes.csv": row_types.BoxRow,
        "ground_truth/sequences.csv": row_types.SequenceRow,
        "ms-cxr-t/MS_CXR_T_temporal_image_classification_v1.0.0.csv": row_types.MscxrtRow,
        "ms-cxr-t/MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv": row_types.SentencePairRow,
        "rsna/stage_2_train_labels.csv": row_types.RsnaRow,
    }
    for name, row_type in tables.items():
        with open(root / name, newline="", encoding="utf-8") as fh:
            assert tuple(next(csv.reader(fh))) == row_type._fields, name
    per_finding = tuple(f"{f}_{k}" for f in P.FINDINGS for k in ("severity", "side", "lateral_only"))
    assert row_types.StudyRow._fields[8:] == per_finding
    assert row_types.ProgressionRow._fields[3:] == tuple(f"{f}_progression" for f in P.FINDINGS)
    assert row_types.MscxrtRow._fields[5:] == tuple(f"{f}_progression" for f in P.MSCXRT_FINDINGS)
    assert set(row_types.Tables.__dataclass_fields__) == {
        "metadata",
        "split",
        "studies",
        "progression",
        "boxes",
        "sequences",
        "mscxrt",
        "rsna",
        "covidx",
    }


# ---------------------------------------------------------------------------------------------- content


def test_splits_are_by_patient_and_ms_cxr_t_uses_test_patients(gt):
    split_of = {}
    for r in gt["split"]:
        assert split_of.setdefault(r["subject_id"], r["split"]) == r["split"]
    counts = collections.Counter(split_of.values())
    assert counts["train"] >= 0.85 * N and 1 <= counts["test"] <= 0.1 * N and 1 <= counts["validate"] <= 0.1 * N
    studies = by_subject(gt["studies"])
    want = []
    for subject, rows in studies.items():
        if split_of[subject] == "test":
            want += [(b["frontal_dicom_id"], a["frontal_dicom_id"]) for a, b in zip(rows, rows[1:])]
    got = [(r["dicom_id"], r["previous_dicom_id"]) for r in gt["mscxrt"]]
    assert sorted(got) == sorted(want) and got
    progression = {(r["study_id"], r["previous_study_id"]): r for r in gt["progression"]}
    for r in gt["mscxrt"]:
        for f in P.MSCXRT_FINDINGS:
            assert r[f"{f}_progression"] == progression[(r["study_id"], r["previous_study_id"])][f"{f}_progression"]


def test_progression_labels_follow_severities_and_are_balanced(gt):
    sev = {r["study_id"]: r for r in gt["studies"]}
    for row in gt["progression"]:
        now, before = sev[row["study_id"]], sev[row["previous_study_id"]]
        assert int(now["study_index"]) == int(before["study_index"]) + 1
        for f in P.FINDINGS:
            a, b = float(before[f"{f}_severity"]), float(now[f"{f}_severity"])
            label = row[f"{f}_progression"]
            if a == 0 and b == 0:
                assert label == ""
            elif label == "worsening":
                assert a == 0 or b - a >= 0.15 - 1e-6
            elif label == "improving":
                assert b == 0 or a - b >= 0.15 - 1e-6
            else:
                assert label == "stable" and abs(b - a) <= 0.03 + 1e-6
    # balance among pairs where the finding is present in at least one study: here and in a bigger planned cohort
    cohorts = [[(f, row[f"{f}_progression"]) for row in gt["progression"] for f in P.FINDINGS]]
    cohorts.append(
        [(f, st.progression[f]) for i in range(150) for st in P.plan_patient(0, i, 150, 32).studies for f in P.FINDINGS]
    )
    for pairs in cohorts:
        for f in P.FINDINGS:
            labels = collections.Counter(lab for g, lab in pairs if g == f and lab)
            total = sum(labels.values())
            assert total >= 20, f
            for change in ("improving", "stable", "worsening"):
                assert labels[change] >= 0.2 * total, (f, dict(labels))


def test_sides_and_severity_bands(gt):
    for r in gt["studies"]:
        for f in P.FINDINGS:
            s = float(r[f"{f}_severity"])
            assert 0 <= s <= 1
            side = r[f"{f}_side"]
            if s == 0:
                assert side == "" and r[f"{f}_lateral_only"] == "0"
            elif f == "cardiomegaly":
                assert side == ""
            elif f == "edema":
                assert side == "bilateral"
            else:
                assert side in ("left", "right", "bilateral")
    severities = [float(r[f"{f}_severity"]) for r in gt["studies"] for f in P.FINDINGS]
    assert any(0 < s < 0.35 for s in severities) and any(s >= 0.65 for s in severities)


def test_sequences_are_all_windows_of_four(gt):
    want = []
    for subject, rows in by_subject(gt["studies"]).items():
        ids = [r["study_id"] for r in rows]
        want += [(rows[0]["split"], subject, str(k), ";".join(ids[k : k + 4])) for k in range(len(ids) - 3)]
    got = [(r["split"], r["subject_id"], r["sequence_index"], r["study_ids"]) for r in gt["sequences"]]
    assert sorted(got) == sorted(want)
    assert len(got) == sum(max(0, len(v) - 3) for v in by_subject(gt["studies"]).values()) > 0
    meta = {r["study_id"]: (int(r["StudyDate"]), float(r["StudyTime"])) for r in gt["meta"]}
    for r in gt["sequences"]:
        times = [meta[s] for s in r["study_ids"].split(";")]
        assert times == sorted(times)


def test_lateral_only_effusions_are_invisible_on_the_frontal_view(gt):
    boxes = {(b["dicom_id"], b["finding"]) for b in gt["boxes"]}
    rows = [r for r in gt["studies"] if r["pleural_effusion_lateral_only"] == "1"]
    assert len(rows) >= 5
    index = subject_index(gt)
    for r in rows:
        assert r["lateral_dicom_id"], "a lateral-only finding needs a lateral image"
        assert (r["lateral_dicom_id"], "pleural_effusion") in boxes
        assert (r["frontal_dicom_id"], "pleural_effusion") not in boxes
        plan = P.plan_patient(SEED, index[r["subject_id"]], N, SIZE)
        assert plan.subject_id == int(r["subject_id"])
        k = int(r["study_index"])
        diff = {}
        for view in VIEWS:
            with_it = P.render_study_view(plan, k, view, noise=False).clean
            without = P.render_study_view(plan, k, view, exclude=("pleural_effusion",), noise=False).clean
            diff[view] = np.abs(with_it - without).max()
        assert diff["frontal"] < 1.5, "the frontal image changes by less than 1.5 grey levels anywhere"
        assert diff["lateral"] >= VISIBLE_LEVELS


def test_lateral_only_effusion_blunts_the_posterior_recess():
    """A small effusion changes >= 20 lateral pixels by >= 10 grey levels at 64 px (a visible blunting, not a
    one-pixel sliver) and the frontal image by < 1.5; the air space it pushes forward lies in the dome (soft
    tissue), checked by sampling points independently of the ray integrals."""
    checked = 0
    for index in range(40):
        plan = P.plan_patient(SEED + 7, index, 40, SIZE)
        for k, st in enumerate(plan.studies):
            if not st.lateral_only("pleural_effusion"):
                continue
            d = {
                view: P.render_study_view(plan, k, view, noise=False).clean
                - P.render_study_view(plan, k, view, exclude=("pleural_effusion",), noise=False).clean
                for view in VIEWS
            }
            assert np.abs(d["frontal"]).max() < 1.5
            assert (d["lateral"] >= 10).sum() >= 20, (index, k, int((d["lateral"] >= 10).sum()))
            an = plan.anatomy
            for les in lesions_for(
                "pleural_effusion", st.severity["pleural_effusion"], plan.sides["pleural_effusion"], an
            ):
                low, high = les.blobs[0].extent()
                pts = np.random.default_rng(0).uniform(low, high, size=(4000, 3))
                fluid = les.blobs[0].contains(pts) & an.lungs[les.side].contains(pts)
                for c in an.cuts(les.side):
                    fluid &= ~c.contains(pts)
                assert fluid.sum() > 50
                moved = pts[fluid] + np.array([0.0, les.displace, 0.0])
                assert an.domes[les.side].contains(moved).mean() > 0.98
            checked += 1
    assert checked >= 5


def test_render_function_reproduces_the_stored_images(gt):
    root = gt["root"] / "mimic-cxr-jpg" / "files"
    for index in (0, 7):
        plan = P.plan_patient(SEED, index, N, SIZE)
        s = str(plan.subject_id)
        for st in plan.studies[:2]:
            for image in (st.frontal, st.lateral):
                if image is None:
                    continue
                path = root / f"p{s[:2]}" / f"p{s}" / f"s{st.study_id}" / f"{image.dicom_id}.jpg"
                stored = np.asarray(Image.open(path), dtype=float)
                rendered = P.render_study_view(plan, st.index, image.view).image.astype(float)
                assert rendered.shape == stored.shape
                assert np.abs(rendered - stored).mean() < 2.0


def test_findings_are_visible_and_grow_with_severity(gt):
    """Moderate/severe findings (other than lateral-only effusions) have a frontal box, change the noise-free
    64 px frontal image clearly, and more than mild ones do."""
    boxes = {(b["dicom_id"], b["finding"]) for b in gt["boxes"]}
    index = subject_index(gt)
    contrast = collections.defaultdict(list)
    for r in gt["studies"]:
        for f in P.FINDINGS:
            s = float(r[f"{f}_severity"])
            if s >= 0.4:
                assert (r["frontal_dicom_id"], f) in boxes, (r["study_id"], f)
    picked = collections.defaultdict(int)
    for r in gt["studies"]:
        for f in P.FINDINGS:
            s = float(r[f"{f}_severity"])
            band = "mild" if 0.2 < s < 0.35 else "severe" if s >= 0.65 else None
            if band is None or picked[(f, band)] >= 3:
                continue
            picked[(f, band)] += 1
            plan = P.plan_patient(SEED, index[r["subject_id"]], N, SIZE)
            k = int(r["study_index"])
            d = np.abs(
                P.render_study_view(plan, k, "frontal", noise=False).clean
                - P.render_study_view(plan, k, "frontal", exclude=(f,), noise=False).clean
            )
            contrast[(f, band)].append(float(np.sort(d.ravel())[-20:].mean()))  # 20 most changed pixels
    for f in P.FINDINGS:
        severe = contrast[(f, "severe")]
        assert severe and min(severe) >= 10.0, (f, severe)
        if contrast[(f, "mild")]:
            assert np.median(contrast[(f, "mild")]) < np.median(severe), f


def test_frontal_and_lateral_come_from_one_3d_description(gt):
    """A lesion seen in both views spans the same heights: map each box's rows back to world z."""
    boxes = collections.defaultdict(list)
    for b in gt["boxes"]:
        boxes[(b["dicom_id"], b["finding"])].append(b)
    index = subject_index(gt)
    checked = 0
    for r in gt["studies"]:
        if not r["lateral_dicom_id"] or checked >= 25:
            continue
        plan = P.plan_patient(SEED, index[r["subject_id"]], N, SIZE)
        st = plan.studies[int(r["study_index"])]
        for f in ("consolidation", "pneumonia", "cardiomegaly"):
            fb, lb = boxes.get((r["frontal_dicom_id"], f)), boxes.get((r["lateral_dicom_id"], f))
            if not fb or not lb:
                continue
            spans = []
            for image, bs in ((st.frontal, fb), (st.lateral, lb)):
                grid = make_grid(
                    image.view,
                    image.shape,
                    plan.anatomy.center + np.asarray(image.exposure.shift),
                    image.exposure.magnification,
                )
                top = grid.rows[0] - (min(int(b["y_min"]) for b in bs) - 0.5) * grid.pitch
                bottom = grid.rows[0] - (max(int(b["y_max"]) for b in bs) - 0.5) * grid.pitch
                spans.append((bottom, top))
            overlap = min(spans[0][1], spans[1][1]) - max(spans[0][0], spans[1][0])
            assert overlap > 0.5 * min(s[1] - s[0] for s in spans), (r["study_id"], f, spans)
            checked += 1
    assert checked >= 5


def test_ray_integrals_match_numerical_integration():
    rng = np.random.default_rng(0)
    ell = Ellipsoid.make((0.1, -0.05, 0.2), (0.3, 0.2, 0.4), tilt_y=0.4, tilt_x=-0.3)
    for view in VIEWS:
        grid = make_grid(view, (40, 36), (0.0, 0.0, 0.0), 1.0)
        full = (slice(0, 40), slice(0, 36))
        analytic = chord(ell, grid, full)
        t = np.linspace(-1.5, 1.5, 6001)
        e, ca = (1, 0) if view == "frontal" else (0, 1)
        for _ in range(20):
            r, c = int(rng.integers(40)), int(rng.integers(36))
            pts = np.zeros((len(t), 3))
            pts[:, e], pts[:, ca], pts[:, 2] = t, grid.cols[c], grid.rows[r]
            numeric = ell.contains(pts).sum() * (t[1] - t[0])
            assert abs(numeric - analytic[r, c]) < 2e-3


def test_sentence_pairs(gt):
    rows = gt["sentences"]
    assert 200 <= len(rows) <= 600
    assert collections.Counter(r["category"] for r in rows) == {
        "paraphrase": len(rows) // 2,
        "contradiction": len(rows) // 2,
    }
    assert {r["subset_name"] for r in rows} == {"RadGraph"}
    words = [HEAD_WORD[f] for f in P.MSCXRT_FINDINGS]
    up, down = r"increase|worse|progress", r"decrease|improv"
    for r in rows:
        a, b = r["sentence_1"].lower(), r["sentence_2"].lower()
        assert a != b
        shared = [w for w in words if w in a and w in b]
        assert shared, (a, b)
        if r["category"] == "contradiction":
            assert (re.search(up, a) and re.search(down, b)) or (re.search(down, a) and re.search(up, b)), (a, b)
    again = sentence_pairs(np.random.default_rng(0), 20, P.MSCXRT_FINDINGS)
    assert again == sentence_pairs(np.random.default_rng(0), 20, P.MSCXRT_FINDINGS)
