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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medst.data.studies import image_relpath, select_studies
from medst.eval.embed import embed_images, embed_texts

ArrayLike = np.ndarray | torch.Tensor


# ---------------------------------------------------------------------------------------------------------
# Metric
# ---------------------------------------------------------------------------------------------------------
def _numpy(x: ArrayLike) -> np.ndarray:
    return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)


def retrieval_ranks(similarity: ArrayLike, positives: ArrayLike | None = None) -> np.ndarray:
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
    best = np.where(pos, sim, -np.inf).max(axis=1, keepdims=True)  # [Q, 1] best correct score
    return 1 + ((sim >= best) & ~pos).sum(axis=1)


def recall_at_k(
    similarity: ArrayLike, ks: Sequence[int] = (1, 5, 10), positives: ArrayLike | None = None
) -> dict[int, float]:
    """Recall@k of every row query: the share of queries with a correct candidate in the top k."""
    ranks = retrieval_ranks(similarity, positives)
    return {int(k): float((ranks <= k).mean()) for k in ks}


# ---------------------------------------------------------------------------------------------------------
# Studies of a MIMIC-CXR-JPG root
# ---------------------------------------------------------------------------------------------------------
@dataclass
class MimicStudies:
    """Studies of one split, one row each: subject_id, study_id, split, frontal_dicom, frontal (path),
    lateral_dicom, lateral (path or ""), text. ``skipped`` counts the studies left out by reason."""

    table: pd.DataFrame
    skipped: dict[str, int]


def read_mimic_studies(
    mimic_root: str | os.PathLike,
    split: str | Sequence[str] | None = "test",
    reports_dir: str | os.PathLike | None = None,
    min_words: int = 3,
    *,
    workers: int = 1,
) -> MimicStudies:
    """The usable studies of a split, chosen by ``medst prepare``'s own rule (Method §1), in subject and study
    order: :func:`medst.data.studies.select_studies`, which writes nothing.

    Frontal: the first readable of PA then AP images (smallest dicom_id first); lateral: the first readable of
    LATERAL then LL, or none; a study without a readable frontal is left out, and every unreadable image is
    named in a warning. Text: impression + findings of the report (:func:`medst.data.reports.report_text`),
    kept when it has at least ``min_words`` word tokens. ``split``: one split, several, or None for every split.
    ``workers``: processes that read the reports and check the images.
    """
    root = Path(mimic_root)
    splits = None if split is None else [split] if isinstance(split, str) else list(split)
    studies, ledger = select_studies(root, splits, reports_dir, min_words, workers=workers)
    rows = []
    for st in studies:
        front, lat = st.views.frontal[0], st.views.lateral[0] if st.views.lateral else ""
        rows.append(
            {
                "subject_id": st.subject_id,
                "study_id": st.study_id,
                "split": st.split,
                "frontal_dicom": front,
                "frontal": str(root / image_relpath(st.subject_id, st.study_id, front)),
                "lateral_dicom": lat,
                "lateral": str(root / image_relpath(st.subject_id, st.study_id, lat)) if lat else "",
                "text": st.text,
            }
        )
    columns = ["subject_id", "study_id", "split", "frontal_dicom", "frontal", "lateral_dicom", "lateral", "text"]
    return MimicStudies(pd.DataFrame(rows, columns=columns), ledger.counts("study"))


# ---------------------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------------------
def retrieval(
    em,
    mimic_root: str | os.PathLike,
    *,
    split: str = "test",
    ks: Sequence[int] = (1, 5, 10),
    use_lateral: bool = True,
    progress: bool = True,
) -> dict[str, float]:
    """Image <-> report retrieval on the studies of ``split`` (see the module docstring).

    Args:
        em: an :class:`medst.eval.embed.EvalModel`.
        mimic_root: the MIMIC-CXR-JPG root (``DIR/mimic-cxr-jpg``).
        use_lateral: read the lateral view through MoVE when a study has one (False: frontal only).
    Returns:
        ``i2t_r@k``, ``t2i_r@k`` for every k, ``i2t_median_rank``, ``t2i_median_rank``, ``n`` (studies),
        ``n_with_lateral``, ``chance_r@1`` (k / n for a random ranking).
    """
    studies = read_mimic_studies(mimic_root, split).table
    if len(studies) < 2:
        raise ValueError(f"{mimic_root}: {len(studies)} usable {split} studies; retrieval needs at least 2")
    lateral = studies["lateral"].tolist() if use_lateral else None
    img = embed_images(em, studies["frontal"].tolist(), lateral, progress=progress, desc="retrieval images")
    txt = embed_texts(em, studies["text"].tolist(), progress=progress, desc="retrieval reports")
    sim = (img @ txt.T).numpy()  # [N, N] image i vs report j
    texts = studies["text"].to_numpy()
    same = texts[:, None] == texts[None, :]  # identical reports are interchangeable
    out: dict[str, float] = {}
    i2t, t2i = retrieval_ranks(sim, same), retrieval_ranks(sim.T, same)
    for k in ks:
        out[f"i2t_r@{k}"] = float((i2t <= k).mean())
    for k in ks:
        out[f"t2i_r@{k}"] = float((t2i <= k).mean())
    n = len(studies)
    out.update(
        {
            "i2t_median_rank": float(np.median(i2t)),
            "t2i_median_rank": float(np.median(t2i)),
            "n": n,
            "n_with_lateral": int((studies["lateral"] != "").sum()) if use_lateral else 0,
            "chance_r@1": float(np.mean(same.sum(axis=1)) / n),
        }
    )
    return out
