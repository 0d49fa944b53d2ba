"""MS-CXR-T temporal sentence similarity (Method §8): does the text embedding tell "better" from "worse"?

Each row of ``DIR/ms-cxr-t/MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv`` pairs two sentences about the
change of a finding; ``paraphrase`` pairs say the same (in other words), ``contradiction`` pairs say the
opposite. Score = cosine similarity of the two global text embeddings; a paraphrase is the positive class.

Reported:

- ``auc``: ROC-AUC of the score (threshold free);
- ``accuracy``: accuracy of "paraphrase iff score >= threshold" at the best threshold on these same pairs,
  ``threshold``: that threshold (a cosine). Choosing it on the test pairs is optimistic, so
- ``accuracy_cv``: the same rule with the threshold chosen on the other folds of a stratified 5-fold split
  and applied to the held-out fold (an honest estimate).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from medst.eval.embed import embed_texts

SENTENCE_CSV = "MS_CXR_T_temporal_sentence_similarity_v1.0.0.csv"
POSITIVE, NEGATIVE = "paraphrase", "contradiction"


def read_sentence_table(path: str | os.PathLike, subset: str | None = None) -> pd.DataFrame:
    """The sentence-pair CSV, checked (columns sentence_1, sentence_2, category; optional subset_name filter)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MS-CXR-T temporal sentence similarity CSV not found")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("sentence_1", "sentence_2", "category") if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}")
    table["category"] = table["category"].str.strip().str.lower()
    bad = sorted(set(table["category"]) - {POSITIVE, NEGATIVE})
    if bad:
        raise ValueError(f"{path}: unknown category value(s) {bad}; expected {POSITIVE!r} or {NEGATIVE!r}")
    if subset is not None and "subset_name" in table.columns:
        table = table[table["subset_name"] == subset]
    return table.reset_index(drop=True)


def best_threshold_accuracy(scores: Sequence[float], labels: Sequence[int]) -> tuple[float, float]:
    """The threshold t maximising the accuracy of ``predict 1 iff score >= t``.

    Candidates are every observed score and the next float above the largest (predict all 0); the smallest t
    among equally good ones wins.

    Args:
        scores: [n] floats; labels: [n] in {0, 1}.
    Returns:
        (best accuracy, t).
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if s.shape != y.shape or s.ndim != 1 or len(s) == 0:
        raise ValueError(f"best_threshold_accuracy: scores {s.shape} and labels {y.shape} must be equal, non-empty 1-D")
    candidates = np.append(np.unique(s), np.nextafter(s.max(), np.inf))  # ascending, all finite
    # For t = candidates[j], predicted positive = s >= t. Count positives/negatives at or above each t.
    order = np.sort(s)
    above = len(s) - np.searchsorted(order, candidates, side="left")  # #scores >= t
    pos_sorted = np.sort(s[y == 1])
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, candidates, side="left")
    fp = above - tp
    tn = int((y == 0).sum()) - fp
    acc = (tp + tn) / len(s)
    j = int(np.argmax(acc))  # first (smallest t) among the best
    return float(acc[j]), float(candidates[j])


def cross_validated_threshold_accuracy(
    scores: Sequence[float], labels: Sequence[int], folds: int = 5, seed: int = 0
) -> float:
    """Accuracy with the threshold chosen on the training folds (:func:`best_threshold_accuracy`) and applied to
    the held-out fold, pooled over a stratified k-fold split (k lowered to the rarer class count, at least 2)."""
    from sklearn.model_selection import StratifiedKFold

    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    k = int(min(folds, np.bincount(y, minlength=2).min()))
    if k < 2:
        raise ValueError("cross_validated_threshold_accuracy: each class needs at least 2 examples")
    correct = 0
    for train, test in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(s, y):
        _, t = best_threshold_accuracy(s[train], y[train])
        correct += int(((s[test] >= t).astype(int) == y[test]).sum())
    return correct / len(s)


def temporal_sentence_similarity(
    em, data_root: str | os.PathLike, *, subset: str | None = None, seed: int = 0, progress: bool = True
) -> dict[str, float]:
    """The MS-CXR-T temporal sentence similarity task (see the module docstring).

    Args:
        em: an :class:`medst.eval.embed.EvalModel`.
        data_root: folder with ``ms-cxr-t/``.
        subset: keep only rows of this ``subset_name`` (e.g. "RadGraph"); None keeps all.
    Returns:
        ``auc``, ``accuracy``, ``threshold``, ``accuracy_cv``, ``mean_cos_paraphrase``,
        ``mean_cos_contradiction``, ``n``, ``n_paraphrase``.
    """
    from sklearn.metrics import roc_auc_score

    path = Path(data_root) / "ms-cxr-t" / SENTENCE_CSV
    table = read_sentence_table(path, subset)
    y = (table["category"] == POSITIVE).to_numpy().astype(int)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{path}: needs both {POSITIVE} and {NEGATIVE} pairs, found only one category")
    first = embed_texts(em, table["sentence_1"].tolist(), progress=progress, desc="sentences 1")
    second = embed_texts(em, table["sentence_2"].tolist(), progress=progress, desc="sentences 2")
    cos = (first * second).sum(dim=1).numpy().astype(np.float64)  # unit vectors: dot = cosine
    acc, threshold = best_threshold_accuracy(cos, y)
    return {
        "auc": float(roc_auc_score(y, cos)),
        "accuracy": acc,
        "threshold": threshold,
        "accuracy_cv": cross_validated_threshold_accuracy(cos, y, seed=seed),
        "mean_cos_paraphrase": float(cos[y == 1].mean()),
        "mean_cos_contradiction": float(cos[y == 0].mean()),
        "n": int(len(y)),
        "n_paraphrase": int(y.sum()),
    }
