"""RSNA pneumonia zero-shot classification (Method §8): the image tower and text tower, no training at all.

A handful of sentences a radiologist would write for pneumonia (positive prompts) and for a normal chest
(negative prompts) are embedded with the text tower; each set is averaged into one unit vector (a prompt
ensemble). An image is scored by how much closer it is to the positive mean than to the negative one,

    score(x) = <v(x), t_pos> - <v(x), t_neg>,

and called positive when the score is above 0. Reported: ROC-AUC of the score, F1 and accuracy of the rule.

Data: ``DIR/rsna/stage_2_train_labels.csv`` (patientId, x, y, width, height, Target; several rows per
patient, one per box) and ``DIR/rsna/stage_2_train_images/<patientId>.dcm``; a patient is positive when any of
its rows has Target = 1. DICOMs are read with :func:`medst.data.dicom.read_dicom` (modality and VOI LUT,
MONOCHROME1 inverted) and then pre-processed like every evaluation image.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from medst.eval.embed import embed_images, embed_texts, mean_embedding

LABELS_CSV = "stage_2_train_labels.csv"
IMAGES_DIR = "stage_2_train_images"

# Written as radiologists write (and as the phantom's report generator phrases findings); real reports read alike.
POSITIVE_PROMPTS = (
    "Findings are consistent with pneumonia.",
    "Opacity in the right lower lobe concerning for pneumonia.",
    "Opacity in the left lower lobe concerning for pneumonia.",
    "There is a dense right lower lobe consolidation.",
    "Multifocal pneumonia.",
)
NEGATIVE_PROMPTS = (
    "No acute cardiopulmonary process.",
    "The lungs are clear.",
    "No evidence of pneumonia.",
    "No focal consolidation.",
    "Normal chest radiograph.",
)


def read_rsna_labels(data_root: str | os.PathLike) -> pd.DataFrame:
    """One row per patient: patientId, label (1 = pneumonia: any Target = 1 row), path (its DICOM file)."""
    root = Path(data_root) / "rsna"
    csv = root / LABELS_CSV
    if not csv.is_file():
        raise FileNotFoundError(f"{csv}: RSNA pneumonia labels not found")
    table = pd.read_csv(csv, dtype={"patientId": str})
    missing = [c for c in ("patientId", "Target") if c not in table.columns]
    if missing:
        raise ValueError(f"{csv}: missing column(s) {missing}")
    labels = table.groupby("patientId", sort=True)["Target"].max().astype(int).reset_index()
    labels = labels.rename(columns={"Target": "label"})
    labels["path"] = [str(root / IMAGES_DIR / f"{pid}.dcm") for pid in labels["patientId"]]
    absent = [p for p in labels["path"] if not os.path.isfile(p)]
    if absent:
        raise FileNotFoundError(f"{absent[0]}: DICOM named in {csv} not found ({len(absent)} missing)")
    return labels


def prompt_embedding(em, prompts: Sequence[str]) -> torch.Tensor:
    """Prompts -> [d]: the re-normalised mean of their global text embeddings."""
    return mean_embedding(embed_texts(em, list(prompts), progress=False))


def zero_shot_scores(images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """[N, d] image embeddings, [d] positive and negative prompt embeddings -> [N] = <v, t_pos> - <v, t_neg>."""
    return images @ positive - images @ negative


def rsna_zero_shot(
    em,
    data_root: str | os.PathLike,
    *,
    positive: Sequence[str] = POSITIVE_PROMPTS,
    negative: Sequence[str] = NEGATIVE_PROMPTS,
    max_images: int | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """RSNA pneumonia zero-shot (see the module docstring).

    Args:
        em: an :class:`medst.eval.embed.EvalModel`.
        data_root: folder with ``rsna/``.
        positive, negative: the two prompt sets.
        max_images: score only the first this many patients (sorted by patientId); None = all.
    Returns:
        ``auc``, ``f1``, ``accuracy`` (rule: score > 0), ``n``, ``prevalence`` (share of positives; the
        accuracy of always answering "no pneumonia" is 1 - prevalence).
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels = read_rsna_labels(data_root)
    if max_images is not None:
        labels = labels.iloc[:max_images]
    y = labels["label"].to_numpy()
    if len(np.unique(y)) < 2:
        raise ValueError(f"{Path(data_root) / 'rsna' / LABELS_CSV}: needs positive and negative patients")
    images = embed_images(em, labels["path"].tolist(), progress=progress, desc="RSNA images")
    scores = zero_shot_scores(images, prompt_embedding(em, positive), prompt_embedding(em, negative)).numpy()
    pred = (scores > 0).astype(int)
    return {
        "auc": float(roc_auc_score(y, scores)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "accuracy": float(accuracy_score(y, pred)),
        "n": int(len(y)),
        "prevalence": float(y.mean()),
    }
