"""Frozen embeddings for downstream evaluation (Method §8): a loaded model, images and texts in, vectors out.

Every evaluation task needs the same three things, gathered here:

- :func:`load_model`: a pre-trained run folder (or a randomly initialised model of the same architecture, the
  baseline every table should carry) as an :class:`EvalModel` on a device, in eval mode;
- :func:`embed_images`: image files (JPEG/PNG, DICOM) or already decoded arrays -> global image embeddings
  ``[N, d]``, with an optional lateral view per study going through MoVE;
- :func:`embed_texts`: strings -> global text embeddings ``[N, d]``.

Images are pre-processed exactly as pre-training's evaluation-time images are (Method §1): decoded to uint8
grey levels, resized so the long side is ``cache_side(image_size)`` and zero-padded to a square
(:func:`medst.data.images.load_resized`, the cache ``medst prepare`` writes), centre-cropped to ``image_size``
and normalised with mean 0.5, std 0.5 (:func:`medst.data.transforms.eval_transform`).

Everything runs batched under ``torch.no_grad`` with a tqdm bar; returned tensors live on the CPU.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from medst.config import Config
from medst.data.dicom import read_dicom_uint8
from medst.data.images import cache_side, load_resized, resize_pad
from medst.data.transforms import ImageTransform
from medst.models.medst import build_model, load_run
from medst.utils import resolve_device, seed_everything

ImageSource = str | os.PathLike | np.ndarray  # a file or a uint8 [H, W] array
DICOM_SUFFIXES = (".dcm", ".dicom")


# ---------------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------------
@dataclass
class EvalModel:
    """A Med-ST model ready for evaluation.

    Attributes:
        model: :class:`medst.models.medst.MedST` in eval mode on ``device``.
        tokenizer: its tokenizer (a transformers fast tokenizer).
        cfg: the run's :class:`medst.config.Config` (image size, max length, profile name).
        device: where the model lives.
        source: ``"checkpoint"`` (weights of a run) or ``"random"`` (same architecture, random weights).
        checkpoint: the run folder it came from.
    """

    model: Any
    tokenizer: Any
    cfg: Any
    device: torch.device
    source: str = "checkpoint"
    checkpoint: str = ""

    @property
    def image_size(self) -> int:
        """S, the side of the model's input crop."""
        return int(self.cfg.data.image_size)

    @property
    def cache_side(self) -> int:
        """Side of the resized-and-padded square the centre crop is taken from (256 for 224)."""
        return cache_side(self.image_size)

    @property
    def max_length(self) -> int:
        return int(self.cfg.data.max_length)

    @property
    def profile(self) -> str:
        return str(self.cfg.name)

    @property
    def grid(self) -> tuple[int, int]:
        """(h, w) patches per view of the image tower."""
        return tuple(int(g) for g in self.model.vision.vit.patch_embed.grid_size)


def _randomise_text_tower(model) -> None:
    """Replace the text tower's transformer by a freshly initialised one of the same configuration."""
    old = model.text.model
    try:
        fresh = type(old)(old.config, add_pooling_layer=False)
    except TypeError:  # a model class without a pooler argument
        fresh = type(old)(old.config)
    model.text.model = fresh


def load_model(
    checkpoint: str | os.PathLike, device: str | torch.device = "auto", *, random_init: bool = False, seed: int = 0
) -> EvalModel:
    """Load a run folder written by ``medst pretrain`` for evaluation.

    Args:
        checkpoint: run folder with ``config.json``, ``tokenizer/`` and (unless ``random_init``)
            ``model.safetensors``.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        random_init: build the same architecture (same config and tokenizer) with random weights and load
            nothing: the baseline row of every result table. A text tower that the profile takes from a
            pre-trained language model (e.g. MiniLM) is re-initialised too, so nothing is pre-trained.
        seed: seed of the random initialisation.
    Returns:
        :class:`EvalModel` in eval mode.
    """
    run = Path(checkpoint)
    dev = resolve_device(device)
    if not random_init:
        model, tokenizer, cfg = load_run(run, dev)
        return EvalModel(model, tokenizer, cfg, dev, "checkpoint", str(run))

    from transformers import AutoTokenizer

    missing = [n for n in ("config.json", "tokenizer") if not (run / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"{run}: not a run folder (missing {', '.join(missing)}); a random baseline needs "
            "the run's config.json and tokenizer/ to copy its architecture"
        )
    cfg = Config.from_dict(json.loads((run / "config.json").read_text()))
    cfg = copy.deepcopy(cfg)
    cfg.model.vision.pretrained = False
    cfg.model.vision.checkpoint = None
    tokenizer = AutoTokenizer.from_pretrained(str(run / "tokenizer"))
    seed_everything(seed)
    model = build_model(cfg, tokenizer, load_init=False)  # nothing pre-trained: not even model.*.init_from
    _randomise_text_tower(model)
    return EvalModel(model.to(dev).eval(), tokenizer, cfg, dev, "random", str(run))


# ---------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------
def read_resized(source: ImageSource, side: int) -> np.ndarray:
    """One image -> uint8 [side, side], resized (long side) and zero-padded as in ``medst prepare``'s cache.

    ``source``: a JPEG/PNG path (decoded like the cache: :func:`medst.data.images.load_resized`), a DICOM path
    (``.dcm``; :func:`medst.data.dicom.read_dicom_uint8`) or a uint8 [H, W] array.
    """
    if isinstance(source, np.ndarray):
        img = source
        if img.dtype != np.uint8:
            raise ValueError(f"read_resized: arrays must be uint8 [H, W] grey images, got {img.dtype} {img.shape}")
        return img if img.shape == (side, side) else resize_pad(img, side)
    path = Path(source)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return resize_pad(read_dicom_uint8(path), side)
    return load_resized(path, side)


def read_resized_many(
    sources: Sequence[ImageSource], side: int, progress: bool = True, desc: str = "images"
) -> np.ndarray:
    """Many images -> uint8 [N, side, side] (see :func:`read_resized`), e.g. to keep a data set in memory."""
    out = np.zeros((len(sources), side, side), dtype=np.uint8)
    for i, src in enumerate(tqdm(sources, desc=desc, disable=not progress, leave=False)):
        out[i] = read_resized(src, side)
    return out


def has_image(source: ImageSource | None) -> bool:
    """False for a missing view: None, "" or NaN (an empty CSV cell)."""
    if source is None or isinstance(source, float):
        return False
    return isinstance(source, np.ndarray) or str(source) != ""


class StudyImages(Dataset):
    """Frontal (and optional lateral) images of studies as model inputs.

    Item: ``(frontal [3,S,S], lateral [3,S,S] (zeros when absent), has_lateral bool)``. ``train=True`` takes
    random crops instead of centre crops (used by fine-tuning).
    """

    def __init__(
        self,
        frontal: Sequence[ImageSource],
        image_size: int,
        lateral: Sequence[ImageSource | None] | None = None,
        train: bool = False,
    ) -> None:
        if lateral is not None and len(lateral) != len(frontal):
            raise ValueError(f"StudyImages: {len(frontal)} frontal but {len(lateral)} lateral entries")
        self.frontal, self.lateral = list(frontal), (list(lateral) if lateral is not None else None)
        self.transform = ImageTransform(image_size, train=train)
        self.side = self.transform.side

    def __len__(self) -> int:
        return len(self.frontal)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
        front = self.transform(read_resized(self.frontal[i], self.side))
        lat_src = self.lateral[i] if self.lateral is not None else None
        if not has_image(lat_src):
            return front, torch.zeros_like(front), False
        return front, self.transform(read_resized(lat_src, self.side)), True


def image_batches(
    frontal: Sequence[ImageSource],
    image_size: int,
    lateral: Sequence[ImageSource | None] | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    train: bool = False,
) -> DataLoader:
    """A DataLoader of ``(frontal [B,3,S,S], lateral [B,3,S,S], has_lateral [B])`` in input order."""
    return DataLoader(
        StudyImages(frontal, image_size, lateral, train=train),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )


@torch.no_grad()
def embed_images(
    em: EvalModel,
    frontal: Sequence[ImageSource],
    lateral: Sequence[ImageSource | None] | None = None,
    *,
    batch_size: int = 64,
    num_workers: int = 0,
    progress: bool = True,
    desc: str = "embed images",
) -> torch.Tensor:
    """Global image embeddings (Method §2: [CLS] -> global head -> L2 normalisation).

    Args:
        frontal: N frontal images (paths or uint8 arrays).
        lateral: None (single view: a plain ViT, Method §3.5) or N entries, None/"" where a study has no
            lateral; studies with a lateral go through MoVE with both views.
    Returns:
        [N, d] float32 unit vectors on the CPU.
    """
    loader = image_batches(frontal, em.image_size, lateral, batch_size=batch_size, num_workers=num_workers)
    out = []
    for front, lat, has_lat in tqdm(loader, desc=desc, disable=not progress, leave=False):
        front = front.to(em.device)
        if lateral is not None and bool(has_lat.any()):
            emb = em.model.encode_image(front, lat.to(em.device), has_lat.to(em.device), local=False)
        else:
            emb = em.model.encode_image(front, local=False)
        out.append(emb.global_.float().cpu())
    d = em.cfg.model.embed_dim
    return torch.cat(out) if out else torch.zeros(0, d)


# ---------------------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------------------
def tokenize(em: EvalModel, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Texts -> ``input_ids``, ``attention_mask`` [B, T] on the model's device (padded to the longest,
    truncated to ``cfg.data.max_length`` tokens as in pre-training)."""
    enc = em.tokenizer(list(texts), padding=True, truncation=True, max_length=em.max_length, return_tensors="pt")
    return {
        "input_ids": enc["input_ids"].long().to(em.device),
        "attention_mask": enc["attention_mask"].long().to(em.device),
    }


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@torch.no_grad()
def embed_texts(
    em: EvalModel, texts: Sequence[str], *, batch_size: int = 128, progress: bool = True, desc: str = "embed texts"
) -> torch.Tensor:
    """Global text embeddings ([CLS] -> global head -> L2 normalisation): N strings -> [N, d] on the CPU."""
    texts = [str(t) for t in texts]
    out = []
    steps = (len(texts) + batch_size - 1) // batch_size
    for chunk in tqdm(_chunks(texts, batch_size), total=steps, desc=desc, disable=not progress, leave=False):
        out.append(em.model.encode_text(**tokenize(em, chunk), local=False).global_.float().cpu())
    d = em.cfg.model.embed_dim
    return torch.cat(out) if out else torch.zeros(0, d)


def mean_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """[K, d] unit vectors -> [d]: their mean, re-normalised (a prompt ensemble)."""
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"mean_embedding expects [K, d] with K >= 1, got {tuple(embeddings.shape)}")
    return F.normalize(embeddings.mean(dim=0), dim=0)
