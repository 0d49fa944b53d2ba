"""MS-CXR-T temporal image classification (Method §8): does the image embedding see change over time?

For each of the five findings, every labelled pair (current image, previous image of the same patient) is
embedded with the frozen image tower, frontal view only (global embeddings, L2-normalised), the two vectors are
concatenated into one ``[2d]`` feature, and a linear SVM is scored by stratified k-fold cross-validation
accuracy over the classes improving / stable / worsening, for k = 5 and k = 10.

Data: ``DIR/ms-cxr-t/MS_CXR_T_temporal_image_classification_v1.0.0.csv`` (dicom_id, previous_dicom_id,
<finding>_progression) and the MIMIC-CXR-JPG images it names (dicom_id -> path through the metadata CSV).
Images are pre-processed exactly as evaluation-time pre-training images (:mod:`medst.eval.embed`).

Beside each accuracy the majority-class accuracy is reported: the score of a classifier that ignores the image.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medst.data.studies import METADATA_NAME, image_relpath
from medst.eval.embed import embed_images

IMAGE_CSV = "MS_CXR_T_temporal_image_classification_v1.0.0.csv"
FINDINGS = ("consolidation", "edema", "pleural_effusion", "pneumonia", "pneumothorax")
CLASSES = ("improving", "stable", "worsening")


def read_image_table(path: str | os.PathLike) -> pd.DataFrame:
    """The MS-CXR-T image CSV, checked: dicom ids as strings, labels lower-cased ("" when not labelled)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MS-CXR-T temporal image classification CSV not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    needed = ["dicom_id", "previous_dicom_id"] + [f"{f}_progression" for f in FINDINGS]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    for f in FINDINGS:
        col = table[f"{f}_progression"].str.strip().str.lower()
        bad = sorted(set(col) - set(CLASSES) - {""})
        if bad:
            raise ValueError(f"{path}: unknown {f}_progression label(s) {bad}; expected {list(CLASSES)} or empty")
        table[f"{f}_progression"] = col
    return table


def mimic_image_paths(mimic_root: str | os.PathLike) -> dict[str, str]:
    """dicom_id -> JPEG path under a MIMIC-CXR-JPG root, from its metadata CSV."""
    root = Path(mimic_root)
    for name in (METADATA_NAME, METADATA_NAME + ".gz"):
        if (root / name).is_file():
            meta = pd.read_csv(root / name, usecols=["dicom_id", "subject_id", "study_id"], dtype={"dicom_id": str})
            return {
                d: str(root / image_relpath(int(s), int(t), d))
                for d, s, t in zip(meta["dicom_id"], meta["subject_id"], meta["study_id"])
            }
    raise FileNotFoundError(
        f"{root / METADATA_NAME}: MIMIC-CXR-JPG metadata CSV not found (needed to find the MS-CXR-T images)"
    )


def svm_cv_accuracy(
    features: np.ndarray,
    labels: Sequence[str],
    folds: int,
    seed: int = 0,
    C: float = 1.0,
    groups: Sequence[Any] | None = None,
) -> tuple[float, int]:
    """Mean stratified k-fold accuracy of a linear SVM (scikit-learn ``LinearSVC`` after standardisation).

    When the rarest class has fewer than ``folds`` examples, k is lowered to that count (at least 2).

    Args:
        features: [n, f]; labels: n class names.
        groups: optional n group ids (e.g. patients): a group never spans training and test folds
            (``StratifiedGroupKFold``; k is also capped by the number of groups).
    Returns:
        (mean accuracy over folds, folds used).
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    y = np.asarray(labels)
    _, counts = np.unique(y, return_counts=True)
    if len(counts) < 2:
        raise ValueError(f"svm_cv_accuracy: needs at least 2 classes, got {len(counts)}")
    k = int(min(folds, counts.min(), len(set(groups)) if groups is not None else folds))
    if k < 2:
        raise ValueError(f"svm_cv_accuracy: the rarest class has {counts.min()} example(s); need 2 for 2 folds")
    clf = make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=20000))
    cv = (
        StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        if groups is None
        else StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings on tiny folds
        scores = cross_val_score(
            clf, features, y, cv=cv, scoring="accuracy", groups=None if groups is None else np.asarray(groups)
        )
    return float(scores.mean()), k


def majority_accuracy(labels: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent class."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def pair_features(current: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """[n, d] current and [n, d] previous embeddings -> [n, 2d] concatenation (Method §8)."""
    if current.shape != previous.shape:
        raise ValueError(f"pair_features: shapes differ, {current.shape} vs {previous.shape}")
    return np.concatenate([current, previous], axis=1)


def temporal_image_classification(
    em,
    data_root: str | os.PathLike,
    *,
    folds: Sequence[int] = (5, 10),
    seed: int = 0,
    findings: Sequence[str] = FINDINGS,
    progress: bool = True,
) -> dict[str, float]:
    """The MS-CXR-T temporal image classification task (see the module docstring).

    Args:
        em: an :class:`medst.eval.embed.EvalModel`.
        data_root: folder with ``ms-cxr-t/`` and ``mimic-cxr-jpg/``.
        folds: the k of the k-fold cross-validations.
    Returns:
        per finding F: ``F_acc{k}`` for each k, ``F_majority``, ``F_n``; then ``mean_acc{k}`` and
        ``mean_majority`` over the findings that could be scored, and ``findings_scored``. A finding with
        fewer than 2 classes of at least 2 examples is left out (``F_n`` still says how many pairs it had).
    """
    root = Path(data_root)
    table = read_image_table(root / "ms-cxr-t" / IMAGE_CSV)
    paths = mimic_image_paths(root / "mimic-cxr-jpg")
    ids = sorted(set(table["dicom_id"]) | set(table["previous_dicom_id"]))
    absent = [d for d in ids if d not in paths]
    if absent:
        raise FileNotFoundError(
            f"{root / 'ms-cxr-t' / IMAGE_CSV}: {len(absent)} dicom id(s) not in the MIMIC metadata, first {absent[0]}"
        )
    emb = embed_images(em, [paths[d] for d in ids], progress=progress, desc="MS-CXR-T images").numpy()
    row = {d: i for i, d in enumerate(ids)}
    out: dict[str, float] = {}
    scored: dict[str, list[float]] = {}
    for f in findings:
        labelled = table[table[f"{f}_progression"] != ""]
        labels = labelled[f"{f}_progression"].to_numpy()
        out[f"{f}_n"] = int(len(labels))
        if len(labels) == 0:
            continue
        # Keep classes with at least 2 examples so that stratified folds exist.
        values, counts = np.unique(labels, return_counts=True)
        keep = np.isin(labels, values[counts >= 2])
        if len(np.unique(labels[keep])) < 2:
            continue
        x = pair_features(
            emb[[row[d] for d in labelled["dicom_id"]]], emb[[row[d] for d in labelled["previous_dicom_id"]]]
        )[keep]
        y = labels[keep]
        for k in folds:
            acc, _ = svm_cv_accuracy(x, y, k, seed=seed)
            out[f"{f}_acc{k}"] = acc
            scored.setdefault(f"acc{k}", []).append(acc)
        out[f"{f}_majority"] = majority_accuracy(y)
        scored.setdefault("majority", []).append(out[f"{f}_majority"])
    for key, values in scored.items():
        out[f"mean_{key}"] = float(np.mean(values))
    out["findings_scored"] = len(scored.get("majority", []))
    return out


def progression_probe(
    em,
    data_root: str | os.PathLike,
    *,
    findings: Sequence[str] = FINDINGS,
    splits: Sequence[str] | None = None,
    folds: int = 5,
    max_pairs: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """The MS-CXR-T recipe on the phantom's full progression ground truth (many more pairs than MS-CXR-T).

    Every consecutive pair of a phantom patient's studies (``ground_truth/progression.csv``) with a label for a
    finding is a sample: frontal embeddings of the current and previous study, concatenated; a linear SVM is
    scored by stratified k-fold accuracy **grouped by patient** (no patient in both training and test folds).
    The labels are never used in pre-training, so pairs from every split may be probed (``splits=None``).

    Returns:
        ``F_acc``, ``F_majority``, ``F_n`` per finding; ``mean_acc``, ``mean_majority``, ``findings_scored``.
    """
    root = Path(data_root)
    truth = root / "ground_truth"
    for name in ("progression.csv", "studies.csv"):
        if not (truth / name).is_file():
            raise FileNotFoundError(f"{truth / name}: phantom ground truth not found (progression probe)")
    prog = pd.read_csv(truth / "progression.csv", dtype=str, keep_default_na=False)
    studies = pd.read_csv(truth / "studies.csv", dtype=str, keep_default_na=False)
    if splits is not None:
        studies = studies[studies["split"].isin(list(splits))]
    frontal = dict(zip(studies["study_id"], studies["frontal_dicom_id"]))
    prog = prog[prog["study_id"].isin(frontal) & prog["previous_study_id"].isin(frontal)].reset_index(drop=True)
    if max_pairs is not None and len(prog) > max_pairs:  # whole patients, chosen at random
        subjects = np.random.default_rng(seed).permutation(prog["subject_id"].unique())
        keep, total = [], 0
        for subject in subjects:
            n = int((prog["subject_id"] == subject).sum())
            if total + n > max_pairs:
                break
            keep.append(subject)
            total += n
        prog = prog[prog["subject_id"].isin(keep)].reset_index(drop=True)
    paths = mimic_image_paths(root / "mimic-cxr-jpg")
    ids = sorted(set(prog["study_id"]) | set(prog["previous_study_id"]))
    emb = embed_images(em, [paths[frontal[s]] for s in ids], progress=progress, desc="progression images").numpy()
    row = {s: i for i, s in enumerate(ids)}
    x_all = pair_features(emb[[row[s] for s in prog["study_id"]]], emb[[row[s] for s in prog["previous_study_id"]]])
    out: dict[str, float] = {}
    accs, majorities = [], []
    for f in findings:
        labels = prog[f"{f}_progression"].str.strip().str.lower().to_numpy()
        mask = labels != ""
        out[f"{f}_n"] = int(mask.sum())
        values, counts = np.unique(labels[mask], return_counts=True)
        mask &= np.isin(labels, values[counts >= 2])
        if len(np.unique(labels[mask])) < 2 or prog.loc[mask, "subject_id"].nunique() < 2:
            continue
        acc, _ = svm_cv_accuracy(
            x_all[mask], labels[mask], folds, seed=seed, groups=prog.loc[mask, "subject_id"].to_numpy()
        )
        out[f"{f}_acc"], out[f"{f}_majority"] = acc, majority_accuracy(labels[mask])
        accs.append(acc)
        majorities.append(out[f"{f}_majority"])
    if accs:
        out["mean_acc"], out["mean_majority"] = float(np.mean(accs)), float(np.mean(majorities))
    out["findings_scored"] = len(accs)
    out["pairs"] = int(len(prog))
    return out
