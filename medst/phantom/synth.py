"""The phantom: synthetic longitudinal, multi-view chest X-ray studies with reports, in the real formats.

No real chest X-ray data can be shipped, so ``synthesize`` writes patients with 1–6 studies over time,
each a frontal image, often a lateral image and a free-text report, laid out exactly like
MIMIC-CXR-JPG, plus MS-CXR-T (temporal labels and sentence pairs), RSNA Pneumonia (DICOM) and COVIDx
(PNG lists) counterparts, and the ground truth behind all of it (chapter 1 of the book,
``book/01_data.ipynb``). The same preparation and loading code then runs on the phantom and on the real data.

Images come from one 3-D description per patient (``medst.phantom.render``); findings are 3-D lesions whose
severity follows a trajectory over the studies (``medst.phantom.plan``), so every consecutive pair of studies
has a true improving / stable / worsening label per finding (Method §1, §6, §8). Reports
(``medst.phantom.reports``) describe the current state and the change since the prior study. Each patient,
RSNA image and COVIDx image is one task (``medst.phantom.tasks``) that returns typed table rows
(``medst.phantom.rows``); ``medst.phantom.writers`` writes the tables.

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

With ``ct_fraction`` F > 0, a fraction F of the patients also get one CT volume (NIfTI) of one of their studies,
from the same 3-D anatomy and findings (``medst.phantom.ct``), and the slices each finding occupies::

    mimic-cxr-jpg/ct/files/pXX/pSUBJECT/sSTUDY.nii.gz, mimic-cxr-jpg/ct/ct-metadata.csv
    ground_truth/ct_slices.csv
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from medst.phantom.ct import CtTask, default_slices, pick_ct_patients
from medst.phantom.plan import FINDINGS, MAX_STUDIES, MSCXRT_FINDINGS, STREAM_SPLIT, STREAM_TEXT, n_studies, stream_rng
from medst.phantom.reports import sentence_pairs
from medst.phantom.rows import CtTables, Tables
from medst.phantom.tasks import CovidxTask, PatientTask, RsnaTask, Task, run_task
from medst.phantom.writers import MIMIC_DIR, write_tables

VERSION = "1.0"
N_SENTENCE_PAIRS = 360
_OUTPUTS = (MIMIC_DIR, "ms-cxr-t", "rsna", "covidx", "ground_truth", "phantom.json")


def _splits(seed: int, counts: np.ndarray) -> list[str]:
    """Split by patient ≈ 90 / 5 / 5. Test patients (the MS-CXR-T ones) are drawn among patients with at
    least two studies, as MS-CXR-T's are, so that they contribute image pairs."""
    n = len(counts)
    rng = stream_rng(seed, STREAM_SPLIT)
    order = rng.permutation(n)
    n_small = max(1, round(0.05 * n)) if n >= 3 else 0
    multi = [i for i in order if counts[i] >= 2]
    test = set(multi[:n_small])
    rest = [i for i in order if i not in test]
    validate = set(rest[:n_small])
    return ["test" if i in test else "validate" if i in validate else "train" for i in range(n)]


def _clear(out: Path) -> None:
    """Remove earlier phantom outputs in ``out`` (only if it holds a phantom) and create the image folders."""
    if (out / "phantom.json").exists():
        for name in _OUTPUTS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    for d in (
        out / MIMIC_DIR / "files",
        out / "rsna" / "stage_2_train_images",
        out / "covidx" / "train",
        out / "covidx" / "test",
    ):
        d.mkdir(parents=True, exist_ok=True)


def _run_all(tasks: Sequence[Task], workers: int, progress: bool) -> tuple[Tables, CtTables]:
    """Run ``tasks`` in ``workers`` processes (in this one for 0 or 1); their rows, concatenated in task order
    (the CT tasks' apart)."""
    tables, ct = Tables(), CtTables()
    with tqdm(total=len(tasks), desc="phantom", unit="task", disable=not progress) as bar:
        if workers <= 1:
            for t in tasks:
                res = run_task(t)
                (ct if isinstance(res, CtTables) else tables).extend(res)
                bar.update()
        else:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            with mp.get_context(method).Pool(workers) as pool:
                for res in pool.imap(run_task, tasks, chunksize=max(1, min(16, len(tasks) // (8 * workers)))):
                    (ct if isinstance(res, CtTables) else tables).extend(res)
                    bar.update()
    return tables, ct


def synthesize(
    out_dir: str | Path,
    n_patients: int = 200,
    image_size: int = 128,
    seed: int = 0,
    workers: int | None = None,
    progress: bool = True,
    *,
    n_rsna: int | None = None,
    n_covidx: int | None = None,
    ct_fraction: float = 0.0,
    ct_slices: int | None = None,
) -> dict:
    """Write the phantom data set under ``out_dir`` and return its summary (also in ``phantom.json``).

    Args:
        out_dir: output folder; earlier phantom outputs in it (and only those) are replaced.
        n_patients: MIMIC-part patients.
        image_size: long side of the stored images in pixels (images are not square).
        seed: the same seed gives byte-identical files, whatever ``workers``.
        workers: processes (None: all cores; 0 or 1: in this process).
        progress: show a tqdm progress bar.
        n_rsna, n_covidx: RSNA patients and COVIDx images (default ~10 % of ``n_patients``, at least 40, and
            ~12 %, at least 60; 0 RSNA patients: no pydicom needed).
        ct_fraction: fraction of the patients that also get one CT volume of one of their studies (0: none, and
            the files are exactly those written without CT; > 0 needs nibabel). The radiographs, reports and
            tables do not depend on it.
        ct_slices: slices per CT volume (default: half of ``image_size``, between 16 and 64).
    """
    if n_patients < 1 or image_size < 32:
        raise ValueError(
            f"phantom.synthesize: need n_patients >= 1 and image_size >= 32, got {n_patients}, {image_size}"
        )
    ct_patients = pick_ct_patients(seed, n_patients, ct_fraction)
    n_slices = default_slices(image_size) if ct_slices is None else int(ct_slices)
    if ct_patients and n_slices < 1:
        raise ValueError(f"phantom.synthesize: need ct_slices >= 1, got {ct_slices}")
    out = Path(out_dir)
    _clear(out)
    counts = np.array([n_studies(seed, i) for i in range(n_patients)])
    splits = _splits(seed, counts)
    n_rsna = max(40, round(0.10 * n_patients)) if n_rsna is None else n_rsna
    n_covidx = max(60, round(0.12 * n_patients)) if n_covidx is None else n_covidx
    tasks: list[Task] = [
        PatientTask(seed=seed, index=i, n_patients=n_patients, image_size=image_size, split=splits[i], out=str(out))
        for i in range(n_patients)
    ]
    tasks += [RsnaTask(seed=seed, index=i, image_size=image_size, out=str(out)) for i in range(n_rsna)]
    tasks += [CovidxTask(seed=seed, index=i, image_size=image_size, out=str(out)) for i in range(n_covidx)]
    tasks += [
        CtTask(seed=seed, index=i, n_patients=n_patients, image_size=image_size, n_slices=n_slices, out=str(out))
        for i in ct_patients
    ]
    tables, ct = _run_all(tasks, (os.cpu_count() or 1) if workers is None else workers, progress)
    pairs = sentence_pairs(stream_rng(seed, STREAM_TEXT), N_SENTENCE_PAIRS, MSCXRT_FINDINGS)
    write_tables(out, tables, pairs, ct)

    studies = tables.studies
    summary = {
        "seed": int(seed),
        "n_patients": int(n_patients),
        "image_size": int(image_size),
        "version": VERSION,
        "findings": list(FINDINGS),
        "counts": {
            "patients": n_patients,
            "studies": len(studies),
            "images": len(tables.metadata),
            "studies_with_lateral": sum(1 for r in studies if r.lateral_dicom_id),
            "studies_per_patient": {str(k): int((counts == k).sum()) for k in range(1, MAX_STUDIES + 1)},
            "split_patients": {s: splits.count(s) for s in ("train", "validate", "test")},
            "sequences": len(tables.sequences),
            "lateral_only_findings": sum(int(getattr(r, f"{f}_lateral_only")) for r in studies for f in FINDINGS),
            "boxes": len(tables.boxes),
            "mscxrt_image_pairs": len(tables.mscxrt),
            "mscxrt_sentence_pairs": len(pairs),
            "rsna_images": n_rsna,
            "rsna_positive": len({r.patientId for r in tables.rsna if r.Target == 1}),
            "covidx_train": sum(1 for r in tables.covidx if r.split == "train"),
            "covidx_test": sum(1 for r in tables.covidx if r.split == "test"),
        },
    }
    if ct_patients:  # absent without CT, so that phantom.json stays as it was
        summary["ct_fraction"] = float(ct_fraction)
        summary["counts"]["ct_volumes"] = len(ct.metadata)
        summary["counts"]["ct_slices_per_volume"] = n_slices
    (out / "phantom.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    """``python -m medst.phantom --out DIR [--patients N] [--image-size S] [--seed K] [--workers W]
    [--ct-fraction F]``"""
    p = argparse.ArgumentParser(prog="python -m medst.phantom", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--patients", type=int, default=200, help="MIMIC-part patients (default 200)")
    p.add_argument("--image-size", type=int, default=128, help="long image side in pixels (default 128)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--ct-fraction", type=float, default=0.0, help="fraction of patients with a CT volume (default 0)")
    a = p.parse_args(argv)
    summary = synthesize(a.out, a.patients, a.image_size, a.seed, a.workers, not a.quiet, ct_fraction=a.ct_fraction)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return summary
