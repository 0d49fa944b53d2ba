"""COVIDx classification with 1 %, 10 % and 100 % of the training labels (Method §8).

Three classes (normal, pneumonia, COVID-19). Two ways to use the pre-trained image tower:

- **linear probe**: frozen global image embeddings (Method §2), a logistic regression on top
  (scikit-learn, after standardisation);
- **fine-tuning**: the image tower ([CLS] output, before the projection head) plus a linear classifier,
  all trained with AdamW and cross-entropy for a few epochs, on random crops of the resized-and-padded
  images (the pre-training augmentation), evaluated on centre crops.

A fraction f of the training set keeps ``max(1, round(f · n_c))`` images of every class c (stratified, seeded),
so even 1 % sees every class. Reported: test accuracy for every fraction and method.

Data: ``DIR/covidx/train.txt`` and ``test.txt``, lines ``patient_id filename label source``, images in
``DIR/covidx/train/`` and ``DIR/covidx/test/``.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from medst.data.transforms import eval_transform, train_transform
from medst.eval.embed import embed_images, read_resized_many
from medst.eval.temporal import mimic_image_paths

CLASSES = ("normal", "pneumonia", "COVID-19")
FRACTIONS = (0.01, 0.1, 1.0)


def read_covidx_split(data_root: str | os.PathLike, split: str) -> pd.DataFrame:
    """``covidx/{split}.txt`` -> DataFrame(patient_id, filename, label, source, path, y) with y = class index."""
    root = Path(data_root) / "covidx"
    listing = root / f"{split}.txt"
    if not listing.is_file():
        raise FileNotFoundError(f"{listing}: COVIDx {split} list not found")
    rows = []
    for number, line in enumerate(listing.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3:
            raise ValueError(f"{listing}:{number}: expected 'patient_id filename label [source]', got {line!r}")
        rows.append(
            {
                "patient_id": parts[0],
                "filename": parts[1],
                "label": parts[2],
                "source": parts[3] if len(parts) > 3 else "",
            }
        )
    table = pd.DataFrame(rows, columns=["patient_id", "filename", "label", "source"])
    lookup = {c.lower(): i for i, c in enumerate(CLASSES)}
    bad = sorted({lab for lab in table["label"] if lab.lower() not in lookup})
    if bad:
        raise ValueError(f"{listing}: unknown label(s) {bad}; expected {list(CLASSES)}")
    table["y"] = [lookup[lab.lower()] for lab in table["label"]]
    table["path"] = [str(root / split / name) for name in table["filename"]]
    absent = [p for p in table["path"] if not os.path.isfile(p)]
    if absent:
        raise FileNotFoundError(f"{absent[0]}: image listed in {listing} not found ({len(absent)} missing)")
    return table


def subsample(labels: Sequence[int], fraction: float, seed: int = 0) -> np.ndarray:
    """Stratified subset: ``max(1, round(fraction · n_c))`` indices of every class c, sorted.

    Args:
        labels: [n] class indices; fraction: in (0, 1].
    Returns:
        int indices into ``labels``.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"subsample: fraction must be in (0, 1], got {fraction}")
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        n = max(1, int(round(fraction * len(members))))
        keep.append(rng.choice(members, size=n, replace=False))
    return np.sort(np.concatenate(keep))


def linear_probe_accuracy(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, C: float = 1.0
) -> float:
    """Test accuracy of a logistic regression (after standardisation) on frozen features [n, f]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:  # one example of one class: nothing to separate
        values, counts = np.unique(train_y, return_counts=True)
        return float((test_y == values[np.argmax(counts)]).mean())
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=5000))
    clf.fit(train_x, train_y)
    return float((clf.predict(test_x) == test_y).mean())


class ImageClassifier(nn.Module):
    """Image tower + linear classifier: images [B, 3, S, S] -> logits [B, n_classes] from the [CLS] output."""

    def __init__(self, vision: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.vision = vision
        self.classifier = nn.Linear(vision.embed_dim, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.vision(images).cls)


def _to_inputs(squares: np.ndarray, transform) -> torch.Tensor:
    """uint8 [B, side, side] -> float [B, 3, S, S] through an :class:`~medst.data.transforms.ImageTransform`."""
    return torch.stack([transform(img) for img in squares])


@torch.no_grad()
def classifier_accuracy(
    model: ImageClassifier,
    squares: np.ndarray,
    labels: np.ndarray,
    image_size: int,
    device: torch.device,
    batch_size: int = 64,
) -> float:
    """Accuracy on centre crops of uint8 [n, side, side] resized-and-padded images."""
    model.eval()
    transform = eval_transform(image_size)
    correct = 0
    for start in range(0, len(squares), batch_size):
        x = _to_inputs(squares[start : start + batch_size], transform).to(device)
        correct += int((model(x).argmax(dim=1).cpu().numpy() == labels[start : start + batch_size]).sum())
    return correct / len(squares)


def finetune_accuracy(
    vision: nn.Module,
    train_squares: np.ndarray,
    train_y: np.ndarray,
    test_squares: np.ndarray,
    test_y: np.ndarray,
    *,
    image_size: int,
    device: torch.device,
    epochs: int = 3,
    lr: float = 1e-4,
    head_lr: float = 1e-3,
    weight_decay: float = 0.05,
    batch_size: int = 32,
    min_steps: int = 10,
    seed: int = 0,
    progress: bool = True,
    desc: str = "fine-tune",
) -> float:
    """Fine-tune a copy of ``vision`` with a linear classifier; return the test accuracy.

    Steps: ``max(epochs · ceil(n / batch_size), min_steps)`` (so a 1 % subset still takes a few steps), each a
    shuffled mini-batch of random crops. AdamW; the classifier learns at ``head_lr``, the tower at ``lr``.

    Args:
        vision: the pre-trained image tower (not modified: a deep copy is trained).
        train_squares, test_squares: uint8 [n, side, side] resized-and-padded images.
        train_y, test_y: [n] class indices.
    """
    torch.manual_seed(seed)
    model = ImageClassifier(copy.deepcopy(vision), len(CLASSES)).to(device)
    optimizer = torch.optim.AdamW(
        [{"params": model.vision.parameters(), "lr": lr}, {"params": model.classifier.parameters(), "lr": head_lr}],
        weight_decay=weight_decay,
    )
    transform = train_transform(image_size)
    n = len(train_y)
    steps = max(epochs * math.ceil(n / batch_size), min_steps)
    rng = np.random.default_rng(seed)
    order = np.empty(0, dtype=np.int64)
    y_all = torch.as_tensor(train_y, dtype=torch.long)
    model.train()
    for _ in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
        if len(order) < min(batch_size, n):
            order = np.concatenate([order, rng.permutation(n)])
        idx, order = order[: min(batch_size, n)], order[min(batch_size, n) :]
        x = _to_inputs(train_squares[idx], transform).to(device)
        loss = F.cross_entropy(model(x), y_all[idx].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return classifier_accuracy(model, test_squares, test_y, image_size, device)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def covidx(
    em,
    data_root: str | os.PathLike,
    *,
    fractions: Sequence[float] = FRACTIONS,
    epochs: int | None = None,
    finetune: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """COVIDx linear probe and fine-tuning at several label fractions (see the module docstring).

    Args:
        em: an :class:`medst.eval.embed.EvalModel`.
        data_root: folder with ``covidx/``.
        epochs: fine-tuning epochs; None: 2 under the ``ci`` profile, 3 under ``cpu``, 10 otherwise.
        finetune: False runs only the linear probe.
    Returns:
        ``probe_acc@{p}`` and ``finetune_acc@{p}`` and ``n_train@{p}`` for each fraction (p like "1%"),
        ``n_test``, ``majority`` (test accuracy of always answering the commonest training class), ``epochs``.
    """
    train, test = read_covidx_split(data_root, "train"), read_covidx_split(data_root, "test")
    side = em.cache_side
    train_sq = read_resized_many(train["path"].tolist(), side, progress, desc="COVIDx train")
    test_sq = read_resized_many(test["path"].tolist(), side, progress, desc="COVIDx test")
    train_y, test_y = train["y"].to_numpy(), test["y"].to_numpy()
    train_emb = embed_images(em, list(train_sq), progress=progress, desc="COVIDx train").numpy()
    test_emb = embed_images(em, list(test_sq), progress=progress, desc="COVIDx test").numpy()
    if epochs is None:
        epochs = {"ci": 2, "cpu": 3}.get(em.profile, 10)

    out: dict[str, float] = {
        "n_test": int(len(test_y)),
        "majority": float((test_y == np.bincount(train_y).argmax()).mean()),
        "epochs": int(epochs),
    }
    for fraction in fractions:
        idx = subsample(train_y, fraction, seed=seed)
        p = _pct(fraction)
        out[f"n_train@{p}"] = int(len(idx))
        out[f"probe_acc@{p}"] = linear_probe_accuracy(train_emb[idx], train_y[idx], test_emb, test_y)
        if finetune:
            out[f"finetune_acc@{p}"] = finetune_accuracy(
                em.model.vision,
                train_sq[idx],
                train_y[idx],
                test_sq,
                test_y,
                image_size=em.image_size,
                device=em.device,
                epochs=epochs,
                seed=seed,
                progress=progress,
                desc=f"fine-tune {p}",
            )
    return out


def lateral_finding_probe(
    em,
    data_root: str | os.PathLike,
    *,
    splits: Sequence[str] | None = None,
    folds: int = 5,
    max_studies: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Can the image embedding see a finding that only the lateral view shows? (MoVE's target, Method §3)

    The phantom marks small posterior pleural effusions that are invisible on the frontal view
    (``ground_truth/studies.csv``: ``F_lateral_only = 1``). Among studies that have a lateral image,
    positives have such a lateral-only finding and negatives have no pleural effusion at all (studies whose
    effusion shows on the frontal view are left out). A logistic regression on frozen global embeddings is
    scored by cross-validated ROC-AUC, folds grouped by patient; the labels are never used in pre-training, so
    every split may be probed (``splits=None``).

    The same studies are embedded twice: with both views (MoVE) and with the frontal view only, so
    ``auc`` - ``auc_frontal_only`` is what reading the lateral buys this model.

    Returns:
        ``auc``, ``auc_frontal_only``, ``n``, ``n_positive``, ``folds``.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = Path(data_root)
    path = root / "ground_truth" / "studies.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: phantom ground truth not found (lateral-finding probe)")
    table = pd.read_csv(path, dtype={"lateral_dicom_id": str, "frontal_dicom_id": str}, keep_default_na=False)
    if splits is not None:
        table = table[table["split"].isin(list(splits))]
    only = [c for c in table.columns if c.endswith("_lateral_only")]
    if not only:
        raise ValueError(f"{path}: no *_lateral_only columns")
    table = table[table["lateral_dicom_id"] != ""]
    positive = table[only].astype(int).to_numpy().any(axis=1)
    negative = table["pleural_effusion_severity"].astype(float).to_numpy() <= 0
    negative &= ~positive
    table, y = table[positive | negative].reset_index(drop=True), positive[positive | negative].astype(int)
    if max_studies is not None and len(table) > max_studies:
        pick = np.sort(np.random.default_rng(seed).choice(len(table), max_studies, replace=False))
        table, y = table.iloc[pick].reset_index(drop=True), y[pick]
    groups = table["subject_id"].to_numpy()
    k = int(min(folds, np.bincount(y, minlength=2).min(), len(set(groups))))
    if k < 2:
        raise ValueError(f"{path}: too few studies for a probe ({int(y.sum())} positive of {len(y)})")
    paths = mimic_image_paths(root / "mimic-cxr-jpg")
    front = [paths[d] for d in table["frontal_dicom_id"]]
    lateral = [paths[d] for d in table["lateral_dicom_id"]]
    both = embed_images(em, front, lateral, progress=progress, desc="lateral probe (MoVE)").numpy()
    alone = embed_images(em, front, progress=progress, desc="lateral probe (frontal)").numpy()
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)

    def auc(x: np.ndarray) -> float:
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        scores = cross_val_predict(clf, x, y, cv=cv, groups=groups, method="decision_function")
        return float(roc_auc_score(y, scores))

    return {"auc": auc(both), "auc_frontal_only": auc(alone), "n": int(len(y)), "n_positive": int(y.sum()), "folds": k}
