"""The ``grounding`` task: the pointing game of :mod:`medst.eval.grounding` on a model's word -> patch attention.

The local alignment (Method §5) attends from every report word to every image patch. For the studies with
lesion boxes (the phantom's ``ground_truth/boxes.csv``), :func:`grounding_items` collects that attention with
the map from original pixels to model-input pixels of every view (:func:`medst.eval.grounding.letterbox_affine`
of the resize-pad-crop pre-processing, Method §1), and :func:`grounding` scores it with
:func:`medst.eval.grounding.pointing_game`, whose chance level (a uniformly random patch) comes with it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from medst.eval import TaskSkipped
from medst.eval.embed import EvalModel, StudyImages, tokenize
from medst.eval.grounding import GroundingItem, letterbox_affine, load_boxes, pointing_game
from medst.eval.retrieval import read_mimic_studies


def _image_size(path: str) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    with Image.open(path) as im:
        return im.height, im.width


def grounding_items(
    em: EvalModel, studies: pd.DataFrame, *, batch_size: int = 16, progress: bool = True
) -> list[GroundingItem]:
    """Word -> patch attention of the local alignment (Method §5) for studies -> :class:`GroundingItem` list.

    Args:
        studies: N rows with frontal, lateral ("" if none), frontal_dicom, lateral_dicom, text
            (:func:`medst.eval.retrieval.read_mimic_studies`).
    Returns:
        N items, each with ``attention`` [W, P] (P = N patches, or 2N with the lateral view), the W words and
        the affine of each view it shows.
    """
    model = em.model
    images = StudyImages(studies["frontal"].tolist(), em.image_size, studies["lateral"].tolist())
    items = []
    starts = range(0, len(studies), batch_size)
    for start in tqdm(starts, desc="grounding", disable=not progress, leave=False):
        rows = studies.iloc[start : start + batch_size]
        batch = [images[i] for i in range(start, start + len(rows))]
        front = torch.stack([b[0] for b in batch]).to(em.device)
        lat = torch.stack([b[1] for b in batch]).to(em.device)
        has_lat = torch.tensor([b[2] for b in batch], device=em.device)
        with torch.no_grad():
            img = model.encode_image(
                front, lat if bool(has_lat.any()) else None, has_lat if bool(has_lat.any()) else None, local=True
            )
            enc = tokenize(em, rows["text"].tolist())
            txt = model.encode_text(**enc, local=True)
            details = model.local_alignment(txt.words, img.patches, txt.word_mask, img.patch_mask, return_details=True)
        words = model.text.word_lists(enc["input_ids"].cpu())
        attention = details.word_to_patch.float().cpu()  # [B, W, P]
        for b, row in enumerate(rows.itertuples(index=False)):
            views = {
                "frontal": (
                    row.frontal_dicom,
                    letterbox_affine(*_image_size(row.frontal), resize=em.cache_side, crop=em.image_size),
                )
            }
            if row.lateral:
                views["lateral"] = (
                    row.lateral_dicom,
                    letterbox_affine(*_image_size(row.lateral), resize=em.cache_side, crop=em.image_size),
                )
            items.append(GroundingItem(attention=attention[b].numpy(), words=words[b], views=views))
    return items


def grounding(
    em: EvalModel,
    data_root: str | os.PathLike,
    *,
    split: str | Sequence[str] | None = "test",
    max_studies: int | None = None,
    use_lateral: bool = True,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, float]:
    """Pointing game on the ``split`` studies that have lesion boxes (``ground_truth/boxes.csv``).

    ``split`` may be one split, several, or None (all: boxes are never used in training); ``max_studies``
    keeps a seeded random subset; ``use_lateral=False`` shows the model frontal views only (and scores them only).

    Returns ``accuracy``, ``hits``, ``total``, ``chance_accuracy`` (the expected accuracy of pointing at a
    uniformly random patch, the ``chance`` of :func:`medst.eval.grounding.pointing_game`), ``studies``, and
    ``{finding}_accuracy`` / ``{view}_accuracy`` with their ``_total`` counts. Raises
    :class:`medst.eval.TaskSkipped` for a model without the local branch or when no trial exists.
    """
    if not em.model.uses_local:
        raise TaskSkipped(
            "the model has no local alignment branch (loss.local_weight=0), so no word -> patch attention to point with"
        )
    root = Path(data_root)
    boxes = load_boxes(root / "ground_truth" / "boxes.csv")
    studies = read_mimic_studies(root / "mimic-cxr-jpg", split).table
    boxed = set(boxes["dicom_id"].astype(str))
    studies = studies[studies["frontal_dicom"].isin(boxed) | studies["lateral_dicom"].isin(boxed)]
    if not use_lateral:
        studies = studies.assign(lateral="", lateral_dicom="")
        studies = studies[studies["frontal_dicom"].isin(boxed)]
    if max_studies is not None and len(studies) > max_studies:
        studies = studies.sample(n=max_studies, random_state=seed).sort_index()
    if studies.empty:
        raise TaskSkipped(
            f"no {split} study of {root / 'mimic-cxr-jpg'} has a lesion box in {root / 'ground_truth' / 'boxes.csv'}"
        )
    items = grounding_items(em, studies.reset_index(drop=True), progress=progress)
    ids = set(studies["frontal_dicom"]) | set(studies["lateral_dicom"])
    boxes = boxes[boxes["dicom_id"].astype(str).isin(ids)]  # only the images scored here
    game = pointing_game(items, boxes, grid=em.grid, input_size=em.image_size)
    if game["total"] == 0:
        raise TaskSkipped(f"no {split} study names a boxed finding in its report: no pointing-game trial")
    out: dict[str, float] = {
        "accuracy": game["accuracy"],
        "hits": game["hits"],
        "total": game["total"],
        "chance_accuracy": game["chance"],
        "studies": int(len(items)),
    }
    for group in ("per_finding", "per_view"):
        for name, res in game[group].items():
            if res["total"]:
                out[f"{name}_accuracy"] = res["accuracy"]
                out[f"{name}_total"] = res["total"]
    return out
