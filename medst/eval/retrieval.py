"""Image <-> report retrieval on held-out MIMIC-CXR studies (the global alignment of Method §4, measured).

Every study of a split (``test`` by default) is embedded twice: its images (frontal, plus its lateral through
MoVE when it has one, Method §3) and its report text (impression + findings, as ``medst prepare`` keeps it,
Method §1). With the cosine similarity matrix ``s_ij = <v_i, t_j>`` (image i, report j):

- image -> report recall@k: the share of images whose own report is among the k most similar reports;
- report -> image recall@k: the same with rows and columns swapped.

Ties count against the model (a report scored exactly as high as the right one ranks before it), so a
collapsed model that gives every input the same embedding scores 0, not 1. Studies whose report texts are
identical (common for normal studies) are interchangeable answers: retrieving any of them is a hit.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd
import torch

from medst.data.mimic import (FRONTAL_VIEWS, LATERAL_VIEWS, METADATA_NAME, SPLIT_NAME, image_relpath,
                              report_relpath)
from medst.data.reports import report_text, word_tokens

ArrayLike = Union[np.ndarray, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------------------------------------
def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def retrieval_ranks(similarity: ArrayLike, positives: Optional[ArrayLike] = None) -> np.ndarray:
    """Rank (1 = best) of the first correct answer for every query row.

    Args:
        similarity: [Q, C] scores of every query against every candidate (higher = more similar).
        positives: [Q, C] bool, which candidates are correct for a query; default the identity (Q = C).
    Returns:
        [Q] int ranks: ``1 + #{wrong candidates scoring >= the best correct one}`` (ties count against).
    """
    sim = _numpy(similarity)
    if sim.ndim != 2:
        raise ValueError(f"retrieval_ranks: similarity must be [Q, C], got shape {sim.shape}")
    if positives is None:
        if sim.shape[0] != sim.shape[1]:
            raise ValueError(f"retrieval_ranks: a [Q, C] = {sim.shape} matrix needs an explicit positives mask")
        pos = np.eye(sim.shape[0], dtype=bool)
    else:
        pos = _numpy(positives).astype(bool)
        if pos.shape != sim.shape:
            raise ValueError(f"retrieval_ranks: positives {pos.shape} must match similarity {sim.shape}")
    if not pos.any(axis=1).all():
        raise ValueError("retrieval_ranks: every query needs at least one correct candidate")
    best = np.where(pos, sim, -np.inf).max(axis=1, keepdims=True)   # [Q, 1] best correct score
    return 1 + ((sim >= best) & ~pos).sum(axis=1)


def recall_at_k(similarity: ArrayLike, ks: Sequence[int] = (1, 5, 10),
                positives: Optional[ArrayLike] = None) -> dict[int, float]:
    """Recall@k of every row query: the share of queries with a correct candidate in the top k."""
    ranks = retrieval_ranks(similarity, positives)
    return {int(k): float((ranks <= k).mean()) for k in ks}


# ---------------------------------------------------------------------------------------------------------
# Studies of a MIMIC-CXR-JPG root
# ---------------------------------------------------------------------------------------------------------
@dataclass
class MimicStudies:
    """Studies of one split, one row each: subject_id, study_id, frontal_dicom, frontal (path), lateral_dicom,
    lateral (path or ""), text. ``skipped`` counts the studies left out by reason."""

    table: pd.DataFrame
    skipped: dict[str, int]


def _find(root: Path, name: str) -> Path:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{root / name}: not found (nor .gz); expected a MIMIC-CXR-JPG root")


def read_mimic_studies(mimic_root: Union[str, os.PathLike], split: Union[str, Sequence[str], None] = "test",
                       reports_dir: Union[str, os.PathLike, None] = None, min_words: int = 3) -> MimicStudies:
    """The usable studies of a split, chosen as ``medst prepare`` chooses them (Method §1).

    Frontal: PA before AP, then the smallest dicom_id; lateral: LATERAL before LL, or none. Text: impression +
    findings of ``REPORTS/files/pXX/pSUBJECT/sSTUDY.txt`` (:func:`medst.data.reports.report_text`), kept when it
    has at least ``min_words`` word tokens. ``split``: one split, several, or None for every split.
    """
    root = Path(mimic_root)
    meta = pd.read_csv(_find(root, METADATA_NAME), dtype={"dicom_id": str, "ViewPosition": str})
    splits = pd.read_csv(_find(root, SPLIT_NAME), dtype={"dicom_id": str, "split": str})
    for name, df, cols in (("metadata", meta, ("dicom_id", "subject_id", "study_id", "ViewPosition")),
                           ("split", splits, ("dicom_id", "split"))):
        missing = [c for c in cols if c not in df.columns]
        if missing:
            raise ValueError(f"{root}: the {name} CSV lacks column(s) {missing}")
    meta = meta.merge(splits[["dicom_id", "split"]].drop_duplicates("dicom_id"), on="dicom_id", how="left")
    if split is not None:
        meta = meta[meta["split"].isin([split] if isinstance(split, str) else list(split))]
    meta = meta.assign(ViewPosition=meta["ViewPosition"].fillna("").str.strip().str.upper())
    reports = Path(reports_dir) if reports_dir is not None else root / "mimic-cxr-reports"
    reports = reports / "files" if (reports / "files").is_dir() else reports

    front_rank = {v: i for i, v in enumerate(FRONTAL_VIEWS)}
    lat_rank = {v: i for i, v in enumerate(LATERAL_VIEWS)}
    rows, skipped = [], {}
    for (subject, study), group in meta.groupby(["subject_id", "study_id"], sort=True):
        views = sorted(zip(group["ViewPosition"], group["dicom_id"]))
        frontal = sorted((front_rank[v], d) for v, d in views if v in front_rank)
        lateral = sorted((lat_rank[v], d) for v, d in views if v in lat_rank)
        reason = None
        text = ""
        report = reports / report_relpath(int(subject), int(study))
        if not frontal:
            reason = "no frontal image"
        elif not report.is_file():
            reason = "no report"
        else:
            text = report_text(report.read_text(encoding="utf-8", errors="replace"))
            if len(word_tokens(text)) < min_words:
                reason = "short report"
        if reason is not None:
            skipped[reason] = skipped.get(reason, 0) + 1
            continue
        f_dicom = frontal[0][1]
        l_dicom = lateral[0][1] if lateral else ""
        rows.append({"subject_id": int(subject), "study_id": int(study), "split": group["split"].iat[0],
                     "frontal_dicom": f_dicom, "frontal": str(root / image_relpath(int(subject), int(study), f_dicom)),
                     "lateral_dicom": l_dicom,
                     "lateral": str(root / image_relpath(int(subject), int(study), l_dicom)) if l_dicom else "",
                     "text": text})
    columns = ["subject_id", "study_id", "split", "frontal_dicom", "frontal", "lateral_dicom", "lateral", "text"]
    return MimicStudies(pd.DataFrame(rows, columns=columns), skipped)


# ---------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------
def retrieval(em, mimic_root: Union[str, os.PathLike], *, split: str = "test", ks: Sequence[int] = (1, 5, 10),
              use_lateral: bool = True, progress: bool = True) -> dict[str, float]:
    """Image <-> report retrieval on the studies of ``split`` (see the module docstring).

    Args:
        em: an :class:`medst.eval.embed.EvalModel`.
        mimic_root: the MIMIC-CXR-JPG root (``DIR/mimic-cxr-jpg``).
        use_lateral: read the lateral view through MoVE when a study has one (False: frontal only).
    Returns:
        ``i2t_r@k``, ``t2i_r@k`` for every k, ``i2t_median_rank``, ``t2i_median_rank``, ``n`` (studies),
        ``n_with_lateral``, ``chance_r@1`` (k / n for a random ranking).
    """
    from medst.eval.embed import embed_images, embed_texts

    studies = read_mimic_studies(mimic_root, split).table
    if len(studies) < 2:
        raise ValueError(f"{mimic_root}: {len(studies)} usable {split} studies; retrieval needs at least 2")
    lateral = studies["lateral"].tolist() if use_lateral else None
    img = embed_images(em, studies["frontal"].tolist(), lateral, progress=progress, desc="retrieval images")
    txt = embed_texts(em, studies["text"].tolist(), progress=progress, desc="retrieval reports")
    sim = (img @ txt.T).numpy()                                          # [N, N] image i vs report j
    texts = studies["text"].to_numpy()
    same = texts[:, None] == texts[None, :]                              # identical reports are interchangeable
    out: dict[str, float] = {}
    i2t, t2i = retrieval_ranks(sim, same), retrieval_ranks(sim.T, same)
    for k in ks:
        out[f"i2t_r@{k}"] = float((i2t <= k).mean())
    for k in ks:
        out[f"t2i_r@{k}"] = float((t2i <= k).mean())
    n = len(studies)
    out.update({"i2t_median_rank": float(np.median(i2t)), "t2i_median_rank": float(np.median(t2i)),
                "n": n, "n_with_lateral": int((studies["lateral"] != "").sum()) if use_lateral else 0,
                "chance_r@1": float(np.mean(same.sum(axis=1)) / n)})
    return out
