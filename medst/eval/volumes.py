"""CT volumes in evaluation (chapter 11): a finding probe on frozen volume embeddings and text-guided slice
selection, both scored against the phantom's ground truth.

Every model is scored, not only UniMedI (which reads a volume with its 3-D path, ``encode_volume``). A model
without a 3-D path (Med-ST, MPMA, the global-only ablation) embeds a volume through its 2-D path: the mean slice of
every slab (:func:`medst.data.volumes.slab_images`, ``slab = model.unimedi.volume_patch[0]`` slices) is a frontal
image for ``encode_image``; those are its slab embeddings, and their normalised mean is its volume embedding
(:func:`embed_volumes`). So the tables compare what a 3-D path adds over reading slices one by one.

- :func:`volume_finding_probe`: per finding, a logistic regression on the global volume embedding, scored by
  ROC-AUC over cross-validation folds grouped by patient (the labels are never used in pre-training, so every
  volume is probed, as in :func:`medst.eval.finetune.lateral_finding_probe`); chance 0.5.
- :func:`slice_selection`: the report of a volume's study scores its slabs by dot product with the slab
  embeddings and the top k are selected, as UniMedI selects pseudo 2-D images (chapter 11); precision@k is the
  share of selected slabs that hold a finding (``ground_truth/ct_slices.csv``), and its chance level the mean
  share of such slabs (what k random slabs score).

Data (the phantom's layout, ``medst synth --ct-fraction F``)::

    DIR/mimic-cxr-jpg/ct/ct-metadata.csv           subject, study, path (under ct/), slices, spacing
    DIR/mimic-cxr-jpg/ct/files/pXX/pSUBJECT/sSTUDY.nii.gz
    DIR/mimic-cxr-jpg/mimic-cxr-reports/files/...  the study's report, which the volume shares
    DIR/ground_truth/studies.csv                   the split of every study
    DIR/ground_truth/ct_slices.csv                 per volume and finding: the slices it occupies, its peak slice

A volume is read as the models read it (:func:`medst.data.volumes.read_volume` and
:func:`medst.data.volumes.volume_tensor`): ``model.unimedi.volume_slices`` slices of ``data.image_size`` pixels.
When that depth differs from the file's, a model slab is matched to the file slices whose depth intervals it
overlaps (:func:`slab_overlap`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm.auto import tqdm

from medst.data.ct import CT_DIR, read_ct_metadata
from medst.data.reports import report_text
from medst.data.studies import report_relpath, report_source
from medst.data.volumes import read_volume, slab_images, volume_tensor
from medst.eval import TaskSkipped
from medst.eval.embed import EvalModel, embed_texts
from medst.neighbours.unimedi import select_slabs
from medst.phantom.plan import FINDINGS

MIMIC_DIR = "mimic-cxr-jpg"
CT_SLICES = "ground_truth/ct_slices.csv"
STUDIES = "ground_truth/studies.csv"
MIN_EXAMPLES = 10  # a finding is probed when it has at least this many positive and negative volumes


# ---------------------------------------------------------------------------------------------------------
# The volumes and their ground truth
# ---------------------------------------------------------------------------------------------------------
def _slice_list(text: str) -> tuple[int, ...]:
    """``"1;2;3"`` -> (1, 2, 3); ``""`` -> ()."""
    return tuple(int(k) for k in str(text).split(";") if k.strip() != "")


def volume_table(data_root: str | os.PathLike) -> pd.DataFrame:
    """The phantom's CT volumes, one row each, in subject and study order.

    Columns: subject_id, study_id, split (of the study, ``ground_truth/studies.csv``), path (the NIfTI file),
    slices (the file's), text (the study's report: impression + findings, :func:`medst.data.reports.report_text`),
    one 0/1 column per finding of :data:`medst.phantom.plan.FINDINGS` (1: the finding occupies at least one slice
    of the volume, ``ground_truth/ct_slices.csv``), finding_slices (the sorted union of those slices, a tuple)
    and peak_slices (the findings' peak slices, a sorted tuple). Raises FileNotFoundError naming a missing table,
    volume or report.
    """
    root = Path(data_root)
    mimic = root / MIMIC_DIR
    meta = read_ct_metadata(mimic / CT_DIR)
    for rel in (STUDIES, CT_SLICES):
        if not (root / rel).is_file():
            raise FileNotFoundError(f"{root / rel}: phantom ground truth not found (CT volume evaluation)")
    studies = pd.read_csv(root / STUDIES, usecols=["study_id", "split"], dtype={"split": str})
    split = dict(zip(studies["study_id"].astype(int), studies["split"]))
    truth = pd.read_csv(root / CT_SLICES, dtype={"slices": str, "finding": str}, keep_default_na=False)
    kind, reports = report_source(mimic, None)
    if kind != "files":
        raise ValueError(f"{reports}: CT evaluation reads report files (files/pXX/pSUBJECT/sSTUDY.txt), not a CSV")

    by_volume: dict[tuple[int, int], list[tuple[str, tuple[int, ...], int]]] = {}
    for row in truth.itertuples(index=False):
        key = (int(row.subject_id), int(row.study_id))
        by_volume.setdefault(key, []).append((row.finding, _slice_list(row.slices), int(row.peak_slice)))
    rows = []
    for m in meta.itertuples(index=False):
        subject, study = int(m.subject_id), int(m.study_id)
        if study not in split:
            raise ValueError(f"{root / STUDIES}: no study s{study} (CT volume {m.path})")
        path = mimic / CT_DIR / str(m.path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: CT volume listed in {mimic / CT_DIR / 'ct-metadata.csv'} not found")
        report = reports / report_relpath(subject, study)
        if not report.is_file():
            raise FileNotFoundError(f"{report}: report of the study of CT volume {path.name} not found")
        present = [(f, s, p) for f, s, p in by_volume.get((subject, study), []) if s]
        row = {
            "subject_id": subject,
            "study_id": study,
            "split": split[study],
            "path": str(path),
            "slices": int(m.slices),
            "text": report_text(report.read_text(encoding="utf-8", errors="replace")),
        }
        row.update({f: int(any(f == g for g, _, _ in present)) for f in FINDINGS})
        row["finding_slices"] = tuple(sorted({k for _, s, _ in present for k in s}))
        row["peak_slices"] = tuple(sorted({p for _, _, p in present if p >= 0}))
        rows.append(row)
    columns = ["subject_id", "study_id", "split", "path", "slices", "text", *FINDINGS, "finding_slices", "peak_slices"]
    return pd.DataFrame(rows, columns=columns)


def _subset(table: pd.DataFrame, max_volumes: int | None, seed: int) -> pd.DataFrame:
    """A seeded random subset of at most ``max_volumes`` rows, in table order."""
    if max_volumes is None or len(table) <= max_volumes:
        return table.reset_index(drop=True)
    pick = np.sort(np.random.default_rng(seed).choice(len(table), max_volumes, replace=False))
    return table.iloc[pick].reset_index(drop=True)


def slab_overlap(n_slices: int, depth: int, slab: int) -> np.ndarray:
    """Which file slices every model slab covers: bool [depth // slab, n_slices].

    A file of ``n_slices`` slices and a model volume of ``depth`` slices span the same extent (slice 0 the most
    inferior); model slab s holds model slices ``s·slab .. (s+1)·slab - 1``, i.e. the depth interval
    [s·slab / depth, (s+1)·slab / depth), and file slice k the interval [k / n_slices, (k+1) / n_slices); the slab
    covers the slice when the two overlap (touching ends do not count). Equal depths: slab s covers slices
    ``s·slab .. (s+1)·slab - 1`` exactly."""
    s = np.arange(depth // slab)[:, None]
    k = np.arange(n_slices)[None, :]
    return (k * depth < (s + 1) * slab * n_slices) & ((k + 1) * depth > s * slab * n_slices)


def slab_truth(slices: Sequence[int], n_slices: int, depth: int, slab: int) -> np.ndarray:
    """bool [depth // slab]: the model slabs that cover any of the file slices ``slices`` (:func:`slab_overlap`)."""
    hit = np.zeros(n_slices, bool)
    hit[[k for k in slices if 0 <= k < n_slices]] = True
    return slab_overlap(n_slices, depth, slab)[:, hit].any(axis=1)


# ---------------------------------------------------------------------------------------------------------
# Embedding volumes
# ---------------------------------------------------------------------------------------------------------
@dataclass
class VolumeEmbeddings:
    """global_: [V, d] unit vectors (one per volume); slabs: [V, S, d] unit vectors (one per slab)."""

    global_: torch.Tensor
    slabs: torch.Tensor


def slab_size(em: EvalModel) -> int:
    """Slices per slab: the depth of UniMedI's 3-D patch, ``model.unimedi.volume_patch[0]`` (chapter 11)."""
    return int(em.cfg.model.unimedi.volume_patch[0])


def volume_depth(em: EvalModel) -> int:
    """D, the slices of a volume as the models read it (``model.unimedi.volume_slices``)."""
    return int(em.cfg.model.unimedi.volume_slices)


@torch.no_grad()
def embed_volumes(
    em: EvalModel, volumes: torch.Tensor, *, batch_size: int = 8, progress: bool = True, desc: str = "embed volumes"
) -> VolumeEmbeddings:
    """Volumes [V, 1, D, H, W] (normalised, H = W = ``data.image_size``) -> :class:`VolumeEmbeddings` on the CPU.

    A model with ``encode_volume`` (UniMedI, chapter 11) reads them with its 3-D path. Any other model reads the
    slab images [V, S, 3, H, W] (:func:`medst.data.volumes.slab_images`) as frontal images through
    ``encode_image``: slabs = their global embeddings [V, S, d], global_ = the normalised mean over the slabs.
    """
    if volumes.ndim != 5 or volumes.shape[1] != 1:
        raise ValueError(f"embed_volumes expects volumes [V, 1, D, H, W], got {tuple(volumes.shape)}")
    model, slab = em.model, slab_size(em)
    glob, slabs = [], []
    for start in tqdm(range(0, len(volumes), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = volumes[start : start + batch_size].to(em.device)
        if hasattr(model, "encode_volume"):
            out = model.encode_volume(chunk)
            g, s = out.global_, out.slabs
        else:
            images = rearrange(slab_images(chunk, slab), "v s c h w -> (v s) c h w").contiguous()
            s = rearrange(model.encode_image(images, local=False).global_, "(v s) d -> v s d", v=len(chunk))
            g = F.normalize(s.mean(dim=1), dim=-1)
        glob.append(g.float().cpu())
        slabs.append(s.float().cpu())
    if not glob:
        d = int(em.cfg.model.embed_dim)
        return VolumeEmbeddings(torch.zeros(0, d), torch.zeros(0, volumes.shape[2] // slab, d))
    return VolumeEmbeddings(torch.cat(glob), torch.cat(slabs))


def load_volumes(em: EvalModel, paths: Sequence[str | os.PathLike]) -> torch.Tensor:
    """NIfTI files -> [V, 1, D, H, W] as ``em`` reads them (:func:`medst.data.volumes.read_volume`, then
    :func:`medst.data.volumes.volume_tensor` with D = ``model.unimedi.volume_slices`` and H = W =
    ``data.image_size``)."""
    depth, size = volume_depth(em), em.image_size
    return torch.stack([volume_tensor(read_volume(p), depth, size) for p in paths])


def _chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, start + size)


def embed_volume_files(
    em: EvalModel,
    paths: Sequence[str | os.PathLike],
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "embed volumes",
) -> VolumeEmbeddings:
    """:func:`embed_volumes` of files, read ``batch_size`` at a time (the volumes never sit in memory together)."""
    paths = list(paths)
    parts = [
        embed_volumes(em, load_volumes(em, paths[chunk]), batch_size=batch_size, progress=False)
        for chunk in tqdm(
            _chunks(len(paths), batch_size),
            total=-(-len(paths) // batch_size),
            desc=desc,
            disable=not progress,
            leave=False,
        )
    ]
    if not parts:
        return embed_volumes(em, torch.zeros(0, 1, volume_depth(em), em.image_size, em.image_size), progress=False)
    return VolumeEmbeddings(torch.cat([p.global_ for p in parts]), torch.cat([p.slabs for p in parts]))


# ---------------------------------------------------------------------------------------------------------
# The finding probe
# ---------------------------------------------------------------------------------------------------------
def probe_auc(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Cross-validated ROC-AUC of a logistic regression (after standardisation) on features [n, f] for 0/1
    labels [n]: stratified folds grouped by ``groups`` [n] (no patient in both training and test folds), at most
    as many folds as the rarer class has examples and as there are groups."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels).astype(int)
    k = int(min(folds, np.bincount(y, minlength=2).min(), len(set(np.asarray(groups).tolist()))))
    if k < 2:
        raise ValueError(f"probe_auc: too few examples for {folds}-fold cross-validation ({int(y.sum())} of {len(y)})")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    scores = cross_val_predict(clf, features, y, cv=cv, groups=groups, method="decision_function")
    return float(roc_auc_score(y, scores))


def volume_finding_probe(
    em: EvalModel,
    data_root: str | os.PathLike,
    *,
    folds: int = 5,
    seed: int = 0,
    max_volumes: int | None = None,
    min_examples: int = MIN_EXAMPLES,
    progress: bool = True,
) -> dict[str, float]:
    """Can a linear probe read the findings of a CT volume from its frozen global embedding? (chapter 11)

    One binary probe per finding with at least ``min_examples`` positive and negative volumes (:func:`probe_auc`:
    logistic regression, ROC-AUC over ``folds`` folds grouped by patient) on the global embeddings of
    :func:`embed_volumes` of every volume (or a seeded subset of ``max_volumes``). Raises
    :class:`medst.eval.TaskSkipped` when no finding has enough of both.

    Returns:
        ``auc`` (mean over the probed findings), ``auc_<finding>`` and ``positives_<finding>`` per probed finding,
        ``n`` (volumes), ``findings`` (how many were probed).
    """
    table = _subset(volume_table(data_root), max_volumes, seed)
    counts = {f: int(table[f].sum()) for f in FINDINGS}
    probed = [f for f in FINDINGS if min(counts[f], len(table) - counts[f]) >= min_examples]
    if not probed:
        raise TaskSkipped(
            f"{Path(data_root) / CT_SLICES}: no finding has {min_examples} positive and negative volumes "
            f"among {len(table)} (positives: {counts})"
        )
    x = embed_volume_files(em, table["path"].tolist(), progress=progress, desc="volume probe").global_.numpy()
    groups = table["subject_id"].to_numpy()
    out: dict[str, float] = {}
    for f in probed:
        out[f"auc_{f}"] = probe_auc(x, table[f].to_numpy(), groups, folds, seed)
        out[f"positives_{f}"] = counts[f]
    out["auc"] = float(np.mean([out[f"auc_{f}"] for f in probed]))
    out["n"], out["findings"] = int(len(table)), len(probed)
    return out


# ---------------------------------------------------------------------------------------------------------
# Slice selection
# ---------------------------------------------------------------------------------------------------------
def selection_metrics(selected: torch.Tensor, truth: torch.Tensor, peaks: torch.Tensor) -> dict[str, float]:
    """Slice selection scored against the ground truth.

    Args:
        selected: LongTensor [V, k], the selected slabs of every volume, highest score first
            (:func:`medst.neighbours.unimedi.select_slabs`); truth: [V, S] bool, the slab covers a finding's slice;
            peaks: [V, S] bool, the slab covers a finding's peak slice.
    Returns:
        ``precision@k`` (share of the V·k selected slabs that are true), ``chance`` (the mean share of true slabs
        per volume: what k random slabs score), ``top1_peak`` (share of volumes whose top slab covers a peak
        slice), ``top1_peak_chance`` (the mean share of such slabs), ``k``, ``n`` (V).
    """
    truth, peaks = truth.bool(), peaks.bool()
    return {
        "precision@k": float(truth.gather(1, selected).double().mean()),
        "chance": float(truth.double().mean(dim=1).mean()),
        "top1_peak": float(peaks.gather(1, selected[:, :1]).double().mean()),
        "top1_peak_chance": float(peaks.double().mean(dim=1).mean()),
        "k": int(selected.shape[1]),
        "n": int(selected.shape[0]),
    }


class Selection(NamedTuple):
    """What the reports selected (:func:`select_volumes`): ``selected`` LongTensor [V, k] (highest score first),
    ``truth`` and ``peaks`` bool [V, S] (the slab covers a finding's slice / a finding's peak slice), and ``table``
    the V volumes (:func:`volume_table` rows)."""

    selected: torch.Tensor
    truth: torch.Tensor
    peaks: torch.Tensor
    table: pd.DataFrame


def select_volumes(
    em: EvalModel,
    data_root: str | os.PathLike,
    *,
    k: int | None = None,
    max_volumes: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Selection:
    """Text-guided slice selection on every volume with at least one finding (or a seeded subset of
    ``max_volumes``), with the truth to score it: scores = <report embedding, slab embedding> ([V, S]; the report of
    the volume's study through ``encode_text``, the slabs of :func:`embed_volumes`), the top ``k`` slabs (default
    ``model.unimedi.top_k``) selected as UniMedI selects them in training
    (:func:`medst.neighbours.unimedi.select_slabs`), and the slabs that cover a finding's slice (:func:`slab_truth`).
    """
    table = volume_table(data_root)
    table = _subset(table[table["finding_slices"].map(len) > 0], max_volumes, seed)
    if table.empty:
        raise TaskSkipped(f"{Path(data_root) / CT_SLICES}: no CT volume with a finding")
    k = int(em.cfg.model.unimedi.top_k if k is None else k)
    depth, slab = volume_depth(em), slab_size(em)
    slabs = embed_volume_files(em, table["path"].tolist(), progress=progress, desc="slice selection").slabs
    reports = embed_texts(em, table["text"].tolist(), progress=progress, desc="slice selection reports")
    if slabs.shape[1] != depth // slab:
        raise ValueError(f"slice_selection: {slabs.shape[1]} slab embeddings per volume, expected {depth // slab}")
    truth = np.stack([slab_truth(s, n, depth, slab) for s, n in zip(table["finding_slices"], table["slices"])])
    peaks = np.stack([slab_truth(p, n, depth, slab) for p, n in zip(table["peak_slices"], table["slices"])])
    return Selection(select_slabs(slabs, reports, k), torch.from_numpy(truth), torch.from_numpy(peaks), table)


def slice_selection(
    em: EvalModel,
    data_root: str | os.PathLike,
    *,
    k: int | None = None,
    max_volumes: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Does the report select the slabs that show its findings? (text-guided slice selection, chapter 11)

    The selection of :func:`select_volumes` scored by :func:`selection_metrics` against the slabs that cover a
    finding's slice."""
    sel = select_volumes(em, data_root, k=k, max_volumes=max_volumes, seed=seed, progress=progress)
    return selection_metrics(sel.selected, sel.truth, sel.peaks)
